//! The guest-state checks VMRUN makes (AMD APM vol. 2, 15.5.1, "Canonicalization
//! and Consistency Checks"), as a pure function over the VMCB fields they
//! read, and the rule by which a guest's WRMSR to EFER is carried out.
//!
//! A guest must never be able to make VMRUN fail: every path that writes
//! state VMRUN checks (EFER by WRMSR, CR0/CR3/CR4 under shadow paging, the
//! events the VMM injects) applies the hardware's own rule first and gives
//! the guest #GP where hardware would. [`first_violation`] runs before
//! every VMRUN as a last line: if something slipped through, the VM stops
//! naming the rule instead of VMRUN failing with an opaque exit code, and
//! the `svm_guest_state` fuzz target drives random guest writes through
//! [`efer_write`] and [`event_injection`] and checks the result here.

use crate::emulator::Exception;
use crate::vcpu::Event;

/// CR0.PE.
const CR0_PE: u64 = 1 << 0;
/// CR0.NW.
const CR0_NW: u64 = 1 << 29;
/// CR0.CD.
const CR0_CD: u64 = 1 << 30;
/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// EFER.SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;
/// EFER bits that exist at all (reserved bits are MBZ for VMRUN).
const EFER_DEFINED: u64 =
    1 | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);
/// CR4 bits 63:32, reserved on every AMD CPU. (Lower reserved bits
/// depend on the CPU; the guest writes CR4 natively under nested paging,
/// where the CPU checks them, and through `shadow_write_cr` under shadow
/// paging, which allows only what the CPU has. This check must never be
/// stricter than the CPU.)
const CR4_RESERVED: u64 = !0xffff_ffff;
/// The CS attribute bits L and D in the VMCB's packed attribute format.
const CS_L: u16 = 1 << 9;
const CS_D: u16 = 1 << 10;

/// The VMCB fields VMRUN checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER (with SVME, which VMRUN requires).
    pub efer: u64,
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
    /// CS attributes in the VMCB's packed 12-bit format.
    pub cs_attributes: u16,
    /// EVENTINJ.
    pub event_injection: u64,
    /// The guest's MAXPHYADDR: CR3 bits above it are MBZ in long mode.
    pub max_phys_bits: u8,
}

/// A rule VMRUN would refuse the guest state by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// EFER.SVME clear.
    SvmeClear,
    /// CR0.CD clear with CR0.NW set.
    NotWriteThroughWithoutCacheDisable,
    /// CR0 bits 63:32 set.
    Cr0High,
    /// CR3 bits above MAXPHYADDR set in long mode.
    Cr3Reserved,
    /// CR4 bits 63:32 set.
    Cr4Reserved,
    /// DR6 or DR7 bits 63:32 set.
    DebugHigh,
    /// EFER reserved bits set.
    EferReserved,
    /// EFER.LME and CR0.PG without CR4.PAE.
    LongModeWithoutPae,
    /// EFER.LME and CR0.PG without CR0.PE.
    LongModeWithoutProtectedMode,
    /// Long mode with CS.L and CS.D both set.
    LongModeCsLAndD,
    /// EVENTINJ with a reserved type, or type and vector that do not go
    /// together (an exception above 31 or #NMI-vector exception).
    IllegalEvent,
}

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Violation::SvmeClear => "EFER.SVME is clear",
            Violation::NotWriteThroughWithoutCacheDisable => "CR0.NW is set with CR0.CD clear",
            Violation::Cr0High => "CR0 bits 63:32 are set",
            Violation::Cr3Reserved => "CR3 sets bits above MAXPHYADDR in long mode",
            Violation::Cr4Reserved => "CR4 sets bits 63:32",
            Violation::DebugHigh => "DR6 or DR7 bits 63:32 are set",
            Violation::EferReserved => "EFER sets reserved bits",
            Violation::LongModeWithoutPae => "EFER.LME and CR0.PG are set with CR4.PAE clear",
            Violation::LongModeWithoutProtectedMode => {
                "EFER.LME and CR0.PG are set with CR0.PE clear"
            }
            Violation::LongModeCsLAndD => "long mode with CS.L and CS.D both set",
            Violation::IllegalEvent => "EVENTINJ holds an illegal event",
        })
    }
}

