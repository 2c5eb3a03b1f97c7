//! The identity a clone's devices take: a network card's MAC address and
//! a disk's serial number derived from the parent's and the clone's index
//! k (1 to 255), so that clones of one VM differ from it and from each
//! other, and the same clone of the same parent gets the same identity
//! every time.
//!
//! - MAC ([`clone_mac`]): the parent's address made locally administered
//!   and unicast (bit 1 of the first byte set, bit 0 clear), with its
//!   fourth byte XORed with k. The default `52:54:00:12:34:56` (already
//!   locally administered) becomes `52:54:00:13:34:56` for clone 1 and
//!   `52:54:00:10:34:56` for clone 2. The fourth byte rather than the last
//!   one, because hosts number their VMs' cards in the last byte (QEMU's
//!   `52:54:00:12:34:5x`): a clone of one VM does not take the address of
//!   the next VM's card.
//! - Serial ([`clone_serial`]): the parent's serial with its padding
//!   (trailing spaces or zeros) taken off, then `-c` and k in decimal;
//!   if that does not fit the field, the parent's part loses bytes at its
//!   front (the end of a disk's name, the part that tells disks apart,
//!   stays). `VMM-IDE-0001` becomes `VMM-IDE-0001-c3` for clone 3, and a
//!   virtio-blk ID `disk.img` becomes `disk.img-c3`. The last `-` of a
//!   clone's serial is its suffix's (neither `c` nor a digit is one), so k
//!   can be read back off the end: two clones of one parent never share a
//!   serial.

use core::num::NonZeroU8;

/// The MAC address of clone `index` of a card whose address is `parent`.
pub fn clone_mac(parent: [u8; 6], index: NonZeroU8) -> [u8; 6] {
    let mut mac = parent;
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac[3] ^= index.get();
    mac
}

/// The serial number of clone `index` of a drive whose serial is
/// `parent`, a field of `N` bytes padded with `pad` (a space for ATA
/// strings, 0 for virtio-blk's ID).
pub fn clone_serial<const N: usize>(parent: &[u8; N], index: NonZeroU8, pad: u8) -> [u8; N] {
    // "-c" and up to three digits.
    let mut suffix = [0u8; 5];
    suffix[..2].copy_from_slice(b"-c");
    let k = index.get();
    let mut len = 2;
    for (digit, shown) in [(k / 100, k >= 100), (k / 10 % 10, k >= 10), (k % 10, true)] {
        if shown {
            suffix[len] = b'0' + digit;
            len += 1;
        }
    }
    let suffix = &suffix[..len];
    let used = parent
        .iter()
        .rposition(|&b| b != pad && b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let room = N.saturating_sub(suffix.len());
    let keep = &parent[used.saturating_sub(room)..used];
    let mut out = [pad; N];
    for (slot, &b) in out.iter_mut().zip(keep.iter().chain(suffix)) {
        *slot = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::string::String;

    fn k(i: u8) -> NonZeroU8 {
        NonZeroU8::new(i).unwrap()
    }

    #[test]
    fn clone_macs_are_local_unicast_distinct_and_the_same_each_time() {
        let parent = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        assert_eq!(
            clone_mac(parent, k(1)),
            [0x52, 0x54, 0x00, 0x13, 0x34, 0x56]
        );
        assert_eq!(
            clone_mac(parent, k(2)),
            [0x52, 0x54, 0x00, 0x10, 0x34, 0x56]
        );
        for parent in [parent, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55], [0xff; 6]] {
            let all: BTreeSet<[u8; 6]> = (1..=255).map(|i| clone_mac(parent, k(i))).collect();
            assert_eq!(all.len(), 255);
            assert!(!all.contains(&parent));
            for mac in &all {
                assert_eq!(mac[0] & 0x03, 0x02, "{mac:02x?}");
                assert_eq!(
                    (mac[1], mac[2], mac[4], mac[5]),
                    (parent[1], parent[2], parent[4], parent[5])
                );
            }
            assert_eq!(clone_mac(parent, k(7)), clone_mac(parent, k(7)));
        }
    }

    #[test]
    fn clone_serials_end_in_the_index_and_are_distinct() {
        let mut ide = [b' '; 20];
        ide[..12].copy_from_slice(b"VMM-IDE-0001");
        let c3 = clone_serial(&ide, k(3), b' ');
        assert_eq!(&c3, b"VMM-IDE-0001-c3     ");
        assert_eq!(&clone_serial(&ide, k(255), b' '), b"VMM-IDE-0001-c255   ");
        assert_eq!(&clone_serial(&ide, k(10), b' '), b"VMM-IDE-0001-c10    ");
        assert_eq!(&clone_serial(&ide, k(100), b' '), b"VMM-IDE-0001-c100   ");
        let mut blk = [0u8; 20];
        blk[..8].copy_from_slice(b"disk.img");
        assert_eq!(&clone_serial(&blk, k(1), 0)[..12], b"disk.img-c1\0");
        // A full-length ID keeps its end.
        let long = *b"abcdefghijklmnopqrst";
        assert_eq!(&clone_serial(&long, k(42), 0), b"efghijklmnopqrst-c42");
        assert_eq!(&clone_serial(&long, k(200), 0), b"fghijklmnopqrst-c200");
        // An empty serial becomes the suffix alone.
        assert_eq!(&clone_serial(&[0u8; 20], k(9), 0)[..4], b"-c9\0");
        for parent in [ide, blk, long, [b'-'; 20], *b"x-c1x-c11x-c111-c255"] {
            let pad = if parent == ide { b' ' } else { 0 };
            let all: BTreeSet<[u8; 20]> = (1..=255)
                .map(|i| clone_serial(&parent, k(i), pad))
                .collect();
            assert_eq!(all.len(), 255, "{}", String::from_utf8_lossy(&parent));
            assert!(!all.contains(&parent));
            // A clone's serial ends in its own index.
            for i in 1..=255u8 {
                let s = clone_serial(&parent, k(i), pad);
                let text = String::from_utf8_lossy(&s);
                let text = text.trim_end_matches([' ', '\0']);
                assert!(text.ends_with(&alloc::format!("-c{i}")), "{text}");
            }
        }
        // A clone of a clone.
        let c3c2 = clone_serial(&c3, k(2), b' ');
        assert_eq!(&c3c2, b"VMM-IDE-0001-c3-c2  ");
    }
}
