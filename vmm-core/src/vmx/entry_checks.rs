//! Which guest-state check a failed VM entry broke.
//!
//! On a VM-entry failure for invalid guest state (exit reason 33) the CPU
//! says no more than "a check failed". This module re-runs the checks of
//! Intel SDM vol. 3, 27.3.1 that this backend's guests can break (control
//! registers against the fixed bits, EFER against the IA-32e mode control,
//! RFLAGS, CS/SS/TR/LDTR access rights and limits, interruptibility and
//! the event being injected) on a snapshot of the VMCS, and names the first
//! rule that does not hold, with the fields it looked at. Pure: tested
//! without hardware.

use super::capabilities::{FixedBits, CR0_PE, CR0_PG, CR4_PAE};
use alloc::format;
use alloc::string::String;

/// A segment as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcsSegment {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Access rights (VMX layout, bit 16 = unusable).
    pub access_rights: u32,
}

impl VmcsSegment {
    fn unusable(&self) -> bool {
        self.access_rights & (1 << 16) != 0
    }
    fn segment_type(&self) -> u32 {
        self.access_rights & 0xf
    }
    fn system(&self) -> bool {
        self.access_rights & (1 << 4) == 0
    }
    fn dpl(&self) -> u32 {
        (self.access_rights >> 5) & 3
    }
    fn present(&self) -> bool {
        self.access_rights & (1 << 7) != 0
    }
    fn long(&self) -> bool {
        self.access_rights & (1 << 13) != 0
    }
    fn default_big(&self) -> bool {
        self.access_rights & (1 << 14) != 0
    }
    fn granular(&self) -> bool {
        self.access_rights & (1 << 15) != 0
    }
    /// Limit and granularity agree (SDM: if any of limit[11:0] is 0, G
    /// must be 0; if any of limit[31:20] is 1, G must be 1).
    fn limit_consistent(&self) -> bool {
        (self.limit & 0xfff == 0xfff || !self.granular())
            && (self.limit & 0xfff0_0000 == 0 || self.granular())
    }
}

/// The guest state a VM entry checks, read from the VMCS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStateSnapshot {
    /// GUEST_CR0.
    pub cr0: u64,
    /// GUEST_CR4.
    pub cr4: u64,
    /// GUEST_IA32_EFER.
    pub efer: u64,
    /// VM-entry controls.
    pub entry_controls: u32,
    /// Unrestricted guest is on.
    pub unrestricted: bool,
    /// GUEST_RFLAGS.
    pub rflags: u64,
    /// CS.
    pub cs: VmcsSegment,
    /// SS.
    pub ss: VmcsSegment,
    /// TR.
    pub tr: VmcsSegment,
    /// LDTR.
    pub ldtr: VmcsSegment,
    /// Interruptibility state.
    pub interruptibility: u32,
    /// Activity state.
    pub activity: u32,
    /// VM-entry interruption information.
    pub entry_event: u32,
}

const IA32E_MODE_GUEST: u32 = 1 << 9;
const LOAD_EFER: u32 = 1 << 15;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS bits that must be 0: 3, 5, 15, 22-63.
const RFLAGS_RESERVED: u64 = (1 << 3) | (1 << 5) | (1 << 15) | !0x3f_ffff;

/// A broken rule: what the SDM requires and the fields that break it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedCheck {
    /// The rule, in the SDM's words.
    pub rule: &'static str,
    /// The offending fields.
    pub fields: String,
}

