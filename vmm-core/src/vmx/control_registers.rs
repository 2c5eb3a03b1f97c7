//! The guest's control registers and EFER: the bits VMX fixes (plus PG
//! and PAE) sit behind guest/host masks and read shadows, and writes to
//! them are carried out here (LMA and the IA-32e entry control, PDPTE
//! loads, #GP for invalid values).

use super::capabilities::{self, CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE, CR4_VMXE};
use super::exit_reason::reason;
use super::fields;
use super::VmxVcpu;
use crate::emulator::{CpuState, Exception, Segment};
use crate::vcpu::{Event, Exit, ExitError, VcpuBackend};
use crate::vm::Vm;
use alloc::format;

/// EFER bits a guest may set: SCE, LME, NXE, FFXSR (LMA is the CPU's).
pub(super) const EFER_GUEST_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 11) | (1 << 14);
pub(super) const EFER_LME: u64 = 1 << 8;
pub(super) const EFER_LMA: u64 = 1 << 10;
const CR0_TS: u64 = 1 << 3;
const CR4_PCIDE: u64 = 1 << 17;

impl VmxVcpu {
    pub(super) fn entry_controls(&self) -> u64 {
        self.read(fields::ENTRY_CONTROLS)
    }

    /// The guest's view of CR0 (read shadow for the bits we own).
    pub(super) fn guest_cr0(&self) -> u64 {
        let mask = self.read(fields::CR0_GUEST_HOST_MASK);
        (self.read(fields::GUEST_CR0) & !mask) | (self.read(fields::CR0_READ_SHADOW) & mask)
    }

    pub(super) fn guest_cr4(&self) -> u64 {
        let mask = self.read(fields::CR4_GUEST_HOST_MASK);
        (self.read(fields::GUEST_CR4) & !mask) | (self.read(fields::CR4_READ_SHADOW) & mask)
    }

    /// Load the four PDPTEs from guest memory when the guest uses PAE paging
    /// outside long mode (with EPT, VM entry takes them from the VMCS).
    pub(super) fn load_pdptes(&self, vm: &Vm) -> Result<(), Exception> {
        let cr0 = self.guest_cr0();
        let cr4 = self.guest_cr4();
        let efer = self.read(fields::GUEST_IA32_EFER);
        if cr0 & CR0_PG == 0 || cr4 & CR4_PAE == 0 || efer & EFER_LMA != 0 {
            return Ok(());
        }
        let base = self.read(fields::GUEST_CR3) & 0xffff_ffe0;
        for i in 0..4u32 {
            let pdpte = vm
                .memory()
                .read_u64(base + u64::from(i) * 8)
                .map_err(|_| Exception::GeneralProtection(0))?;
            // Present entries with reserved bits set fault (#GP on MOV CR).
            if pdpte & 1 != 0 && pdpte & 0x1e6 != 0 {
                return Err(Exception::GeneralProtection(0));
            }
            self.write(fields::GUEST_PDPTE0 + 2 * i, pdpte);
        }
        Ok(())
    }

    /// MOV to CR0 (or LMSW/CLTS) with value `value`, as the guest sees it.
    fn set_cr0(&mut self, vm: &Vm, value: u64) -> Result<(), Exception> {
        let gp = Exception::GeneralProtection(0);
        if value >> 32 != 0
            || (value & CR0_PG != 0 && value & CR0_PE == 0)
            || (value & CR0_NW != 0 && value & CR0_CD == 0)
        {
            return Err(gp);
        }
        let old = self.guest_cr0();
        let mut efer = self.read(fields::GUEST_IA32_EFER);
        let mut entry = self.entry_controls();
        let ia32e = u64::from(capabilities::entry::IA32E_MODE_GUEST);
        if value & CR0_PG != 0 && old & CR0_PG == 0 && efer & EFER_LME != 0 {
            if self.guest_cr4() & CR4_PAE == 0 {
                return Err(gp);
            }
            efer |= EFER_LMA;
            entry |= ia32e;
        } else if value & CR0_PG == 0 && efer & EFER_LMA != 0 {
            // Leaving long mode from 64-bit code, or with PCIDE on, faults.
            let (_, _, cs_ar, _) = fields::guest_segment(Segment::Cs as u32);
            if self.read(cs_ar) & (1 << 13) != 0 || self.guest_cr4() & CR4_PCIDE != 0 {
                return Err(gp);
            }
            efer &= !EFER_LMA;
            entry &= !ia32e;
        }
        self.write(fields::GUEST_IA32_EFER, efer);
        self.write(fields::ENTRY_CONTROLS, entry);
        self.write(fields::CR0_READ_SHADOW, value);
        self.write(fields::GUEST_CR0, self.cr0.apply(value));
        if (old ^ value) & (CR0_PG | CR0_PE) != 0 {
            self.load_pdptes(vm)?;
        }
        Ok(())
    }

