//! The I/O bitmaps (every port exits but the VM's pass-through ports)
//! and the MSR bitmap.

use super::VmxVcpu;
use crate::vm::Vm;

/// Set (intercept) or clear the read and write bits of `msr` in a VMX MSR
/// bitmap (SDM 25.6.9: read-low, read-high, write-low, write-high, 1 KiB
/// each).
pub(super) fn intercept_msr(map: &mut [u8], msr: u32, intercept: bool) {
    let (base, index) = match msr {
        0..=0x1fff => (0, msr as usize),
        0xc000_0000..=0xc000_1fff => (0x400, (msr - 0xc000_0000) as usize),
        _ => return,
    };
    for area in [base, base + 0x800] {
        if let Some(byte) = map.get_mut(area + index / 8) {
            if intercept {
                *byte |= 1 << (index % 8);
            } else {
                *byte &= !(1 << (index % 8));
            }
        }
    }
}

/// Fill the two 4 KiB I/O bitmaps (A: ports 0-0x7fff, B: 0x8000-0xffff):
/// every port exits but the `direct` ranges.
pub(super) fn fill_io_bitmaps(maps: &mut [u8], direct: &[(u16, u16)]) {
    maps.fill(0xff);
    for &(first, count) in direct {
        for port in u32::from(first)..(u32::from(first) + u32::from(count)).min(0x1_0000) {
            if let Some(byte) = maps.get_mut(port as usize / 8) {
                *byte &= !(1 << (port % 8));
            }
        }
    }
}

impl VmxVcpu {
    /// Rebuild the I/O bitmaps if the VM's pass-through ports changed.
    pub(super) fn sync_io_bitmaps(&mut self, vm: &Vm) {
        let generation = vm.direct_ports_generation();
        if self.io_generation == Some(generation) {
            return;
        }
        let mut direct = alloc::vec::Vec::new();
        for d in vm.direct_ports() {
            direct.extend(d.ranges());
        }
        fill_io_bitmaps(self.io_bitmaps.as_mut_slice(), &direct);
        self.io_generation = Some(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bitmap_bits_follow_the_sdm_layout() {
        let mut map = [0xffu8; 4096];
        intercept_msr(&mut map, 0x174, false); // SYSENTER_CS: bit 0x174
        assert_eq!(map[0x174 / 8], !(1 << (0x174 % 8)));
        assert_eq!(map[0x800 + 0x174 / 8], !(1 << (0x174 % 8)));
        intercept_msr(&mut map, 0xc000_0082, false); // LSTAR: bit 0x82 of the high maps
        assert_eq!(map[0x400 + 0x10], !(1 << 2));
        assert_eq!(map[0xc00 + 0x10], !(1 << 2));
        intercept_msr(&mut map, 0x4000_0000, false); // outside: ignored
        assert_eq!(map.iter().filter(|b| **b != 0xff).count(), 4);
        intercept_msr(&mut map, 0x174, true);
        assert_eq!(map[0x174 / 8], 0xff);
    }

    #[test]
    fn io_bitmaps_intercept_every_port_but_the_direct_ones() {
        let mut maps = [0u8; 8192];
        fill_io_bitmaps(&mut maps, &[(0x3f8, 8), (0xfffe, 4)]);
        assert_eq!(maps[0x3f8 / 8], 0x00);
        assert_eq!(maps[0x3f0 / 8], 0xff);
        // The range is clipped at the last port; bitmap B holds 0x8000 up.
        assert_eq!(maps[0xffff / 8], 0x3f);
        assert_eq!(maps.iter().filter(|b| **b != 0xff).count(), 2);
    }
}
