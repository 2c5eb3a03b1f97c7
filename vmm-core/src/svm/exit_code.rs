//! The #VMEXIT codes (EXITCODE in the VMCB) this backend intercepts, as
//! AMD's APM vol. 2, appendix C names them; every other code is kept as
//! [`ExitCode::Other`].

/// A #VMEXIT's EXITCODE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// VMEXIT_CR0_READ..VMEXIT_CR15_READ (0x00-0x0f): a read of this CR.
    CrRead(u8),
    /// VMEXIT_CR0_WRITE..VMEXIT_CR15_WRITE (0x10-0x1f): a write of this CR.
    CrWrite(u8),
    /// VMEXIT_EXCP0..VMEXIT_EXCP31 (0x40-0x5f): an intercepted exception
    /// with this vector (14, VMEXIT_EXCP_PF, under shadow paging).
    Exception(u8),
    /// VMEXIT_INTR (0x60): a physical interrupt.
    Intr,
    /// VMEXIT_NMI (0x61): a physical NMI.
    Nmi,
    /// VMEXIT_VINTR (0x64): the virtual interrupt was taken (the interrupt
    /// window is open).
    Vintr,
    /// VMEXIT_CPUID (0x72).
    Cpuid,
    /// VMEXIT_IRET (0x74).
    Iret,
    /// VMEXIT_SWINT (0x75): an INTn instruction (intercepted while a
    /// debugger has planted INT3s: QEMU's TCG reports an INT3 so).
    Swint,
    /// VMEXIT_PAUSE (0x77): PAUSE (past the pause filter's count, where
    /// the CPU has one).
    Pause,
    /// VMEXIT_HLT (0x78).
    Hlt,
    /// VMEXIT_INVLPG (0x79).
    Invlpg,
    /// VMEXIT_INVLPGA (0x7a).
    Invlpga,
    /// VMEXIT_IOIO (0x7b): IN, OUT, INS or OUTS.
    Ioio,
    /// VMEXIT_MSR (0x7c): RDMSR or WRMSR (EXITINFO1 bit 0 says which).
    Msr,
    /// VMEXIT_SHUTDOWN (0x7f): a triple fault.
    Shutdown,
    /// VMEXIT_VMRUN (0x80).
    Vmrun,
    /// VMEXIT_VMMCALL (0x81).
    Vmmcall,
    /// VMEXIT_VMLOAD (0x82).
    Vmload,
    /// VMEXIT_VMSAVE (0x83).
    Vmsave,
    /// VMEXIT_STGI (0x84).
    Stgi,
    /// VMEXIT_CLGI (0x85).
    Clgi,
    /// VMEXIT_SKINIT (0x86).
    Skinit,
    /// VMEXIT_XSETBV (0x8d).
    Xsetbv,
    /// VMEXIT_NPF (0x400): a nested page fault.
    Npf,
    /// VMEXIT_INVALID (-1): VMRUN refused the VMCB's state. The low 32
    /// bits alone (0xffff_ffff) are taken as the same code.
    Invalid,
    /// Any other code, as the CPU wrote it.
    Other(u64),
}

impl ExitCode {
    /// The code of a raw EXITCODE.
    pub const fn from_raw(code: u64) -> Self {
        match code {
            0x00..=0x0f => ExitCode::CrRead(code as u8),
            0x10..=0x1f => ExitCode::CrWrite((code - 0x10) as u8),
            0x40..=0x5f => ExitCode::Exception((code - 0x40) as u8),
            0x60 => ExitCode::Intr,
            0x61 => ExitCode::Nmi,
            0x64 => ExitCode::Vintr,
            0x72 => ExitCode::Cpuid,
            0x74 => ExitCode::Iret,
            0x75 => ExitCode::Swint,
            0x77 => ExitCode::Pause,
            0x78 => ExitCode::Hlt,
            0x79 => ExitCode::Invlpg,
            0x7a => ExitCode::Invlpga,
            0x7b => ExitCode::Ioio,
            0x7c => ExitCode::Msr,
            0x7f => ExitCode::Shutdown,
            0x80 => ExitCode::Vmrun,
            0x81 => ExitCode::Vmmcall,
            0x82 => ExitCode::Vmload,
            0x83 => ExitCode::Vmsave,
            0x84 => ExitCode::Stgi,
            0x85 => ExitCode::Clgi,
            0x86 => ExitCode::Skinit,
            0x8d => ExitCode::Xsetbv,
            0x400 => ExitCode::Npf,
            u64::MAX | 0xffff_ffff => ExitCode::Invalid,
            other => ExitCode::Other(other),
        }
    }

    /// The raw EXITCODE (VMEXIT_INVALID as -1).
    pub const fn raw(self) -> u64 {
        match self {
            ExitCode::CrRead(cr) => cr as u64,
            ExitCode::CrWrite(cr) => 0x10 + cr as u64,
            ExitCode::Exception(vector) => 0x40 + vector as u64,
            ExitCode::Intr => 0x60,
            ExitCode::Nmi => 0x61,
            ExitCode::Vintr => 0x64,
            ExitCode::Cpuid => 0x72,
            ExitCode::Iret => 0x74,
            ExitCode::Swint => 0x75,
            ExitCode::Pause => 0x77,
            ExitCode::Hlt => 0x78,
            ExitCode::Invlpg => 0x79,
            ExitCode::Invlpga => 0x7a,
            ExitCode::Ioio => 0x7b,
            ExitCode::Msr => 0x7c,
            ExitCode::Shutdown => 0x7f,
            ExitCode::Vmrun => 0x80,
            ExitCode::Vmmcall => 0x81,
            ExitCode::Vmload => 0x82,
            ExitCode::Vmsave => 0x83,
            ExitCode::Stgi => 0x84,
            ExitCode::Clgi => 0x85,
            ExitCode::Skinit => 0x86,
            ExitCode::Xsetbv => 0x8d,
            ExitCode::Npf => 0x400,
            ExitCode::Invalid => u64::MAX,
            ExitCode::Other(code) => code,
        }
    }

    /// VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI or SKINIT: the SVM
    /// instructions, which the guest does not have.
    pub const fn is_svm_instruction(self) -> bool {
        matches!(
            self,
            ExitCode::Vmrun
                | ExitCode::Vmmcall
                | ExitCode::Vmload
                | ExitCode::Vmsave
                | ExitCode::Stgi
                | ExitCode::Clgi
                | ExitCode::Skinit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_follow_the_apm() {
        for raw in (0..0x500).chain([u64::MAX, 0x1234_5678]) {
            assert_eq!(ExitCode::from_raw(raw).raw(), raw, "{raw:#x}");
        }
        assert_eq!(ExitCode::from_raw(0x4e), ExitCode::Exception(14));
        assert_eq!(ExitCode::from_raw(0x13), ExitCode::CrWrite(3));
        assert_eq!(ExitCode::from_raw(0x7b), ExitCode::Ioio);
        assert_eq!(ExitCode::from_raw(0x400), ExitCode::Npf);
        assert_eq!(ExitCode::from_raw(0xffff_ffff), ExitCode::Invalid);
        assert_eq!(ExitCode::from_raw(0x65), ExitCode::Other(0x65));
        assert!(ExitCode::Vmmcall.is_svm_instruction());
        assert!(!ExitCode::Invlpga.is_svm_instruction());
    }
}
