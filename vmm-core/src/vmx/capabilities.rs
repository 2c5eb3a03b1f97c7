//! What this CPU's VMX allows, read from the capability MSRs, and the
//! execution, exit and entry controls derived from it.
//!
//! Every control MSR reports, for each bit, whether it may be 0 (low half:
//! a 1 there means "must be 1") and whether it may be 1 (high half). When
//! IA32_VMX_BASIC bit 55 is set the TRUE_* MSRs say which default-1 bits may
//! in fact be cleared. Controls are `(wanted | must_be_one) & may_be_one`;
//! a wanted control the CPU lacks is an error that names it, and a
//! must-be-one control we would rather not have is handled by the exit
//! decoder (CR3/CR8 exits, for instance). Nothing here touches hardware, so
//! the derivation is tested with the MSR values of real and emulated CPUs.

use core::fmt;

/// Pin-based controls.
pub mod pin {
    /// External-interrupt exiting.
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    /// NMI exiting.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// Virtual NMIs: the CPU tracks "virtual-NMI blocking" for the guest,
    /// set by injecting an NMI and cleared by the guest's IRET (needs NMI
    /// exiting).
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    /// Activate the VMX-preemption timer: the guest exits when the timer
    /// (the TSC divided by 2^`IA32_VMX_MISC[4:0]`) counts down to zero,
    /// whatever its RFLAGS.IF.
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
}

/// Primary processor-based controls.
pub mod proc {
    /// Interrupt-window exiting.
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    /// NMI-window exiting (allowed only with virtual NMIs).
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    /// Use TSC offsetting.
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    /// HLT exiting.
    pub const HLT_EXITING: u32 = 1 << 7;
    /// CR3-load exiting.
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    /// CR3-store exiting.
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    /// CR8-load exiting.
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    /// CR8-store exiting.
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    /// Unconditional I/O exiting.
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    /// Use I/O bitmaps.
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    /// Use MSR bitmaps.
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    /// PAUSE exiting: every PAUSE exits.
    pub const PAUSE_EXITING: u32 = 1 << 30;
    /// Activate secondary controls.
    pub const SECONDARY_CONTROLS: u32 = 1 << 31;
}

/// Secondary processor-based controls.
pub mod proc2 {
    /// Enable EPT.
    pub const ENABLE_EPT: u32 = 1 << 1;
    /// Enable RDTSCP (otherwise it raises #UD in the guest).
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    /// Enable VPID.
    pub const ENABLE_VPID: u32 = 1 << 5;
    /// Unrestricted guest.
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    /// PAUSE-loop exiting: a PAUSE at CPL 0 exits once the spin loop it
    /// belongs to (PAUSEs at most PLE_Gap TSC ticks apart) has gone on
    /// for more than PLE_Window ticks.
    pub const PAUSE_LOOP_EXITING: u32 = 1 << 10;
    /// Enable INVPCID.
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    /// Enable XSAVES/XRSTORS.
    pub const ENABLE_XSAVES: u32 = 1 << 20;
}

/// VM-exit controls.
pub mod exit {
    /// Save DR7 and IA32_DEBUGCTL (the guest's breakpoints survive exits;
    /// DR7 becomes 0x400 for the host).
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    /// Host address-space size (a 64-bit host).
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    /// Save IA32_PAT.
    pub const SAVE_PAT: u32 = 1 << 18;
    /// Load IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 19;
    /// Save IA32_EFER.
    pub const SAVE_EFER: u32 = 1 << 20;
    /// Load IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 21;
}

