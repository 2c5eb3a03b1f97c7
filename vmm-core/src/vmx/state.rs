//! [`ArchState`] for [`VmxVcpu`]: the whole guest state in the VMCS (and
//! in CR2, DR0-DR3, DR6 and the extended state the vCPU keeps beside it),
//! and the MSRs the VMCS or the MSR area switch.

#![forbid(unsafe_code)]

use super::capabilities::{self, CR4_VMXE};
use super::control_registers::{EFER_GUEST_WRITABLE, EFER_LMA};
use super::entry_checks;
use super::events::{BLOCKING_NMI, BLOCKING_STI_MOVSS, INFO_ERROR_CODE, INFO_VALID};
use super::fields;
use super::guest_state::{access_rights_from_attributes, attributes_from_access_rights};
use super::vcpu::SWITCHED_MSRS;
use super::VmxVcpu;
use crate::emulator::{CpuState, DescriptorTable, Segment, SegmentRegister};
use crate::vcpu::{
    check_debug_registers, check_event_state, check_system_registers, ArchState, ArchStateError,
    DebugRegisters, EventKind, EventState, InterruptShadow, PendingEvent, StateLimits,
    SystemRegisters, XsaveImage,
};

/// Access rights: the segment is unusable.
const AR_UNUSABLE: u64 = 1 << 16;

/// Access rights for `s` (unusable when not present).
fn access_rights(s: &SegmentRegister) -> u64 {
    let ar = access_rights_from_attributes(s.attributes);
    if s.present() {
        ar
    } else {
        ar | AR_UNUSABLE
    }
}

impl VmxVcpu {
    fn limits(&self) -> StateLimits {
        let max_phys = if crate::host_cpu::cpuid(0x8000_0000).eax >= 0x8000_0008 {
            crate::host_cpu::cpuid(0x8000_0008).eax as u8
        } else {
            36
        };
        StateLimits::new(
            self.cr4.may_be_one & !CR4_VMXE,
            EFER_GUEST_WRITABLE,
            max_phys,
        )
    }

    fn other_segment(&self, sel: u32, base: u32, limit: u32, ar: u32) -> SegmentRegister {
        SegmentRegister::new(
            self.read(sel) as u16,
            self.read(base),
            self.read(limit) as u32,
            attributes_from_access_rights(self.read(ar)),
        )
    }

    fn write_segment(&self, (sel, base, limit, ar): (u32, u32, u32, u32), s: &SegmentRegister) {
        self.write(sel, s.selector.into());
        self.write(base, s.base);
        self.write(limit, s.limit.into());
        self.write(ar, access_rights(s));
    }

    /// Write `r` into the VMCS unchecked.
    fn write_system(&mut self, r: &SystemRegisters) {
        for (s, v) in Segment::ALL.iter().zip(&r.segments) {
            let (sel, limit, ar, base) = fields::guest_segment(*s as u32);
            self.write_segment((sel, base, limit, ar), v);
        }
        self.write_segment(LDTR, &r.ldtr);
        // VM entry takes only a busy TSS in TR: an available one (which
        // the CPU does not look at again until a task switch) becomes busy.
        let mut tr = r.tr;
        if matches!(tr.segment_type(), 1 | 9) {
            tr.attributes |= 2;
        }
        self.write_segment(TR, &tr);
        self.write(fields::GUEST_GDTR_BASE, r.gdtr.base);
        self.write(fields::GUEST_GDTR_LIMIT, r.gdtr.limit.into());
        self.write(fields::GUEST_IDTR_BASE, r.idtr.base);
        self.write(fields::GUEST_IDTR_LIMIT, r.idtr.limit.into());
        self.write(fields::CR0_READ_SHADOW, r.cr0);
        self.write(fields::GUEST_CR0, self.cr0.apply(r.cr0));
        self.write(fields::CR4_READ_SHADOW, r.cr4);
        self.write(fields::GUEST_CR4, self.cr4.apply(r.cr4));
        self.write(fields::GUEST_CR3, r.cr3);
        self.write(fields::GUEST_IA32_EFER, r.efer);
        let ia32e = u64::from(capabilities::entry::IA32E_MODE_GUEST);
        let entry = self.entry_controls() & !ia32e;
        let entry = if r.efer & EFER_LMA != 0 {
            entry | ia32e
        } else {
            entry
        };
        self.write(fields::ENTRY_CONTROLS, entry);
        self.gprs.cr2 = r.cr2;
        // PAE paging outside long mode takes the PDPTEs from the VMCS:
        // read from guest memory at the next entry.
        self.pdptes_stale = true;
        self.flush_guest_tlb();
    }
}

