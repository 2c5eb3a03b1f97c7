//! The firmware image: padded to what the chipset's shadowing needs, then
//! mapped below 4 GiB and at 0xE0000 by `vmm_bios::bios_image`.

use alloc::borrow::Cow;
use alloc::vec;

/// The smallest image whose low alias covers all of 0xE0000-0xFFFFF.
pub const MIN_PAM_IMAGE: usize = 128 << 10;

/// `image` as the chipset can shadow it. The i440FX switches the whole
/// 0xE0000-0xFFFFF window between the image and shadow RAM, so an image
/// smaller than 128 KiB (a 64 KiB test program) is padded at its start
/// with 0xFF, as erased flash; its last bytes, reset vector included, stay
/// where they were. An empty image is left empty (and refused by the
/// loader with a clear error).
pub fn padded(image: &[u8]) -> Cow<'_, [u8]> {
    if image.is_empty() || image.len() >= MIN_PAM_IMAGE {
        return Cow::Borrowed(image);
    }
    let mut out = vec![0xff; MIN_PAM_IMAGE - image.len()];
    out.extend_from_slice(image);
    Cow::Owned(out)
}

/// Check `image` as [`super::Pc::build`] will, before anything else is
/// opened or allocated: a host can then report a bad firmware file first.
pub fn check(image: &[u8]) -> Result<(), super::PcError> {
    vmm_bios::bios_image::validate_bios_image(&padded(image)).map_err(super::PcError::Firmware)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_image_keeps_its_end_at_the_end() {
        let image = vec![0x5a; 64 << 10];
        let p = padded(&image);
        assert_eq!(p.len(), MIN_PAM_IMAGE);
        assert!(p[..64 << 10].iter().all(|&b| b == 0xff));
        assert!(p[64 << 10..].iter().all(|&b| b == 0x5a));
        let big = vec![1u8; 256 << 10];
        assert!(matches!(padded(&big), Cow::Borrowed(_)));
        assert!(padded(&[]).is_empty());
    }
}