/// VM-entry controls.
pub mod entry {
    /// Load DR7 and IA32_DEBUGCTL: the guest's breakpoints are armed while
    /// it runs.
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    /// IA-32e mode guest.
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    /// Load IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 14;
    /// Load IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// IA32_VMX_EPT_VPID_CAP bits.
pub mod ept_cap {
    /// Page-walk length 4.
    pub const WALK_LENGTH_4: u64 = 1 << 6;
    /// Write-back EPT structures.
    pub const WRITE_BACK: u64 = 1 << 14;
    /// 2 MiB EPT pages.
    pub const LARGE_PAGES_2M: u64 = 1 << 16;
    /// INVEPT.
    pub const INVEPT: u64 = 1 << 20;
    /// Single-context INVEPT.
    pub const INVEPT_SINGLE: u64 = 1 << 25;
    /// All-context INVEPT.
    pub const INVEPT_ALL: u64 = 1 << 26;
    /// INVVPID.
    pub const INVVPID: u64 = 1 << 32;
    /// Single-context INVVPID.
    pub const INVVPID_SINGLE: u64 = 1 << 41;
    /// All-context INVVPID.
    pub const INVVPID_ALL: u64 = 1 << 42;
}

/// The raw capability MSRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilityMsrs {
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// IA32_VMX_PINBASED_CTLS (or TRUE_ when BASIC bit 55 is set).
    pub pin: u64,
    /// IA32_VMX_PROCBASED_CTLS (or TRUE_).
    pub proc: u64,
    /// IA32_VMX_EXIT_CTLS (or TRUE_).
    pub exit: u64,
    /// IA32_VMX_ENTRY_CTLS (or TRUE_).
    pub entry: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0 if the CPU has no secondary controls).
    pub proc2: u64,
    /// IA32_VMX_EPT_VPID_CAP (0 if neither EPT nor VPID).
    pub ept_vpid: u64,
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
    /// IA32_VMX_MISC (bits 4:0: the preemption timer's rate).
    pub misc: u64,
}

impl CapabilityMsrs {
    /// IA32_VMX_BASIC bit 55: the TRUE_* control MSRs exist.
    pub const BASIC_TRUE_CONTROLS: u64 = 1 << 55;

    /// The VMCS revision identifier (bits 30:0 of IA32_VMX_BASIC).
    pub fn revision(&self) -> u32 {
        (self.basic & 0x7fff_ffff) as u32
    }
}

/// A VMX capability this VMM needs and the CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingCapability {
    /// A control the CPU cannot set: which group and the bits.
    Control {
        /// "pin-based", "processor-based", "secondary", "exit" or "entry".
        group: &'static str,
        /// The wanted bits the CPU does not allow.
        bits: u32,
    },
    /// A control MSR says bits must be one that it does not allow to be one.
    Inconsistent {
        /// The group of controls.
        group: &'static str,
        /// The contradictory bits.
        bits: u32,
    },
    /// EPT cannot be used as built here (4-level walk, write-back tables,
    /// 2 MiB pages, INVEPT).
    Ept {
        /// The EPT/VPID capability MSR.
        caps: u64,
    },
}

impl fmt::Display for MissingCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingCapability::Control { group, bits } => {
                write!(f, "the CPU cannot set {group} VMX controls {bits:#x}")
            }
            MissingCapability::Inconsistent { group, bits } => write!(
                f,
                "the {group} VMX control MSR requires bits {bits:#x} it does not allow"
            ),
            MissingCapability::Ept { caps } => write!(
                f,
                "EPT lacks a 4-level walk, write-back tables, 2 MiB pages or INVEPT \
                 (IA32_VMX_EPT_VPID_CAP {caps:#x})"
            ),
        }
    }
}

/// The controls a VMCS is set up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    /// Pin-based.
    pub pin: u32,
    /// Primary processor-based.
    pub proc: u32,
    /// Secondary processor-based.
    pub proc2: u32,
    /// VM-exit.
    pub exit: u32,
    /// VM-entry (without IA-32e mode guest, which follows the guest).
    pub entry: u32,
    /// VPIDs are used.
    pub vpid: bool,
    /// Guest PAT is switched by the VMCS (so PAT can be passed through).
    pub pat: bool,
    /// The bit the primary controls force on that we can clear when asked
    /// (interrupt-window exiting may be 0).
    pub interrupt_window_optional: bool,
    /// NMI-window exiting may be set: an NMI held by virtual-NMI blocking
    /// is delivered right after the handler's IRET (without it, at the
    /// next exit).
    pub nmi_window: bool,
    /// The VMX-preemption timer is on, counting down once every 2^this
    /// TSC ticks (`None`: the CPU has no such timer).
    pub preemption_timer_shift: Option<u8>,
    /// How a spinning guest can be made to exit (see
    /// [`Controls::with_pause_exiting`]).
    pub pause: PauseExiting,
}

