//! [`ArchState`] for [`SvmVcpu`]: the whole guest state in the VMCB (and
//! in the shadow-paging registers, DR0-DR3 and the extended state the
//! vCPU keeps beside it), and the MSRs VMLOAD/VMRUN switch.

#![forbid(unsafe_code)]

use super::consistency::{self, GuestState};
use super::{offset, SvmVcpu, EFER_SVME};
use crate::emulator::{CpuState, DescriptorTable, Segment, SegmentRegister, RFLAGS_IF, RFLAGS_VM};
use crate::paging::CR0_PE;
use crate::vcpu::{
    check_debug_registers, check_event_state, check_system_registers, ArchState, ArchStateError,
    DebugRegisters, EventKind, EventState, InterruptShadow, PendingEvent, StateLimits,
    SystemRegisters, VcpuBackend, XsaveImage,
};

/// VMCB save-area offsets of the MSRs VMLOAD and VMRUN load.
const MSR_OFFSETS: [(u32, usize); 9] = [
    (x86::msr::IA32_STAR, 0x600),
    (x86::msr::IA32_LSTAR, 0x608),
    (x86::msr::IA32_CSTAR, 0x610),
    (x86::msr::IA32_FMASK, 0x618),
    (x86::msr::IA32_KERNEL_GSBASE, 0x620),
    (x86::msr::IA32_SYSENTER_CS, 0x628),
    (x86::msr::IA32_SYSENTER_ESP, 0x630),
    (x86::msr::IA32_SYSENTER_EIP, 0x638),
    (x86::msr::IA32_PAT, offset::G_PAT),
];

/// EVENTINJ: valid, error code valid.
const EVENT_VALID: u64 = 1 << 31;
const EVENT_ERROR_CODE: u64 = 1 << 11;

impl SvmVcpu {
    /// The CR4 bits this vCPU may hold: with shadow paging what the
    /// shadow pager allows, with nested paging also PCIDE and PKE where
    /// the CPU has them (the guest writes CR4 itself then).
    fn limits(&self) -> StateLimits {
        let mut cr4 = super::shadow::cr4_allowed();
        if self.shadow.is_none() {
            if crate::host_cpu::cpuid(1).ecx & (1 << 17) != 0 {
                cr4 |= 1 << 17;
            }
            if crate::host_cpu::cpuid(0).eax >= 7
                && crate::host_cpu::cpuid_count(7, 0).ecx & (1 << 3) != 0
            {
                cr4 |= crate::paging::CR4_PKE;
            }
        }
        StateLimits::new(cr4, self.efer_writable, self.max_phys_bits)
    }

    /// The VMCB's CPL for a guest in `cr0`/`rflags` with SS `ss`.
    fn cpl_for(cr0: u64, rflags: u64, ss: &SegmentRegister) -> u8 {
        if cr0 & CR0_PE == 0 {
            0
        } else if rflags & RFLAGS_VM != 0 {
            3
        } else {
            ss.dpl()
        }
    }
}

/// A descriptor-table register from its VMCB slot.
fn table(s: SegmentRegister) -> DescriptorTable {
    DescriptorTable {
        base: s.base,
        limit: s.limit as u16,
    }
}

/// A descriptor-table register as its VMCB slot.
fn table_slot(t: DescriptorTable) -> SegmentRegister {
    SegmentRegister::new(0, t.base, u32::from(t.limit), 0)
}

impl SvmVcpu {
    /// The power-on values of what the VMCB's reset state leaves alone:
    /// the MSRs VMLOAD loads (zero; PAT is set with the save area) and
    /// the virtual TPR (CR8 = 0), no virtual interrupt requested.
    pub(super) fn reset_vmcb_extras(&mut self) {
        for (msr, at) in MSR_OFFSETS {
            if msr != x86::msr::IA32_PAT {
                self.vmcb.write_u64(at, 0);
            }
        }
        self.request_interrupt_window(false);
        let v_intr = self.vmcb.read_u64(offset::V_INTR);
        self.vmcb.write_u64(offset::V_INTR, v_intr & !0xf);
    }