const LDTR: (u32, u32, u32, u32) = (
    fields::GUEST_LDTR_SELECTOR,
    fields::GUEST_LDTR_BASE,
    fields::GUEST_LDTR_LIMIT,
    fields::GUEST_LDTR_ACCESS_RIGHTS,
);
const TR: (u32, u32, u32, u32) = (
    fields::GUEST_TR_SELECTOR,
    fields::GUEST_TR_BASE,
    fields::GUEST_TR_LIMIT,
    fields::GUEST_TR_ACCESS_RIGHTS,
);

impl VmxVcpu {
    /// RDMSR of a pass-through MSR from the VMCS or the MSR area.
    pub(super) fn vmcs_msr(&self, msr: u32) -> Option<u64> {
        let area = |i: usize| {
            let b = &self.msr_area.as_slice()[i * 16 + 8..i * 16 + 16];
            u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        };
        match msr {
            x86::msr::IA32_FS_BASE => Some(self.segment(Segment::Fs).base),
            x86::msr::IA32_GS_BASE => Some(self.segment(Segment::Gs).base),
            x86::msr::IA32_SYSENTER_CS => Some(self.read(fields::GUEST_SYSENTER_CS)),
            x86::msr::IA32_SYSENTER_ESP => Some(self.read(fields::GUEST_SYSENTER_ESP)),
            x86::msr::IA32_SYSENTER_EIP => Some(self.read(fields::GUEST_SYSENTER_EIP)),
            x86::msr::IA32_PAT if self.controls.pat => Some(self.read(fields::GUEST_IA32_PAT)),
            _ => SWITCHED_MSRS.iter().position(|m| *m == msr).map(area),
        }
    }

    /// WRMSR of such an MSR; `false` for a value the CPU refuses.
    pub(super) fn set_vmcs_msr(&mut self, msr: u32, value: u64) -> bool {
        if !crate::vcpu::pass_through_value_valid(msr, value) {
            return false;
        }
        let field = match msr {
            x86::msr::IA32_FS_BASE => fields::guest_segment(Segment::Fs as u32).3,
            x86::msr::IA32_GS_BASE => fields::guest_segment(Segment::Gs as u32).3,
            x86::msr::IA32_SYSENTER_CS => fields::GUEST_SYSENTER_CS,
            x86::msr::IA32_SYSENTER_ESP => fields::GUEST_SYSENTER_ESP,
            x86::msr::IA32_SYSENTER_EIP => fields::GUEST_SYSENTER_EIP,
            x86::msr::IA32_PAT if self.controls.pat => fields::GUEST_IA32_PAT,
            _ => {
                let Some(i) = SWITCHED_MSRS.iter().position(|m| *m == msr) else {
                    return false;
                };
                self.msr_area.as_mut_slice()[i * 16 + 8..i * 16 + 16]
                    .copy_from_slice(&value.to_le_bytes());
                return true;
            }
        };
        self.write(field, value);
        true
    }
}

impl ArchState for VmxVcpu {
    fn system_registers(&self) -> SystemRegisters {
        let control = self.control();
        SystemRegisters {
            segments: Segment::ALL.map(|s| self.segment(s)),
            ldtr: self.other_segment(LDTR.0, LDTR.1, LDTR.2, LDTR.3),
            tr: self.other_segment(TR.0, TR.1, TR.2, TR.3),
            gdtr: DescriptorTable {
                base: self.read(fields::GUEST_GDTR_BASE),
                limit: self.read(fields::GUEST_GDTR_LIMIT) as u16,
            },
            idtr: DescriptorTable {
                base: self.read(fields::GUEST_IDTR_BASE),
                limit: self.read(fields::GUEST_IDTR_LIMIT) as u16,
            },
            cr0: control.cr0,
            cr2: self.gprs.cr2,
            cr3: control.cr3,
            cr4: control.cr4,
            // CR8 exits to the emulated local APIC: its TPR is there.
            cr8: 0,
            efer: control.efer,
        }
    }