/// How the VMCS can make a guest's PAUSE exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseExiting {
    /// PAUSE-loop exiting (secondary controls), with [`PLE_GAP`] and
    /// [`PLE_WINDOW`]: only a long spin loop exits.
    Loop,
    /// PAUSE exiting (primary controls): every PAUSE exits.
    Every,
    /// Neither control can be set.
    Unavailable,
}

/// PLE_Gap: TSC ticks between two PAUSEs of one spin loop at most (KVM's
/// default).
pub const PLE_GAP: u32 = 128;
/// PLE_Window: TSC ticks a spin loop goes on before it exits (KVM's
/// default).
pub const PLE_WINDOW: u32 = 4096;

fn adjust(
    group: &'static str,
    msr: u64,
    required: u32,
    optional: u32,
) -> Result<u32, MissingCapability> {
    let must_be_one = msr as u32;
    let may_be_one = (msr >> 32) as u32;
    if must_be_one & !may_be_one != 0 {
        return Err(MissingCapability::Inconsistent {
            group,
            bits: must_be_one & !may_be_one,
        });
    }
    let missing = required & !may_be_one;
    if missing != 0 {
        return Err(MissingCapability::Control {
            group,
            bits: missing,
        });
    }
    Ok((required | (optional & may_be_one) | must_be_one) & may_be_one)
}

impl Controls {
    /// Derive the controls from the capability MSRs.
    pub fn derive(caps: &CapabilityMsrs) -> Result<Self, MissingCapability> {
        // Virtual NMIs are required: with NMI exiting on and virtual NMIs
        // off, the guest's IRET does not unblock NMIs (SDM 3C, "Changes to
        // instruction behavior in VMX non-root operation", IRET), so after
        // the first injected NMI blocking by NMI would stay set for good
        // and no second NMI could ever be delivered. With virtual NMIs the
        // interruptibility state's "blocking by NMI" bit is virtual-NMI
        // blocking, which the handler's IRET clears, as hardware does.
        let pin = adjust(
            "pin-based",
            caps.pin,
            pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING | pin::VIRTUAL_NMIS,
            pin::PREEMPTION_TIMER,
        )?;
        let proc = adjust(
            "processor-based",
            caps.proc,
            proc::HLT_EXITING
                | proc::USE_IO_BITMAPS
                | proc::USE_MSR_BITMAPS
                | proc::SECONDARY_CONTROLS,
            proc::USE_TSC_OFFSETTING,
        )?;
        let interrupt_window_optional = caps.proc as u32 & proc::INTERRUPT_WINDOW_EXITING == 0;
        if (caps.proc >> 32) as u32 & proc::INTERRUPT_WINDOW_EXITING == 0 {
            return Err(MissingCapability::Control {
                group: "processor-based",
                bits: proc::INTERRUPT_WINDOW_EXITING,
            });
        }
        let proc2 = adjust(
            "secondary",
            caps.proc2,
            proc2::ENABLE_EPT | proc2::UNRESTRICTED_GUEST,
            proc2::ENABLE_VPID
                | proc2::ENABLE_RDTSCP
                | proc2::ENABLE_INVPCID
                | proc2::ENABLE_XSAVES,
        )?;
        let ept = caps.ept_vpid;
        let needed = ept_cap::WALK_LENGTH_4
            | ept_cap::WRITE_BACK
            | ept_cap::LARGE_PAGES_2M
            | ept_cap::INVEPT;
        if ept & needed != needed || ept & (ept_cap::INVEPT_SINGLE | ept_cap::INVEPT_ALL) == 0 {
            return Err(MissingCapability::Ept { caps: ept });
        }
        let exit = adjust(
            "exit",
            caps.exit,
            exit::HOST_ADDRESS_SPACE_SIZE
                | exit::LOAD_EFER
                | exit::SAVE_EFER
                | exit::SAVE_DEBUG_CONTROLS,
            exit::SAVE_PAT | exit::LOAD_PAT,
        )?;
        let entry = adjust(
            "entry",
            caps.entry,
            entry::LOAD_EFER | entry::LOAD_DEBUG_CONTROLS,
            entry::LOAD_PAT,
        )? & !entry::IA32E_MODE_GUEST;
        let pat = exit & (exit::SAVE_PAT | exit::LOAD_PAT) == exit::SAVE_PAT | exit::LOAD_PAT
            && entry & entry::LOAD_PAT != 0;
        let vpid_usable = ept & ept_cap::INVVPID != 0
            && ept & (ept_cap::INVVPID_SINGLE | ept_cap::INVVPID_ALL) != 0;
        let (proc2, vpid) = if vpid_usable {
            (proc2, proc2 & proc2::ENABLE_VPID != 0)
        } else {
            (proc2 & !proc2::ENABLE_VPID, false)
        };
        Ok(Self {
            pin,
            proc,
            proc2,
            exit,
            entry,
            vpid,
            pat,
            interrupt_window_optional,
            nmi_window: (caps.proc >> 32) as u32 & proc::NMI_WINDOW_EXITING != 0,
            preemption_timer_shift: (pin & pin::PREEMPTION_TIMER != 0)
                .then_some((caps.misc & 0x1f) as u8),
            pause: if (caps.proc2 >> 32) as u32 & proc2::PAUSE_LOOP_EXITING != 0
                && proc & proc::SECONDARY_CONTROLS != 0
            {
                PauseExiting::Loop
            } else if (caps.proc >> 32) as u32 & proc::PAUSE_EXITING != 0 {
                PauseExiting::Every
            } else {
                PauseExiting::Unavailable
            },
        })
    }