/// The first guest-state rule `s` breaks, given CR0/CR4's fixed bits (for
/// CR0 without PE/PG when unrestricted guest is on), or `None` if these
/// checks all pass (the CPU's complaint is about something not modelled).
pub fn first_failed_check(
    s: &GuestStateSnapshot,
    cr0_fixed: FixedBits,
    cr4_fixed: FixedBits,
) -> Option<FailedCheck> {
    let fail = |rule, fields: String| Some(FailedCheck { rule, fields });
    let ia32e = s.entry_controls & IA32E_MODE_GUEST != 0;
    let pe = s.cr0 & CR0_PE != 0;
    let pg = s.cr0 & CR0_PG != 0;
    if s.cr0 & cr0_fixed.must_be_one != cr0_fixed.must_be_one || s.cr0 & !cr0_fixed.may_be_one != 0
    {
        return fail(
            "CR0 must honour IA32_VMX_CR0_FIXED0/FIXED1",
            format!(
                "CR0 {:#x}, must be one {:#x}, may be one {:#x}",
                s.cr0, cr0_fixed.must_be_one, cr0_fixed.may_be_one
            ),
        );
    }
    if pg && !pe {
        return fail("CR0.PG requires CR0.PE", format!("CR0 {:#x}", s.cr0));
    }
    if s.cr4 & cr4_fixed.must_be_one != cr4_fixed.must_be_one || s.cr4 & !cr4_fixed.may_be_one != 0
    {
        return fail(
            "CR4 must honour IA32_VMX_CR4_FIXED0/FIXED1",
            format!(
                "CR4 {:#x}, must be one {:#x}, may be one {:#x}",
                s.cr4, cr4_fixed.must_be_one, cr4_fixed.may_be_one
            ),
        );
    }
    if ia32e && (!pg || s.cr4 & CR4_PAE == 0) {
        return fail(
            "an IA-32e mode guest needs CR0.PG and CR4.PAE",
            format!("CR0 {:#x} CR4 {:#x}", s.cr0, s.cr4),
        );
    }
    if s.entry_controls & LOAD_EFER != 0 {
        let lma = s.efer & EFER_LMA != 0;
        if lma != ia32e || (pg && (s.efer & EFER_LME != 0) != lma) {
            return fail(
                "EFER.LMA must equal the IA-32e mode guest control, and EFER.LME too when CR0.PG is set",
                format!(
                    "EFER {:#x}, entry controls {:#x}, CR0 {:#x}",
                    s.efer, s.entry_controls, s.cr0
                ),
            );
        }
    }
    if s.rflags & (1 << 1) == 0 || s.rflags & RFLAGS_RESERVED != 0 {
        return fail(
            "RFLAGS bit 1 must be 1 and its reserved bits 0",
            format!("RFLAGS {:#x}", s.rflags),
        );
    }
    if (ia32e || !pe) && s.rflags & RFLAGS_VM != 0 {
        return fail(
            "RFLAGS.VM must be 0 in IA-32e mode and real mode",
            format!("RFLAGS {:#x} CR0 {:#x}", s.rflags, s.cr0),
        );
    }
    let cs = s.cs;
    let cs_type_ok =
        matches!(cs.segment_type(), 9 | 11 | 13 | 15) || (s.unrestricted && cs.segment_type() == 3);
    if !cs_type_ok || cs.system() || !cs.present() || !cs.limit_consistent() {
        return fail(
            "CS must be an accessed code segment (or type 3 with unrestricted guest), present, with a limit its granularity allows",
            format!("CS {cs:x?}"),
        );
    }
    if cs.segment_type() == 3 && cs.dpl() != 0 {
        return fail("a CS of type 3 must have DPL 0", format!("CS {cs:x?}"));
    }
    if ia32e && cs.long() && cs.default_big() {
        return fail(
            "in IA-32e mode CS.L and CS.D cannot both be set",
            format!("CS {cs:x?}"),
        );
    }
    let ss = s.ss;
    if !ss.unusable()
        && (!matches!(ss.segment_type(), 3 | 7)
            || ss.system()
            || !ss.present()
            || !ss.limit_consistent())
    {
        return fail(
            "a usable SS must be a present read/write data segment with a consistent limit",
            format!("SS {ss:x?}"),
        );
    }
    if s.unrestricted && !pe && ss.dpl() != 0 {
        return fail("in real mode SS.DPL must be 0", format!("SS {ss:x?}"));
    }
    let tr = s.tr;
    let tr_type_ok = tr.segment_type() == 11 || (!ia32e && tr.segment_type() == 3);
    if tr.unusable() || !tr_type_ok || !tr.system() || !tr.present() || !tr.limit_consistent() {
        return fail(
            "TR must be a usable, present, busy TSS (type 11; 3 also outside IA-32e mode)",
            format!("TR {tr:x?}"),
        );
    }
    let ldtr = s.ldtr;
    if !ldtr.unusable()
        && (ldtr.segment_type() != 2
            || !ldtr.system()
            || !ldtr.present()
            || !ldtr.limit_consistent())
    {
        return fail(
            "a usable LDTR must be a present LDT descriptor (type 2)",
            format!("LDTR {ldtr:x?}"),
        );
    }
    let sti = s.interruptibility & 1 != 0;
    let mov_ss = s.interruptibility & 2 != 0;
    if sti && mov_ss {
        return fail(
            "blocking by STI and by MOV SS cannot both be set",
            format!("interruptibility {:#x}", s.interruptibility),
        );
    }
    if sti && s.rflags & RFLAGS_IF == 0 {
        return fail(
            "blocking by STI requires RFLAGS.IF",
            format!(
                "interruptibility {:#x} RFLAGS {:#x}",
                s.interruptibility, s.rflags
            ),
        );
    }
    if s.activity > 3 {
        return fail(
            "the activity state must be 0-3",
            format!("activity {}", s.activity),
        );
    }
    let event = s.entry_event;
    if event & (1 << 31) != 0 {
        let kind = (event >> 8) & 7;
        let vector = event & 0xff;
        if kind == 0 && (s.rflags & RFLAGS_IF == 0 || sti || mov_ss) {
            return fail(
                "an external interrupt can be injected only with RFLAGS.IF set and no STI/MOV SS blocking",
                format!(
                    "event {event:#x} RFLAGS {:#x} interruptibility {:#x}",
                    s.rflags, s.interruptibility
                ),
            );
        }
        if event & (1 << 11) != 0 && (!pe || kind != 3 || !matches!(vector, 8 | 10..=14 | 17 | 21))
        {
            return fail(
                "an error code is delivered only in protected mode, for #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP",
                format!("event {event:#x} CR0 {:#x}", s.cr0),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> (FixedBits, FixedBits) {
        (
            FixedBits {
                must_be_one: 0x20,
                may_be_one: 0xffff_ffff,
            },
            FixedBits {
                must_be_one: 0x2000,
                may_be_one: 0x0037_27ff,
            },
        )
    }

    /// The reset state this backend writes.
    fn reset() -> GuestStateSnapshot {
        let data = VmcsSegment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            access_rights: 0x93,
        };
        GuestStateSnapshot {
            cr0: 0x6000_0030,
            cr4: 0x2000,
            efer: 0,
            entry_controls: LOAD_EFER,
            unrestricted: true,
            rflags: 2,
            cs: VmcsSegment {
                selector: 0xf000,
                base: 0xffff_0000,
                limit: 0xffff,
                access_rights: 0x9b,
            },
            ss: data,
            tr: VmcsSegment {
                access_rights: 0x8b,
                ..data
            },
            ldtr: VmcsSegment {
                access_rights: 0x82,
                ..data
            },
            interruptibility: 0,
            activity: 0,
            entry_event: 0,
        }
    }

    #[test]
    fn the_reset_state_passes() {
        let (cr0, cr4) = fixed();
        assert_eq!(first_failed_check(&reset(), cr0, cr4), None);
    }

    #[test]
    fn each_broken_rule_is_named_with_its_fields() {
        let (cr0, cr4) = fixed();
        let check = |s: GuestStateSnapshot| first_failed_check(&s, cr0, cr4).unwrap();

        let c = check(GuestStateSnapshot {
            cr0: 0x6000_0010,
            ..reset()
        });
        assert!(c.rule.starts_with("CR0 must honour"), "{c:?}");
        assert!(c.fields.contains("CR0 0x60000010"), "{c:?}");

        let c = check(GuestStateSnapshot { cr4: 0, ..reset() });
        assert!(c.rule.starts_with("CR4 must honour"), "{c:?}");

        let c = check(GuestStateSnapshot {
            entry_controls: LOAD_EFER | IA32E_MODE_GUEST,
            ..reset()
        });
        assert_eq!(c.rule, "an IA-32e mode guest needs CR0.PG and CR4.PAE");

        let c = check(GuestStateSnapshot {
            cr0: 0x8000_0031,
            cr4: 0x2020,
            efer: EFER_LME,
            ..reset()
        });
        assert!(c.rule.starts_with("EFER.LMA must equal"), "{c:?}");

        let mut s = reset();
        s.tr.access_rights = 0x89; // available, not busy
        assert!(check(s).rule.starts_with("TR must be"));

        let mut s = reset();
        s.ss.access_rights = 0xf3; // DPL 3 in real mode
        assert_eq!(check(s).rule, "in real mode SS.DPL must be 0");

        let c = check(GuestStateSnapshot {
            entry_event: (1 << 31) | (3 << 8) | (1 << 11) | 13,
            ..reset()
        });
        assert!(
            c.rule.starts_with("an error code is delivered only"),
            "{c:?}"
        );

        let c = check(GuestStateSnapshot {
            entry_event: (1 << 31) | 0x20,
            ..reset()
        });
        assert!(
            c.rule.starts_with("an external interrupt can be injected"),
            "{c:?}"
        );

        let c = check(GuestStateSnapshot {
            interruptibility: 1,
            ..reset()
        });
        assert_eq!(c.rule, "blocking by STI requires RFLAGS.IF");

        let mut s = reset();
        s.cs.limit = 0xfffff; // G clear with limit[31:20] = 0: fine
        assert_eq!(first_failed_check(&s, cr0, cr4), None);
        s.cs.limit = 0xffff_ffff; // needs G
        assert!(check(s).rule.starts_with("CS must be"));
    }
}
