//! x2APIC: a local APIC's registers as MSRs (Intel SDM vol. 3, 11.12).
//!
//! A PC built with x2APIC ([`crate::platform::PcConfig::x2apic`])
//! offers it in CPUID; the guest turns it on with IA32_APIC_BASE.EXTD
//! (checked by `vmm_core::vcpu::apic_base_transition`). From then on the
//! register page at `LAPIC_BASE` no longer answers, and MSR
//! 0x800 + (offset >> 4) reaches the register at that offset: the exit
//! loop hands RDMSR and WRMSR in `vmm_core::vcpu::X2APIC_MSRS` to the
//! vCPU's [`X2apic`] through its interrupt source. The register semantics
//! (32-bit IDs, the derived logical ID, the 64-bit ICR, SELF IPI, the
//! #GP cases) are the local APIC's own (`LapicCore::x2apic_read`,
//! `LapicCore::x2apic_write`); this module carries out what a write
//! asks: an IPI over the APIC bus, an EOI broadcast to the I/O APIC.
//!
//! An MSR exit carries its operands in registers, so an EOI or a timer
//! write costs no instruction fetch or decode, unlike the MMIO window's.

use crate::apic_bus;
use crate::lapic::{After, EoiBroadcast, LapicCore};
use alloc::sync::Arc;
use alloc::vec::Vec;
use vmm_core::vcpu::X2apicWrite;

/// The first x2APIC register MSR (offset 0).
const MSR_BASE: u32 = 0x800;

/// Register offsets whose writes move the APIC timer: LVT timer, initial
/// count, divide configuration.
const TIMER_REGS: [u32; 3] = [0x320, 0x380, 0x3e0];

/// One vCPU's x2APIC MSR interface: its APIC among all of the VM's (IPIs
/// reach the others) and the I/O APIC that hears level-triggered EOIs.
#[derive(Clone, Debug)]
pub struct X2apic {
    cores: Arc<Vec<Arc<LapicCore>>>,
    index: usize,
    ioapic: Option<Arc<dyn EoiBroadcast>>,
}

impl X2apic {
    /// The interface of vCPU `index`'s APIC among `cores` (by vCPU index),
    /// broadcasting EOIs to `ioapic`.
    pub fn new(
        cores: Arc<Vec<Arc<LapicCore>>>,
        index: usize,
        ioapic: Option<Arc<dyn EoiBroadcast>>,
    ) -> Self {
        Self {
            cores,
            index,
            ioapic,
        }
    }

    fn reg(msr: u32) -> u32 {
        msr.wrapping_sub(MSR_BASE) << 4
    }

    /// RDMSR of `msr` at host time `now`: `None` for #GP.
    pub fn read(&self, msr: u32, now: u64) -> Option<u64> {
        self.cores.get(self.index)?.x2apic_read(Self::reg(msr), now)
    }