    /// The primary and secondary processor-based controls `proc` and
    /// `proc2` (as the VMCS holds them now) with PAUSE intercepted (`on`)
    /// as [`Controls::pause`] allows, or not: off, a bit is as derived
    /// (a control the CPU forces on stays on).
    pub fn with_pause_exiting(&self, proc: u32, proc2: u32, on: bool) -> (u32, u32) {
        let set = |value: u32, derived: u32, bit: u32, on: bool| {
            if on {
                value | bit
            } else {
                (value & !bit) | (derived & bit)
            }
        };
        match self.pause {
            PauseExiting::Loop => (proc, set(proc2, self.proc2, proc2::PAUSE_LOOP_EXITING, on)),
            PauseExiting::Every => (set(proc, self.proc, proc::PAUSE_EXITING, on), proc2),
            PauseExiting::Unavailable => (proc, proc2),
        }
    }
}

/// CR0 or CR4 as VMX requires it: bits that must be 1 and bits that may be
/// 1 while in VMX operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBits {
    /// Bits that must be 1 (FIXED0).
    pub must_be_one: u64,
    /// Bits that may be 1 (FIXED1).
    pub may_be_one: u64,
}

impl FixedBits {
    /// The value the CPU runs with when the guest wants `guest`.
    pub fn apply(&self, guest: u64) -> u64 {
        (guest | self.must_be_one) & self.may_be_one
    }

    /// The bits the guest cannot own: those VMX fixes one way or the other
    /// (within the low 32 bits the guest can write).
    pub fn owned_by_vmm(&self) -> u64 {
        self.must_be_one | (!self.may_be_one & 0xffff_ffff)
    }
}

/// CR0.PE.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.NE.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.NW.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;

impl CapabilityMsrs {
    /// CR0's fixed bits for a guest: with unrestricted guest, PE and PG are
    /// free.
    pub fn guest_cr0(&self) -> FixedBits {
        FixedBits {
            must_be_one: self.cr0_fixed0 & !(CR0_PE | CR0_PG),
            may_be_one: self.cr0_fixed1,
        }
    }