    /// RDMSR of a pass-through MSR from the VMCB (FS and GS base are the
    /// segments' bases).
    pub(super) fn vmcb_msr(&self, msr: u32) -> Option<u64> {
        match msr {
            x86::msr::IA32_FS_BASE => Some(self.vmcb.segment(Segment::Fs).base),
            x86::msr::IA32_GS_BASE => Some(self.vmcb.segment(Segment::Gs).base),
            _ => MSR_OFFSETS
                .iter()
                .find(|(m, _)| *m == msr)
                .map(|(_, at)| self.vmcb.read_u64(*at)),
        }
    }

    /// WRMSR of a pass-through MSR into the VMCB; `false` for a value the
    /// CPU refuses.
    pub(super) fn set_vmcb_msr(&mut self, msr: u32, value: u64) -> bool {
        if !crate::vcpu::pass_through_value_valid(msr, value) {
            return false;
        }
        let seg = match msr {
            x86::msr::IA32_FS_BASE => Some(Segment::Fs),
            x86::msr::IA32_GS_BASE => Some(Segment::Gs),
            _ => None,
        };
        if let Some(s) = seg {
            let mut r = self.vmcb.segment(s);
            r.base = value;
            self.vmcb.set_segment(s, r);
            return true;
        }
        match MSR_OFFSETS.iter().find(|(m, _)| *m == msr) {
            Some((_, at)) => {
                self.vmcb.write_u64(*at, value);
                true
            }
            None => false,
        }
    }
}

impl ArchState for SvmVcpu {
    fn system_registers(&self) -> SystemRegisters {
        let control = self.control();
        SystemRegisters {
            segments: Segment::ALL.map(|s| self.vmcb.segment(s)),
            ldtr: self.vmcb.segment_at(offset::LDTR),
            tr: self.vmcb.segment_at(offset::TR),
            gdtr: table(self.vmcb.segment_at(offset::GDTR)),
            idtr: table(self.vmcb.segment_at(offset::IDTR)),
            cr0: control.cr0,
            cr2: self.vmcb.read_u64(offset::CR2),
            cr3: control.cr3,
            cr4: control.cr4,
            cr8: self.vmcb.read_u64(offset::V_INTR) & 0xf,
            efer: control.efer,
        }
    }

    fn set_system_registers(&mut self, r: &SystemRegisters) -> Result<(), ArchStateError> {
        check_system_registers(r, &self.limits())?;
        // What VMRUN will check, with nested paging (shadow paging builds
        // the hardware's registers from checked guest ones).
        if self.shadow.is_none() {
            let state = GuestState {
                cr0: r.cr0,
                cr3: r.cr3,
                cr4: r.cr4,
                efer: r.efer | EFER_SVME,
                cs_attributes: r.segments[Segment::Cs as usize].attributes,
                ..self.guest_state()
            };
            if let Some(v) = consistency::first_violation(&state) {
                log::debug!("refused system registers: {v}");
                return Err(ArchStateError::Cr0);
            }
        }
        for (s, v) in Segment::ALL.iter().zip(&r.segments) {
            self.vmcb.set_segment(*s, *v);
        }
        self.vmcb.set_segment_at(offset::LDTR, r.ldtr);
        self.vmcb.set_segment_at(offset::TR, r.tr);
        self.vmcb.set_segment_at(offset::GDTR, table_slot(r.gdtr));
        self.vmcb.set_segment_at(offset::IDTR, table_slot(r.idtr));
        let ss = r.segments[Segment::Ss as usize];
        self.vmcb
            .write_u8(offset::CPL, Self::cpl_for(r.cr0, self.rflags(), &ss));
        self.vmcb.write_u64(offset::CR2, r.cr2);
        let v_intr = self.vmcb.read_u64(offset::V_INTR);
        self.vmcb.write_u64(offset::V_INTR, (v_intr & !0xf) | r.cr8);
        if self.shadow.is_some() {
            self.shadow_set_registers(r);
        } else {
            self.vmcb.write_u64(offset::CR0, r.cr0);
            self.vmcb.write_u64(offset::CR3, r.cr3);
            self.vmcb.write_u64(offset::CR4, r.cr4);
            self.vmcb.write_u64(offset::EFER, r.efer | EFER_SVME);
        }
        // The guest's TLB entries belong to the old registers.
        self.vmcb.write_u8(offset::TLB_CONTROL, 3);
        Ok(())
    }