    fn set_system_registers(&mut self, r: &SystemRegisters) -> Result<(), ArchStateError> {
        check_system_registers(r, &self.limits())?;
        let old = self.system_registers();
        self.write_system(r);
        if let Some(failed) = entry_checks::first_failed_check(&self.snapshot(), self.cr0, self.cr4)
        {
            log::debug!(
                "refused system registers: {} ({})",
                failed.rule,
                failed.fields
            );
            self.write_system(&old);
            return Err(ArchStateError::Segment);
        }
        Ok(())
    }

    fn debug_registers(&self) -> DebugRegisters {
        DebugRegisters {
            dr: self.debug.dr,
            dr6: self.debug.dr6,
            dr7: self.read(fields::GUEST_DR7),
        }
    }

    fn set_debug_registers(&mut self, d: &DebugRegisters) -> Result<(), ArchStateError> {
        check_debug_registers(d)?;
        self.debug.dr = d.dr;
        self.debug.dr6 = d.dr6;
        self.write(fields::GUEST_DR7, d.dr7);
        Ok(())
    }

    fn event_state(&self) -> EventState {
        let info = self.read(fields::ENTRY_INTERRUPTION_INFO);
        let pending = (info & INFO_VALID != 0).then(|| {
            let kind = match (info >> 8) & 7 {
                0 => EventKind::ExternalInterrupt,
                2 => EventKind::Nmi,
                4 => EventKind::SoftwareInterrupt,
                6 => EventKind::SoftwareException,
                _ => EventKind::Exception,
            };
            let soft = matches!(
                kind,
                EventKind::SoftwareInterrupt | EventKind::SoftwareException
            );
            PendingEvent {
                kind,
                vector: info as u8,
                error_code: (info & INFO_ERROR_CODE != 0)
                    .then(|| self.read(fields::ENTRY_EXCEPTION_ERROR_CODE) as u32),
                instruction_length: if soft {
                    self.read(fields::ENTRY_INSTRUCTION_LENGTH) as u8
                } else {
                    0
                },
            }
        });
        let blocking = self.read(fields::GUEST_INTERRUPTIBILITY);
        let shadow = if blocking & 0b10 != 0 {
            InterruptShadow::MovSs
        } else if blocking & 0b01 != 0 {
            InterruptShadow::Sti
        } else {
            InterruptShadow::None
        };
        EventState {
            pending,
            interrupt_shadow: shadow,
            nmi_blocked: blocking & BLOCKING_NMI != 0,
            single_step_pending: self.debug_trap_pending(),
        }
    }

    fn set_event_state(&mut self, e: &EventState) -> Result<(), ArchStateError> {
        check_event_state(e, self.rflags(), self.control().cr0)?;
        match e.pending {
            None => self.write(fields::ENTRY_INTERRUPTION_INFO, 0),
            Some(p) => {
                let kind: u64 = match p.kind {
                    EventKind::ExternalInterrupt => 0,
                    EventKind::Nmi => 2,
                    EventKind::Exception => 3,
                    EventKind::SoftwareInterrupt => 4,
                    EventKind::SoftwareException => 6,
                };
                let mut info = u64::from(p.vector) | (kind << 8) | INFO_VALID;
                if let Some(code) = p.error_code {
                    info |= INFO_ERROR_CODE;
                    self.write(fields::ENTRY_EXCEPTION_ERROR_CODE, code.into());
                }
                self.write(
                    fields::ENTRY_INSTRUCTION_LENGTH,
                    p.instruction_length.into(),
                );
                self.write(fields::ENTRY_INTERRUPTION_INFO, info);
            }
        }
        let blocking =
            self.read(fields::GUEST_INTERRUPTIBILITY) & !(BLOCKING_STI_MOVSS | BLOCKING_NMI);
        let shadow = match e.interrupt_shadow {
            InterruptShadow::None => 0,
            InterruptShadow::Sti => 0b01,
            InterruptShadow::MovSs => 0b10,
        };
        let nmi = if e.nmi_blocked { BLOCKING_NMI } else { 0 };
        self.write(fields::GUEST_INTERRUPTIBILITY, blocking | shadow | nmi);
        if e.single_step_pending {
            self.raise_single_step();
        } else {
            self.clear_single_step();
        }
        Ok(())
    }

    fn xsave_image(&self) -> XsaveImage {
        self.xstate.image()
    }

    fn set_xsave_image(&mut self, x: &XsaveImage) -> Result<(), ArchStateError> {
        self.xstate.set_image(x)
    }
}