    /// Load the CR0 bits LMSW may change (PE, MP, EM, TS; `value` is the
    /// whole new CR0, with PG, CD and NW as they were): the read shadow
    /// and the bits the guest owns, and the guest's TLB flushed as the CPU
    /// would.
    pub(super) fn set_cr0_flags(&mut self, value: u64) {
        self.write(fields::CR0_READ_SHADOW, value);
        self.write(fields::GUEST_CR0, self.cr0.apply(value));
        self.flush_guest_tlb();
    }

    /// MOV to CR4.
    fn set_cr4(&mut self, vm: &Vm, value: u64) -> Result<(), Exception> {
        let gp = Exception::GeneralProtection(0);
        // VMX is hidden from the guest; bits VMX does not allow are
        // reserved as far as the guest knows.
        let allowed = self.cr4.may_be_one & !CR4_VMXE;
        if value & !allowed != 0 {
            return Err(gp);
        }
        let efer = self.read(fields::GUEST_IA32_EFER);
        if efer & EFER_LMA != 0 && value & CR4_PAE == 0 {
            return Err(gp);
        }
        // PCIDE only in long mode, and only with PCID 0 in CR3.
        let old_pcide = self.guest_cr4() & CR4_PCIDE != 0;
        if value & CR4_PCIDE != 0
            && !old_pcide
            && (efer & EFER_LMA == 0 || self.read(fields::GUEST_CR3) & 0xfff != 0)
        {
            return Err(gp);
        }
        let old = self.guest_cr4();
        self.write(fields::CR4_READ_SHADOW, value);
        self.write(fields::GUEST_CR4, self.cr4.apply(value));
        if (old ^ value) & CR4_PAE != 0 {
            self.load_pdptes(vm)?;
        }
        Ok(())
    }

    /// A control-register access exit (qualification `q`): carried out
    /// here; the guest moves on, or gets #GP.
    pub(super) fn control_register_access(&mut self, vm: &mut Vm, q: u64) -> Result<(), Exit> {
        let cr = q & 0xf;
        let access = (q >> 4) & 0b11;
        let reg = ((q >> 8) & 0xf) as usize;
        let result = match (access, cr) {
            (0, 0) => {
                let v = self.gpr(reg);
                self.set_cr0(vm, v)
            }
            (0, 3) => {
                self.write(fields::GUEST_CR3, self.gpr(reg));
                self.load_pdptes(vm)
            }
            (0, 4) => {
                let v = self.gpr(reg);
                self.set_cr4(vm, v)
            }
            (1, 3) => {
                let v = self.read(fields::GUEST_CR3);
                self.set_gpr(reg, v);
                Ok(())
            }
            // CR8 is the local APIC's TPR (bits 7:4 of its MMIO register).
            (0, 8) => {
                let tpr = ((self.gpr(reg) & 0xf) << 4) as u32;
                vm.mmio_write(0xfee0_0080, &tpr.to_le_bytes());
                Ok(())
            }
            (1, 8) => {
                let mut b = [0u8; 4];
                vm.mmio_read(0xfee0_0080, &mut b);
                self.set_gpr(reg, u64::from((u32::from_le_bytes(b) >> 4) & 0xf));
                Ok(())
            }
            (2, _) => {
                let v = self.guest_cr0() & !CR0_TS;
                self.set_cr0(vm, v)
            }
            (3, _) => {
                // LMSW: loads PE, MP, EM, TS; cannot clear PE.
                let old = self.guest_cr0();
                let src = (q >> 16) & 0xf;
                let v = (old & !0xe) | (src & 0xe) | ((old | src) & CR0_PE);
                self.set_cr0(vm, v)
            }
            _ => {
                return Err(Exit::Error(ExitError::Unhandled {
                    code: reason::CR_ACCESS.into(),
                    detail: format!("control-register access, qualification {q:#x}"),
                }))
            }
        };
        match result {
            Ok(()) => {
                // The CPU flushes the guest's TLB on these writes; done by
                // VMWRITE it does not, and VPID keeps entries across entries.
                if (access == 0 && matches!(cr, 0 | 3 | 4)) || access == 3 {
                    self.flush_guest_tlb();
                }
                self.skip_instruction()
            }
            Err(e) => {
                self.inject(Event::Exception(e));
            }
        }
        Ok(())
    }
}
