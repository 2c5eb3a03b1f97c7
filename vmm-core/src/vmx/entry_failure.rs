//! Explaining a failed entry: the VM-instruction error of a failed
//! VMLAUNCH/VMRESUME with the fields it concerns, and the guest state and
//! first broken guest-state rule ([`entry_checks`]) of a VM-entry failure.

use super::capabilities;
use super::entry_checks;
use super::exit_reason::instruction_error_name;
use super::fields;
use super::instructions::VmFail;
use super::VmxVcpu;
use crate::emulator::Segment;
use crate::vcpu::{Exit, ExitError};
use alloc::format;
use alloc::string::String;

impl VmxVcpu {
    /// The guest state VM entry checks, for [`entry_checks`].
    pub(super) fn snapshot(&self) -> entry_checks::GuestStateSnapshot {
        let segment = |sel: u32, base: u32, limit: u32, ar: u32| entry_checks::VmcsSegment {
            selector: self.read(sel) as u16,
            base: self.read(base),
            limit: self.read(limit) as u32,
            access_rights: self.read(ar) as u32,
        };
        let (cs_sel, cs_limit, cs_ar, cs_base) = fields::guest_segment(Segment::Cs as u32);
        let (ss_sel, ss_limit, ss_ar, ss_base) = fields::guest_segment(Segment::Ss as u32);
        entry_checks::GuestStateSnapshot {
            cr0: self.read(fields::GUEST_CR0),
            cr4: self.read(fields::GUEST_CR4),
            efer: self.read(fields::GUEST_IA32_EFER),
            entry_controls: self.read(fields::ENTRY_CONTROLS) as u32,
            unrestricted: self.controls.proc2 & capabilities::proc2::UNRESTRICTED_GUEST != 0,
            rflags: self.read(fields::GUEST_RFLAGS),
            cs: segment(cs_sel, cs_base, cs_limit, cs_ar),
            ss: segment(ss_sel, ss_base, ss_limit, ss_ar),
            tr: segment(
                fields::GUEST_TR_SELECTOR,
                fields::GUEST_TR_BASE,
                fields::GUEST_TR_LIMIT,
                fields::GUEST_TR_ACCESS_RIGHTS,
            ),
            ldtr: segment(
                fields::GUEST_LDTR_SELECTOR,
                fields::GUEST_LDTR_BASE,
                fields::GUEST_LDTR_LIMIT,
                fields::GUEST_LDTR_ACCESS_RIGHTS,
            ),
            interruptibility: self.read(fields::GUEST_INTERRUPTIBILITY) as u32,
            activity: self.read(fields::GUEST_ACTIVITY_STATE) as u32,
            entry_event: self.read(fields::ENTRY_INTERRUPTION_INFO) as u32,
        }
    }

    /// The guest-state fields a failed VM entry is explained with.
    pub(super) fn guest_state_summary(&self) -> String {
        let seg = |s: Segment| {
            let (sel, limit, ar, base) = fields::guest_segment(s as u32);
            format!(
                "{s:?} {:#x}/base {:#x}/limit {:#x}/ar {:#x}",
                self.read(sel),
                self.read(base),
                self.read(limit),
                self.read(ar)
            )
        };
        format!(
            "CR0 {:#x} (shadow {:#x}) CR4 {:#x} (shadow {:#x}) CR3 {:#x} EFER {:#x} \
             entry controls {:#x} RFLAGS {:#x} RIP {:#x} interruptibility {:#x} activity {:#x} \
             entry event {:#x}; {}; {}; TR {:#x}/base {:#x}/limit {:#x}/ar {:#x}; \
             LDTR {:#x}/ar {:#x}",
            self.read(fields::GUEST_CR0),
            self.read(fields::CR0_READ_SHADOW),
            self.read(fields::GUEST_CR4),
            self.read(fields::CR4_READ_SHADOW),
            self.read(fields::GUEST_CR3),
            self.read(fields::GUEST_IA32_EFER),
            self.read(fields::ENTRY_CONTROLS),
            self.read(fields::GUEST_RFLAGS),
            self.read(fields::GUEST_RIP),
            self.read(fields::GUEST_INTERRUPTIBILITY),
            self.read(fields::GUEST_ACTIVITY_STATE),
            self.read(fields::ENTRY_INTERRUPTION_INFO),
            seg(Segment::Cs),
            seg(Segment::Ss),
            self.read(fields::GUEST_TR_SELECTOR),
            self.read(fields::GUEST_TR_BASE),
            self.read(fields::GUEST_TR_LIMIT),
            self.read(fields::GUEST_TR_ACCESS_RIGHTS),
            self.read(fields::GUEST_LDTR_SELECTOR),
            self.read(fields::GUEST_LDTR_ACCESS_RIGHTS),
        )
    }

    /// VMLAUNCH/VMRESUME failed outright (VMfailInvalid/VMfailValid).
    pub(super) fn instruction_failure(&self, e: VmFail) -> Exit {
        let what = if self.launched {
            "VMRESUME"
        } else {
            "VMLAUNCH"
        };
        let detail = match e {
            VmFail::Invalid => format!("{what}: VMfailInvalid (no current VMCS)"),
            VmFail::Valid => {
                let n = self.read(fields::VM_INSTRUCTION_ERROR);
                let fields_text = match n {
                    7 => format!(
                        "pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x} EPTP {:#x} \
                         entry event {:#x}",
                        self.read(fields::PIN_BASED_CONTROLS),
                        self.read(fields::PROC_BASED_CONTROLS),
                        self.read(fields::SECONDARY_CONTROLS),
                        self.read(fields::EXIT_CONTROLS),
                        self.read(fields::ENTRY_CONTROLS),
                        self.read(fields::EPT_POINTER),
                        self.read(fields::ENTRY_INTERRUPTION_INFO),
                    ),
                    8 => format!(
                        "host CR0 {:#x} CR4 {:#x} CR3 {:#x} CS {:#x} SS {:#x} TR {:#x} \
                         RIP {:#x} EFER {:#x}",
                        self.read(fields::HOST_CR0),
                        self.read(fields::HOST_CR4),
                        self.read(fields::HOST_CR3),
                        self.read(fields::HOST_CS_SELECTOR),
                        self.read(fields::HOST_SS_SELECTOR),
                        self.read(fields::HOST_TR_SELECTOR),
                        self.read(fields::HOST_RIP),
                        self.read(fields::HOST_IA32_EFER),
                    ),
                    _ => self.guest_state_summary(),
                };
                format!(
                    "{what}: VM-instruction error {n} ({}); {fields_text}",
                    instruction_error_name(n)
                )
            }
        };
        Exit::Error(ExitError::EntryFailed { detail })
    }
}