    /// WRMSR of `value` to `msr` at host time `now`.
    pub fn write(&self, msr: u32, value: u64, now: u64) -> X2apicWrite {
        let Some(core) = self.cores.get(self.index) else {
            return X2apicWrite::Fault;
        };
        let reg = Self::reg(msr);
        match core.x2apic_write(reg, value, now) {
            None => X2apicWrite::Fault,
            Some(After::Nothing) if TIMER_REGS.contains(&reg) => X2apicWrite::TimerChanged,
            Some(After::Nothing) => X2apicWrite::Done,
            Some(After::BroadcastEoi(vector)) => {
                if let Some(io) = &self.ioapic {
                    io.end_of_interrupt(vector);
                }
                X2apicWrite::Done
            }
            Some(After::SendIpi(ipi)) => {
                if apic_bus::send_ipi(&self.cores, self.index, ipi) {
                    X2apicWrite::Kicked
                } else {
                    X2apicWrite::Done
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::{APIC_BASE_BSP, APIC_BASE_ENABLE, APIC_BASE_EXTD, LAPIC_BASE};

    const ID: u32 = 0x802;
    const VERSION: u32 = 0x803;
    const TPR: u32 = 0x808;
    const EOI: u32 = 0x80b;
    const LDR: u32 = 0x80d;
    const DFR: u32 = 0x80e;
    const SVR: u32 = 0x80f;
    const ISR0: u32 = 0x810;
    const ESR: u32 = 0x828;
    const ICR: u32 = 0x830;
    const ICR_HIGH: u32 = 0x831;
    const INITIAL_COUNT: u32 = 0x838;
    const CURRENT_COUNT: u32 = 0x839;
    const SELF_IPI: u32 = 0x83f;

    /// `n` APICs, each in x2APIC mode and software-enabled; the
    /// interface of each.
    fn cpus(n: u8) -> Vec<X2apic> {
        let cores: Vec<Arc<LapicCore>> = (0..n).map(|i| LapicCore::new(i, i == 0)).collect();
        let all = Arc::new(cores.clone());
        cores
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bsp = if i == 0 { APIC_BASE_BSP } else { 0 };
                c.set_apic_base(LAPIC_BASE | APIC_BASE_ENABLE | APIC_BASE_EXTD | bsp);
                let x = X2apic::new(all.clone(), i, None);
                assert_eq!(x.write(SVR, 0x1ff, 0), X2apicWrite::Done);
                x
            })
            .collect()
    }

    #[test]
    fn registers_answer_as_msrs_only_in_x2apic_mode() {
        let core = LapicCore::new(3, false);
        let x = X2apic::new(Arc::new(alloc::vec![core.clone()]), 0, None);
        assert_eq!(x.read(ID, 0), None, "xAPIC mode: #GP");
        assert_eq!(x.write(TPR, 0x20, 0), X2apicWrite::Fault);
        core.set_apic_base(LAPIC_BASE | APIC_BASE_ENABLE | APIC_BASE_EXTD);
        assert!(core.x2apic_mode());
        // The full 32-bit ID; the logical ID derived from it (cluster 0,
        // bit 3); the version as the xAPIC has it.
        assert_eq!(x.read(ID, 0), Some(3));
        assert_eq!(x.read(LDR, 0), Some(1 << 3));
        assert_eq!(x.read(VERSION, 0), Some(0x5_0014));
        // Registers x2APIC does not have, and the write-only ones.
        for msr in [DFR, ICR_HIGH, EOI, SELF_IPI, 0x809, 0x80c, 0x82f, 0x8ff] {
            assert_eq!(x.read(msr, 0), None, "{msr:#x}");
        }
    }

    #[test]
    fn read_only_registers_and_reserved_bits_fault_on_write() {
        let x = &cpus(1)[0];
        for (msr, value) in [
            (ID, 0),
            (VERSION, 0),
            (LDR, 1),
            (DFR, 0xffff_ffff),
            (ISR0, 0),
            (CURRENT_COUNT, 0),
            (ICR_HIGH, 0),
            (EOI, 1),
            (ESR, 1),
            (TPR, 0x100),
            (TPR, 1 << 32),
            (SELF_IPI, 0x100),
        ] {
            assert_eq!(
                x.write(msr, value, 0),
                X2apicWrite::Fault,
                "{msr:#x} {value:#x}"
            );
        }
        assert_eq!(x.write(TPR, 0x20, 0), X2apicWrite::Done);
        assert_eq!(x.read(TPR, 0), Some(0x20));
        assert_eq!(x.write(ESR, 0, 0), X2apicWrite::Done);
        assert_eq!(
            x.write(INITIAL_COUNT, 1000, 0),
            X2apicWrite::TimerChanged,
            "a timer write makes the VM ask its timers again"
        );
    }

    #[test]
    fn the_icr_takes_32_bit_destinations_and_self_ipi_reaches_the_sender() {
        let x = cpus(3);
        let core = |i: usize| x[i].cores[i].clone();
        // Physical: APIC ID 2 in bits 63:32.
        assert_eq!(x[0].write(ICR, (2 << 32) | 0x40, 0), X2apicWrite::Kicked);
        assert_eq!(core(2).deliverable(), Some(0x40));
        assert_eq!(core(1).deliverable(), None);
        assert_eq!(x[0].read(ICR, 0), Some((2 << 32) | 0x40));
        // Logical: cluster 0, member bit 1 (APIC 1).
        assert_eq!(
            x[0].write(ICR, (0b10 << 32) | 0x800 | 0x41, 0),
            X2apicWrite::Kicked
        );
        assert_eq!(core(1).deliverable(), Some(0x41));
        // Another cluster reaches nobody.
        assert_eq!(
            x[0].write(ICR, (0x1_0002 << 32) | 0x800 | 0x42, 0),
            X2apicWrite::Done
        );
        // All ones is a broadcast; an 8-bit 0xff is APIC ID 255, nobody.
        assert_eq!(x[1].write(ICR, (0xff << 32) | 0x43, 0), X2apicWrite::Done);
        assert_eq!(
            x[1].write(ICR, (0xffff_ffff << 32) | 0x44, 0),
            X2apicWrite::Kicked
        );
        assert_eq!(core(0).deliverable(), Some(0x44));
        // SELF IPI: a fixed interrupt to the sender only.
        assert_eq!(x[2].write(SELF_IPI, 0x50, 0), X2apicWrite::Done);
        assert_eq!(core(2).deliverable(), Some(0x50));
        assert_eq!(core(0).deliverable(), Some(0x44));
    }

    #[test]
    fn eoi_through_the_msr_ends_the_interrupt_in_service() {
        let x = &cpus(1)[0];
        let core = x.cores[0].clone();
        assert!(core.deliver(0x61, false));
        assert_eq!(core.acknowledge(), Some(0x61));
        assert_eq!(x.read(ISR0 + 3, 0), Some(1 << 1), "0x61 in service");
        assert_eq!(x.write(EOI, 0, 0), X2apicWrite::Done);
        assert_eq!(x.read(ISR0 + 3, 0), Some(0));
    }

    #[test]
    fn disabling_leaves_x2apic_mode_and_resets_the_registers() {
        let x = &cpus(1)[0];
        let core = x.cores[0].clone();
        assert_eq!(x.write(TPR, 0x30, 0), X2apicWrite::Done);
        core.set_apic_base(LAPIC_BASE | APIC_BASE_BSP);
        assert!(!core.x2apic_mode());
        assert_eq!(x.read(TPR, 0), None);
        core.set_apic_base(LAPIC_BASE | APIC_BASE_BSP | APIC_BASE_ENABLE);
        core.set_apic_base(LAPIC_BASE | APIC_BASE_BSP | APIC_BASE_ENABLE | APIC_BASE_EXTD);
        assert_eq!(x.read(TPR, 0), Some(0));
    }
}