    fn debug_registers(&self) -> DebugRegisters {
        DebugRegisters {
            dr: self.debug.dr,
            dr6: self.vmcb.read_u64(offset::DR6),
            dr7: self.vmcb.read_u64(offset::DR7),
        }
    }

    fn set_debug_registers(&mut self, d: &DebugRegisters) -> Result<(), ArchStateError> {
        check_debug_registers(d)?;
        self.debug.dr = d.dr;
        self.vmcb.write_u64(offset::DR6, d.dr6);
        self.vmcb.write_u64(offset::DR7, d.dr7);
        Ok(())
    }

    fn event_state(&self) -> EventState {
        let inj = self.vmcb.read_u64(offset::EVENT_INJ);
        let pending = (inj & EVENT_VALID != 0).then(|| {
            let vector = inj as u8;
            let kind = match (inj >> 8) & 7 {
                0 => EventKind::ExternalInterrupt,
                2 => EventKind::Nmi,
                4 => EventKind::SoftwareInterrupt,
                _ => EventKind::Exception,
            };
            let length = if kind == EventKind::SoftwareInterrupt {
                // SVM keeps no length: the next RIP says it where the CPU
                // saved one, else INT n's two bytes.
                let len = self
                    .vmcb
                    .read_u64(offset::NEXT_RIP)
                    .wrapping_sub(self.rip());
                if (1..=15).contains(&len) {
                    len as u8
                } else {
                    2
                }
            } else {
                0
            };
            PendingEvent {
                kind,
                vector,
                error_code: (inj & EVENT_ERROR_CODE != 0).then_some((inj >> 32) as u32),
                instruction_length: length,
            }
        });
        let shadow = if self.vmcb.read_u64(offset::INTERRUPT_SHADOW) & 1 == 0 {
            InterruptShadow::None
        } else if self.rflags() & RFLAGS_IF != 0 {
            InterruptShadow::Sti
        } else {
            InterruptShadow::MovSs
        };
        EventState {
            pending,
            interrupt_shadow: shadow,
            nmi_blocked: self.nmi_masked,
            single_step_pending: false,
        }
    }

    fn set_event_state(&mut self, e: &EventState) -> Result<(), ArchStateError> {
        check_event_state(e, self.rflags(), self.control().cr0)?;
        let inj = e.pending.map_or(0, |p| {
            let kind: u64 = match p.kind {
                EventKind::ExternalInterrupt => 0,
                EventKind::Nmi => 2,
                EventKind::Exception | EventKind::SoftwareException => 3,
                EventKind::SoftwareInterrupt => 4,
            };
            let code = p
                .error_code
                .map_or(0, |c| EVENT_ERROR_CODE | (u64::from(c) << 32));
            if p.kind == EventKind::SoftwareInterrupt {
                let next = self.rip().wrapping_add(u64::from(p.instruction_length));
                self.vmcb.write_u64(offset::NEXT_RIP, next);
            }
            u64::from(p.vector) | (kind << 8) | code | EVENT_VALID
        });
        self.vmcb.write_u64(offset::EVENT_INJ, inj);
        self.vmcb.write_u64(
            offset::INTERRUPT_SHADOW,
            u64::from(e.interrupt_shadow != InterruptShadow::None),
        );
        self.nmi_masked = e.nmi_blocked;
        self.iret_rip = None;
        self.set_iret_intercept(e.nmi_blocked);
        if e.single_step_pending && e.pending.is_none() {
            self.debug_trap(crate::vcpu::DR6_BS);
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