    /// CR4's fixed bits.
    pub fn guest_cr4(&self) -> FixedBits {
        FixedBits {
            must_be_one: self.cr4_fixed0,
            may_be_one: self.cr4_fixed1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capability MSRs shaped after a Haswell part: true controls, EPT with
    /// 2 MiB pages, VPID, unrestricted guest.
    fn haswell() -> CapabilityMsrs {
        CapabilityMsrs {
            basic: 0x00da_0400_0000_0001 | CapabilityMsrs::BASIC_TRUE_CONTROLS,
            pin: 0x0000_007f_0000_0016,
            proc: 0xfff9_fffe_0401_e172,
            exit: 0x01ff_ffff_0003_6dfb,
            entry: 0x0003_ffff_0000_11fb,
            proc2: 0x0000_10ff_0000_0000,
            ept_vpid: 0x0000_0f01_0673_4141,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_27ff,
            misc: 0x0000_0000_0040_01e5,
        }
    }

    #[test]
    fn controls_keep_the_must_be_one_bits_and_drop_what_is_not_allowed() {
        let c = Controls::derive(&haswell()).unwrap();
        // Pin: bits 1, 2, 4 are default-1 and stay; ours are added.
        assert_eq!(
            c.pin,
            0x16 | pin::EXTERNAL_INTERRUPT_EXITING
                | pin::NMI_EXITING
                | pin::VIRTUAL_NMIS
                | pin::PREEMPTION_TIMER
        );
        // The timer counts once every 2^5 TSC ticks (IA32_VMX_MISC 4:0).
        assert_eq!(c.preemption_timer_shift, Some(5));
        // Default-1 bits of the true MSR stay (bits 1, 4-6, 8, 13-16, 26).
        assert_eq!(c.proc & 0x0401_e172, 0x0401_e172);
        assert_ne!(c.proc & proc::HLT_EXITING, 0);
        assert_ne!(c.proc & proc::USE_IO_BITMAPS, 0);
        assert_ne!(c.proc & proc::USE_TSC_OFFSETTING, 0);
        assert_eq!(c.proc & proc::INTERRUPT_WINDOW_EXITING, 0);
        assert!(c.interrupt_window_optional);
        assert_ne!(c.proc2 & proc2::UNRESTRICTED_GUEST, 0);
        assert_ne!(c.proc2 & proc2::ENABLE_EPT, 0);
        assert!(c.vpid);
        assert!(c.pat);
        assert_eq!(c.entry & entry::IA32E_MODE_GUEST, 0);
        assert_ne!(c.exit & exit::HOST_ADDRESS_SPACE_SIZE, 0);
        // Nothing beyond what the CPU allows.
        let caps = haswell();
        assert_eq!(c.proc & !((caps.proc >> 32) as u32), 0);
        assert_eq!(c.proc2 & !((caps.proc2 >> 32) as u32), 0);
    }

    #[test]
    fn pause_exits_by_loop_where_the_cpu_counts_them_else_every_one() {
        // With PAUSE-loop exiting: only the secondary bit moves.
        let mut caps = haswell();
        caps.proc2 |= u64::from(proc2::PAUSE_LOOP_EXITING) << 32;
        let c = Controls::derive(&caps).unwrap();
        assert_eq!(c.pause, PauseExiting::Loop);
        assert_eq!(c.proc2 & proc2::PAUSE_LOOP_EXITING, 0, "off at first");
        let (p, p2) = c.with_pause_exiting(c.proc, c.proc2, true);
        assert_eq!((p, p2), (c.proc, c.proc2 | proc2::PAUSE_LOOP_EXITING));
        assert_eq!(c.with_pause_exiting(p, p2, false), (c.proc, c.proc2));
        // Without it (this fixture's secondary controls): PAUSE exiting,
        // every PAUSE.
        let mut caps = haswell();
        let c = Controls::derive(&caps).unwrap();
        assert_eq!(c.pause, PauseExiting::Every);
        assert_eq!(c.proc & proc::PAUSE_EXITING, 0, "off at first");
        // Another control changed meanwhile (the interrupt window) stays.
        let window = c.proc | proc::INTERRUPT_WINDOW_EXITING;
        let (p, p2) = c.with_pause_exiting(window, c.proc2, true);
        assert_eq!((p, p2), (window | proc::PAUSE_EXITING, c.proc2));
        assert_eq!(c.with_pause_exiting(p, p2, false), (window, c.proc2));
        // Neither: nothing changes.
        caps.proc &= !(u64::from(proc::PAUSE_EXITING) << 32);
        let c = Controls::derive(&caps).unwrap();
        assert_eq!(c.pause, PauseExiting::Unavailable);
        assert_eq!(
            c.with_pause_exiting(c.proc, c.proc2, true),
            (c.proc, c.proc2)
        );
        // A CPU that forces PAUSE exiting on keeps it on.
        let mut caps = haswell();
        caps.proc |= u64::from(proc::PAUSE_EXITING);
        let c = Controls::derive(&caps).unwrap();
        assert_ne!(c.proc & proc::PAUSE_EXITING, 0);
        assert_eq!(c.with_pause_exiting(c.proc, c.proc2, false).0, c.proc);
    }

    #[test]
    fn a_cpu_without_unrestricted_guest_is_refused_by_name() {
        let mut caps = haswell();
        caps.proc2 &= !(u64::from(proc2::UNRESTRICTED_GUEST) << 32);
        assert_eq!(
            Controls::derive(&caps),
            Err(MissingCapability::Control {
                group: "secondary",
                bits: proc2::UNRESTRICTED_GUEST
            })
        );
        let mut caps = haswell();
        caps.ept_vpid &= !ept_cap::LARGE_PAGES_2M;
        assert!(matches!(
            Controls::derive(&caps),
            Err(MissingCapability::Ept { .. })
        ));
    }

    #[test]
    fn a_cpu_without_virtual_nmis_is_refused_by_name() {
        // Without them a guest would get one NMI and never another.
        let mut caps = haswell();
        caps.pin &= !(u64::from(pin::VIRTUAL_NMIS) << 32);
        assert_eq!(
            Controls::derive(&caps),
            Err(MissingCapability::Control {
                group: "pin-based",
                bits: pin::VIRTUAL_NMIS
            })
        );
    }

    #[test]
    fn contradictory_capability_msrs_are_refused() {
        let mut caps = haswell();
        // Bit 1 must be one but may not be.
        caps.pin = 0x0000_007d_0000_0016;
        assert_eq!(
            Controls::derive(&caps),
            Err(MissingCapability::Inconsistent {
                group: "pin-based",
                bits: 0x2
            })
        );
    }

    #[test]
    fn without_invvpid_no_vpid_is_used() {
        let mut caps = haswell();
        caps.ept_vpid &= !ept_cap::INVVPID;
        let c = Controls::derive(&caps).unwrap();
        assert!(!c.vpid);
        assert_eq!(c.proc2 & proc2::ENABLE_VPID, 0);
    }

    #[test]
    fn unrestricted_guest_frees_pe_and_pg_but_not_ne() {
        let caps = haswell();
        let cr0 = caps.guest_cr0();
        // The reset value 0x60000010 runs with NE added; PE/PG untouched.
        assert_eq!(cr0.apply(0x6000_0010), 0x6000_0030);
        assert_eq!(cr0.owned_by_vmm(), CR0_NE);
        let cr4 = caps.guest_cr4();
        assert_eq!(cr4.apply(0), CR4_VMXE);
        // A bit FIXED1 forbids is forced off and owned by the VMM.
        assert_eq!(cr4.apply(1 << 30), CR4_VMXE);
        assert_ne!(cr4.owned_by_vmm() & (1 << 30), 0);
    }
}