/// The first rule `s` breaks, or `None` when VMRUN would take it.
pub fn first_violation(s: &GuestState) -> Option<Violation> {
    let long_paging = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
    let reserved_cr3 = !0u64 << s.max_phys_bits.clamp(32, 52);
    let checks = [
        (s.efer & EFER_SVME == 0, Violation::SvmeClear),
        (
            s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0,
            Violation::NotWriteThroughWithoutCacheDisable,
        ),
        (s.cr0 >> 32 != 0, Violation::Cr0High),
        (
            s.efer & EFER_LMA != 0 && s.cr3 & reserved_cr3 & !(1 << 63) != 0,
            Violation::Cr3Reserved,
        ),
        (s.cr4 & CR4_RESERVED != 0, Violation::Cr4Reserved),
        (s.dr6 >> 32 != 0 || s.dr7 >> 32 != 0, Violation::DebugHigh),
        (s.efer & !EFER_DEFINED != 0, Violation::EferReserved),
        (
            long_paging && s.cr4 & CR4_PAE == 0,
            Violation::LongModeWithoutPae,
        ),
        (
            long_paging && s.cr0 & CR0_PE == 0,
            Violation::LongModeWithoutProtectedMode,
        ),
        (
            long_paging
                && s.cr4 & CR4_PAE != 0
                && s.cs_attributes & CS_L != 0
                && s.cs_attributes & CS_D != 0,
            Violation::LongModeCsLAndD,
        ),
        (!event_is_legal(s.event_injection), Violation::IllegalEvent),
    ];
    checks.into_iter().find(|(bad, _)| *bad).map(|(_, v)| v)
}

/// Whether EVENTINJ holds nothing or a legal event: type 0 (external
/// interrupt), 2 (NMI), 3 (exception, vector below 32 and not 2) or 4
/// (software interrupt); types 1 and 5-7 are reserved.
fn event_is_legal(inj: u64) -> bool {
    if inj & (1 << 31) == 0 {
        return true;
    }
    let vector = inj & 0xff;
    match (inj >> 8) & 7 {
        0 | 4 => true,
        2 => true,
        3 => vector < 32 && vector != 2,
        _ => false,
    }
}

/// EVENTINJ for `event` in a guest whose CR0.PE is `protected`: exceptions
/// carry their error code only in protected mode (real mode pushes none).
pub fn event_injection(event: Event, protected: bool) -> u64 {
    match event {
        Event::Exception(e) => {
            let mut v = u64::from(e.vector()) | (3 << 8) | (1 << 31);
            if let Some(code) = e.error_code() {
                if protected {
                    v |= (1 << 11) | (u64::from(code) << 32);
                }
            }
            v
        }
        Event::Interrupt(vector) => u64::from(vector) | (1 << 31),
        Event::Nmi => 2 | (2 << 8) | (1 << 31),
    }
}

/// The EFER bits a guest may write on this CPU: SCE, LME, NXE and FFXSR
/// where CPUID 0x8000_0001 EDX reports SYSCALL, long mode, NX and FFXSR.
pub fn efer_writable() -> u64 {
    let edx = crate::host_cpu::cpuid(0x8000_0001).edx;
    [(11, 0), (29, 8), (20, 11), (25, 14)]
        .into_iter()
        .filter(|(cpuid, _)| edx & (1 << cpuid) != 0)
        .fold(0, |bits, (_, efer)| bits | (1 << efer))
}

/// The CPU's MAXPHYADDR (CPUID 0x8000_0008 EAX bits 7:0), 36 if it does not say.
pub fn max_phys_bits() -> u8 {
    if crate::host_cpu::cpuid(0x8000_0000).eax >= 0x8000_0008 {
        crate::host_cpu::cpuid(0x8000_0008).eax as u8
    } else {
        36
    }
}

