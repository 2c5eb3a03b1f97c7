//! IRET in protected mode, for KVMs that cannot emulate it.
//!
//! Some KVMs (the paravirtual one on the development machines among them)
//! hand IRET in 32-bit protected mode to their instruction emulator, which
//! supports it only in real mode, and stop with an emulation failure: the
//! first interrupt handler of a bootloader that runs in protected mode
//! (ISOLINUX) would end the VM. The backend then has the library's
//! emulator carry it out (`Emulator::emulate_iret`: a return to the same
//! or an outer privilege level, the frame and descriptors read through
//! segmentation and the guest's page tables) over guest memory ([`RamBus`]: reads of RAM or
//! ROM, writes of RAM only): a frame, descriptor table or page table in
//! MMIO or a hole, and every IRET the emulator does not implement, is
//! refused, and the VM stops with KVM's
//! error as before. Faults the architecture defines (#GP, #NP, #SS, #PF)
//! are injected.

use vmm_core::emulator::{BusError, DescriptorState, EmulateError, Emulator, GuestBus};
use vmm_core::memory::GuestMemory;

/// Guest memory as the emulator's bus: reads of RAM or ROM, writes
/// (accessed bits in page tables) of RAM only; MMIO, holes and every port
/// are refused.
pub struct RamBus<'a>(pub &'a mut GuestMemory);

impl GuestBus for RamBus<'_> {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        // RAM or ROM: the IRET itself is often in the firmware's ROM (a
        // BIOS's interrupt handlers), and reading ROM has no side effects.
        // MMIO and holes are refused.
        self.0.read(gpa, data).map_err(|_| BusError::Memory { gpa })
    }
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.0
            .check_ram(gpa, data.len() as u64)
            .and_then(|()| self.0.write(gpa, data))
            .map_err(|_| BusError::Memory { gpa })
    }
    fn io_read(&mut self, port: u16, _: &mut [u8]) -> Result<(), BusError> {
        Err(BusError::Port { port })
    }
    fn io_write(&mut self, port: u16, _: &[u8]) -> Result<(), BusError> {
        Err(BusError::Port { port })
    }
}

/// Carry out the IRET at CS:RIP of `vcpu` against `memory`'s RAM. On an
/// error other than an exception nothing has changed.
pub fn emulate<S: DescriptorState>(
    vcpu: &mut S,
    memory: &mut GuestMemory,
) -> Result<(), EmulateError> {
    Emulator::default()
        .emulate_iret(vcpu, &mut RamBus(memory))
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::emulator::{DescriptorTable, RegisterFile, Segment, SegmentRegister};
    use vmm_core::host::Host;
    use vmm_core::paging::CR0_PE;
    use vmm_core::test_host::TestHost;

    const CODE32: u64 = 0x00cf_9b00_0000_ffff;
    const DATA32: u64 = 0x00cf_9300_0000_ffff;

    fn machine() -> (GuestMemory, RegisterFile) {
        let host = TestHost::new();
        let mut mem = GuestMemory::new();
        mem.add_ram(0, host.alloc_memory(1 << 20, 4096).unwrap())
            .unwrap();
        for (i, d) in [0, CODE32, DATA32].iter().enumerate() {
            mem.write_u64(0x500 + 8 * i as u64, *d).unwrap();
        }
        let mut cpu = RegisterFile::protected_flat32();
        cpu.segments[Segment::Cs as usize] = SegmentRegister::from_descriptor(0x08, CODE32);
        cpu.segments[Segment::Ss as usize] = SegmentRegister::from_descriptor(0x10, DATA32);
        cpu.control.cr0 = CR0_PE;
        cpu.gdtr = DescriptorTable {
            base: 0x500,
            limit: 23,
        };
        cpu.rip = 0x8000;
        cpu.gprs[4] = 0x7000;
        cpu.rflags = 2;
        mem.write_u8(0x8000, 0xcf).unwrap();
        (mem, cpu)
    }

    #[test]
    fn iret_runs_over_guest_ram() {
        let (mut mem, mut cpu) = machine();
        mem.write_u32(0x7000, 0x1234).unwrap();
        mem.write_u32(0x7004, 0x08).unwrap();
        mem.write_u32(0x7008, 0x246).unwrap();
        emulate(&mut cpu, &mut mem).unwrap();
        assert_eq!((cpu.rip, cpu.gprs[4], cpu.rflags), (0x1234, 0x700c, 0x246));
    }

    #[test]
    fn a_frame_outside_ram_is_refused_and_changes_nothing() {
        let (mut mem, mut cpu) = machine();
        let before = cpu.clone();
        cpu.gprs[4] = 0xffff_fff0;
        assert!(matches!(
            emulate(&mut cpu, &mut mem),
            Err(EmulateError::Bus(BusError::Memory { .. }))
        ));
        cpu.gprs[4] = before.gprs[4];
        assert_eq!(cpu, before);
    }
}
