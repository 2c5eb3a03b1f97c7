//! VMX exit reasons, VM-instruction errors and VM-entry failure
//! qualifications by name (Intel SDM vol. 3, appendix C and section 31.4),
//! so a stop reason says what happened in words.

/// Exit reason numbers the backend handles.
#[allow(missing_docs)]
pub mod reason {
    pub const EXCEPTION_OR_NMI: u32 = 0;
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const NMI_WINDOW: u32 = 8;
    pub const CPUID: u32 = 10;
    pub const HLT: u32 = 12;
    pub const INVD: u32 = 13;
    pub const VMCALL: u32 = 18;
    pub const VMXON: u32 = 27;
    pub const CR_ACCESS: u32 = 28;
    pub const IO: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const ENTRY_FAIL_GUEST_STATE: u32 = 33;
    pub const ENTRY_FAIL_MSR_LOADING: u32 = 34;
    pub const PAUSE: u32 = 40;
    pub const ENTRY_FAIL_MACHINE_CHECK: u32 = 41;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIG: u32 = 49;
    pub const INVEPT: u32 = 50;
    pub const PREEMPTION_TIMER: u32 = 52;
    pub const INVVPID: u32 = 53;
    pub const XSETBV: u32 = 55;
    pub const VMFUNC: u32 = 59;
}

/// The name of basic exit reason `n`.
pub fn exit_reason_name(n: u32) -> &'static str {
    match n {
        0 => "exception or NMI",
        1 => "external interrupt",
        2 => "triple fault",
        3 => "INIT signal",
        4 => "start-up IPI",
        7 => "interrupt window",
        8 => "NMI window",
        9 => "task switch",
        10 => "CPUID",
        11 => "GETSEC",
        12 => "HLT",
        13 => "INVD",
        14 => "INVLPG",
        15 => "RDPMC",
        16 => "RDTSC",
        17 => "RSM",
        18 => "VMCALL",
        19 => "VMCLEAR",
        20 => "VMLAUNCH",
        21 => "VMPTRLD",
        22 => "VMPTRST",
        23 => "VMREAD",
        24 => "VMRESUME",
        25 => "VMWRITE",
        26 => "VMXOFF",
        27 => "VMXON",
        28 => "control-register access",
        29 => "MOV DR",
        30 => "I/O instruction",
        31 => "RDMSR",
        32 => "WRMSR",
        33 => "VM-entry failure: invalid guest state",
        34 => "VM-entry failure: MSR loading",
        36 => "MWAIT",
        37 => "monitor trap flag",
        39 => "MONITOR",
        40 => "PAUSE",
        41 => "VM-entry failure: machine-check event",
        43 => "TPR below threshold",
        44 => "APIC access",
        46 => "GDTR/IDTR access",
        47 => "LDTR/TR access",
        48 => "EPT violation",
        49 => "EPT misconfiguration",
        50 => "INVEPT",
        51 => "RDTSCP",
        52 => "VMX-preemption timer expired",
        53 => "INVVPID",
        54 => "WBINVD",
        55 => "XSETBV",
        57 => "RDRAND",
        58 => "INVPCID",
        59 => "VMFUNC",
        _ => "unknown exit reason",
    }
}

/// The name of VM-instruction error `n` (the VM-instruction error field
/// after VMfailValid).
pub fn instruction_error_name(n: u64) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

/// What the exit qualification of a VM-entry failure for invalid guest
/// state (exit reason 33) says.
pub fn entry_failure_qualification(q: u64) -> &'static str {
    match q {
        0 => "a guest-state check failed (no further detail)",
        2 => "loading the PDPTEs failed",
        3 => "an NMI was injected with blocking by STI/MOV SS",
        4 => "the VMCS link pointer is invalid",
        _ => "unknown qualification",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_sdm_tables() {
        assert_eq!(exit_reason_name(reason::EPT_VIOLATION), "EPT violation");
        assert_eq!(exit_reason_name(reason::IO), "I/O instruction");
        assert_eq!(
            exit_reason_name(reason::ENTRY_FAIL_GUEST_STATE),
            "VM-entry failure: invalid guest state"
        );
        assert_eq!(
            instruction_error_name(7),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            instruction_error_name(8),
            "VM entry with invalid host-state field(s)"
        );
        assert_eq!(instruction_error_name(99), "unknown VM-instruction error");
        assert_eq!(
            entry_failure_qualification(4),
            "the VMCS link pointer is invalid"
        );
    }
}