/// WRMSR to EFER by the guest, as the CPU does it: `Err(#GP(0))` for a
/// reserved or unsupported bit (`writable`: the bits the CPU model offers)
/// or for a change of LME while paging is on; otherwise the new EFER, with
/// LMA kept (the CPU sets it, a write cannot) and SVME as `svme` (the VMM
/// keeps it set in the VMCB; the guest never sees it).
pub fn efer_write(
    current: u64,
    cr0: u64,
    value: u64,
    writable: u64,
    svme: bool,
) -> Result<u64, Exception> {
    let gp = Exception::GeneralProtection(0);
    if value & !(writable | EFER_LMA) != 0 {
        return Err(gp);
    }
    if cr0 & CR0_PG != 0 && (value ^ current) & EFER_LME != 0 {
        return Err(gp);
    }
    let svme = if svme { EFER_SVME } else { 0 };
    Ok((value & writable) | (current & EFER_LMA) | svme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_state() -> GuestState {
        GuestState {
            cr0: 0x6000_0010,
            efer: EFER_SVME,
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            max_phys_bits: 40,
            ..GuestState::default()
        }
    }

    #[test]
    fn the_reset_state_passes_and_each_rule_is_caught() {
        assert_eq!(first_violation(&ok_state()), None);
        let long = GuestState {
            cr0: 0x8000_0011,
            cr4: CR4_PAE,
            efer: EFER_SVME | EFER_LME | EFER_LMA,
            ..ok_state()
        };
        assert_eq!(first_violation(&long), None);
        for (s, v) in [
            (
                GuestState {
                    efer: 0,
                    ..ok_state()
                },
                Violation::SvmeClear,
            ),
            (
                GuestState {
                    cr0: CR0_NW,
                    ..ok_state()
                },
                Violation::NotWriteThroughWithoutCacheDisable,
            ),
            (
                GuestState {
                    cr0: 1 << 32,
                    ..ok_state()
                },
                Violation::Cr0High,
            ),
            (
                GuestState {
                    cr3: 1 << 45,
                    ..long
                },
                Violation::Cr3Reserved,
            ),
            (
                GuestState {
                    cr4: 1 << 40,
                    ..ok_state()
                },
                Violation::Cr4Reserved,
            ),
            (
                GuestState {
                    dr7: 1 << 40,
                    ..ok_state()
                },
                Violation::DebugHigh,
            ),
            (
                GuestState {
                    efer: EFER_SVME | (1 << 2),
                    ..ok_state()
                },
                Violation::EferReserved,
            ),
            (GuestState { cr4: 0, ..long }, Violation::LongModeWithoutPae),
            (
                GuestState {
                    cr0: 0x8000_0010,
                    ..long
                },
                Violation::LongModeWithoutProtectedMode,
            ),
            (
                GuestState {
                    cs_attributes: CS_L | CS_D,
                    ..long
                },
                Violation::LongModeCsLAndD,
            ),
            (
                GuestState {
                    event_injection: (1 << 31) | (3 << 8) | 40,
                    ..ok_state()
                },
                Violation::IllegalEvent,
            ),
            (
                GuestState {
                    event_injection: (1 << 31) | (3 << 8) | 2,
                    ..ok_state()
                },
                Violation::IllegalEvent,
            ),
            (
                GuestState {
                    event_injection: (1 << 31) | (1 << 8),
                    ..ok_state()
                },
                Violation::IllegalEvent,
            ),
        ] {
            assert_eq!(first_violation(&s), Some(v), "{s:x?}");
        }
        // CR3 bits above MAXPHYADDR outside long mode: not checked.
        assert_eq!(
            first_violation(&GuestState {
                cr3: 1 << 45,
                ..ok_state()
            }),
            None
        );
    }

    #[test]
    fn efer_writes_follow_the_hardware_rules() {
        let writable = 1 | EFER_LME | (1 << 11) | (1 << 14);
        // LME with paging off: fine, LMA untouched.
        assert_eq!(
            efer_write(0, 0x11, EFER_LME, writable, true),
            Ok(EFER_LME | EFER_SVME)
        );
        // Changing LME with paging on: #GP (the VMCB would be refused with
        // PAE off, and hardware forbids it anyway).
        assert_eq!(
            efer_write(0, 0x8000_0011, EFER_LME, writable, true),
            Err(Exception::GeneralProtection(0))
        );
        // Other bits may change with paging on; LMA is kept, not written.
        let lm = EFER_LME | EFER_LMA;
        assert_eq!(
            efer_write(lm, 0x8000_0011, EFER_LME | (1 << 11), writable, false),
            Ok(lm | (1 << 11))
        );
        assert_eq!(
            efer_write(lm, 0x8000_0011, EFER_LME, writable, false),
            Ok(lm)
        );
        // Reserved, SVME or an unsupported bit: #GP.
        for bad in [1 << 2, EFER_SVME, 1 << 13, 1 << 63] {
            assert_eq!(
                efer_write(0, 0, bad, writable, true),
                Err(Exception::GeneralProtection(0))
            );
        }
    }

    #[test]
    fn injected_events_are_always_legal() {
        for e in [
            Event::Exception(Exception::GeneralProtection(5)),
            Event::Exception(Exception::InvalidOpcode),
            Event::Interrupt(0),
            Event::Interrupt(255),
            Event::Nmi,
        ] {
            for protected in [false, true] {
                assert!(event_is_legal(event_injection(e, protected)), "{e:?}");
            }
        }
        // No error code in real mode.
        let real = event_injection(Event::Exception(Exception::GeneralProtection(5)), false);
        assert_eq!(real & (1 << 11), 0);
        let prot = event_injection(Event::Exception(Exception::GeneralProtection(5)), true);
        assert_eq!(prot >> 32, 5);
        assert_ne!(prot & (1 << 11), 0);
    }
}
