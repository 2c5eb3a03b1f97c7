//! A vCPU's architectural state as versioned plain data, captured and
//! applied through the backend-neutral traits ([`crate::emulator::CpuState`],
//! [`VcpuBackend`]) so that SVM, VMX and KVM vCPUs can be saved.
//!
//! Captured: the 16 general registers, RIP, RFLAGS, the six segment
//! registers with their hidden parts (base, limit, attributes), CR0, CR3,
//! CR4 and EFER, XMM0-15 and the upper YMM halves, MXCSR, XCR0 and PKRU
//! where the backend keeps extended state, the MSRs of [`PASS_THROUGH`]
//! the backend holds (SYSENTER, PAT, STAR/LSTAR/CSTAR/SFMASK, FS/GS and
//! kernel GS base), the TSC offset, and the [`MsrFile`]'s emulated MSRs.
//!
//! Applied: what the traits can set: general registers, RIP, RFLAGS, XMM
//! and YMM, EFER and the backend MSRs (`set_backend_msr`, which checks
//! them), the TSC offset, the `MsrFile`. The traits have no setter for
//! segments and control registers; [`VcpuState::apply`] reports them in
//! [`NotApplied`] when they differ from the vCPU's, for the backend-specific
//! code that writes the VMCB, VMCS or KVM_SET_SREGS to finish.
//!
//! Backend-specific and not here: CR2, CR8/TPR (the local APIC's TPR is in
//! its device state), GDTR/IDTR/LDTR/TR, DR0-7, the x87 registers and the
//! XSAVE area beyond XMM/YMM (MXCSR is captured, not set), the pending
//! event and interrupt shadow, NMI blocking (the backends expose only
//! `interrupts_open`/`nmis_open`), and SVM's/VMX's nested-paging or shadow
//! state (rebuilt from the memory map and CR3).

use super::{MsrFile, MsrFileState, VcpuBackend, PASS_THROUGH};
use crate::device::save_restore::{self, StateError};
use crate::emulator::{Segment, SegmentRegister};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Format version of [`VcpuState`].
pub const VCPU_STATE_VERSION: u32 = 1;

/// One segment register, hidden part included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Byte-granular limit.
    pub limit: u32,
    /// Attributes (VMCB layout).
    pub attributes: u16,
}

impl From<SegmentRegister> for SegmentState {
    fn from(s: SegmentRegister) -> Self {
        Self {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            attributes: s.attributes,
        }
    }
}

/// A vCPU's saved state (see the module documentation for what it holds).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// RAX..R15 in encoding order.
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub segments: [SegmentState; 6],
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// XMM0-15.
    pub xmm: [u128; 16],
    /// Bits 255:128 of YMM0-15, where the vCPU has AVX.
    pub ymm_upper: Option<[u128; 16]>,
    /// XCR0, where the backend keeps extended state.
    pub xcr0: Option<u64>,
    /// MXCSR, where the backend keeps extended state.
    pub mxcsr: Option<u32>,
    /// PKRU.
    pub pkru: u32,
    /// The backend's MSRs of [`PASS_THROUGH`] it has, as (index, value).
    pub backend_msrs: Vec<(u32, u64)>,
    /// The TSC offset.
    pub tsc_offset: u64,
    /// The emulated MSRs.
    pub msr_file: MsrFileState,
}

/// What [`VcpuState::apply`] could not set through the traits because the
/// vCPU's value differs: the backend-specific restore sets these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotApplied {
    /// Some segment register differs.
    pub segments: bool,
    /// CR0, CR3 or CR4 differs.
    pub control: bool,
    /// The TSC offset differs and the backend cannot offset.
    pub tsc_offset: bool,
}

impl VcpuState {
    /// Read `vcpu` and `msrs`.
    pub fn capture<B: VcpuBackend>(vcpu: &B, msrs: &MsrFile) -> Self {
        let control = vcpu.control();
        let ymm: Option<Vec<u128>> = (0..16).map(|i| vcpu.ymm_upper(i)).collect();
        let ext = vcpu.extended_state();
        Self {
            gprs: core::array::from_fn(|i| vcpu.gpr(i)),
            rip: vcpu.rip(),
            rflags: vcpu.rflags(),
            segments: Segment::ALL.map(|s| vcpu.segment(s).into()),
            cr0: control.cr0,
            cr3: control.cr3,
            cr4: control.cr4,
            efer: control.efer,
            xmm: core::array::from_fn(|i| vcpu.xmm(i)),
            ymm_upper: ymm.and_then(|v| v.try_into().ok()),
            xcr0: vcpu.xcr0().or(ext.map(|e| e.xcr0())),
            mxcsr: ext.map(|e| e.mxcsr()),
            pkru: vcpu.pkru(),
            backend_msrs: PASS_THROUGH
                .iter()
                .filter_map(|&m| vcpu.backend_msr(m).map(|v| (m, v)))
                .collect(),
            tsc_offset: vcpu.tsc_offset(),
            msr_file: msrs.state(),
        }
    }

    /// Set what the traits can set (see the module documentation); report
    /// what differs and they cannot. A value the backend refuses (EFER, an
    /// MSR) is [`StateError::Invalid`]; registers set before it stay set,
    /// so the caller discards the vCPU then.
    pub fn apply<B: VcpuBackend>(
        &self,
        vcpu: &mut B,
        msrs: &mut MsrFile,
    ) -> Result<NotApplied, StateError> {
        if !msrs.set_state(self.msr_file) {
            return Err(StateError::Invalid {
                field: "mtrr default type",
            });
        }
        if !vcpu.set_backend_msr(super::MSR_EFER, self.efer) && vcpu.control().efer != self.efer {
            return Err(StateError::Invalid { field: "efer" });
        }
        for &(msr, value) in &self.backend_msrs {
            if !PASS_THROUGH.contains(&msr) || !vcpu.set_backend_msr(msr, value) {
                return Err(StateError::Invalid { field: "msr" });
            }
        }
        for (i, v) in self.gprs.iter().enumerate() {
            vcpu.set_gpr(i, *v);
        }
        vcpu.set_rip(self.rip);
        vcpu.set_rflags(self.rflags);
        for (i, v) in self.xmm.iter().enumerate() {
            vcpu.set_xmm(i, *v);
        }
        if let Some(ymm) = &self.ymm_upper {
            for (i, v) in ymm.iter().enumerate() {
                vcpu.set_ymm_upper(i, *v);
            }
        }
        let tsc_offset =
            !vcpu.set_tsc_offset(self.tsc_offset) && vcpu.tsc_offset() != self.tsc_offset;
        let control = vcpu.control();
        Ok(NotApplied {
            segments: Segment::ALL
                .iter()
                .zip(&self.segments)
                .any(|(s, saved)| SegmentState::from(vcpu.segment(*s)) != *saved),
            control: (control.cr0, control.cr3, control.cr4) != (self.cr0, self.cr3, self.cr4),
            tsc_offset,
        })
    }

    /// Encode, for a snapshot's vCPU section (version
    /// [`VCPU_STATE_VERSION`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, StateError> {
        save_restore::encode(self)
    }

    /// Decode what [`VcpuState::to_bytes`] wrote in format `version`.
    pub fn from_bytes(version: u32, bytes: &[u8]) -> Result<Self, StateError> {
        save_restore::decode_version(version, VCPU_STATE_VERSION, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{CpuState, RegisterFile};
    use crate::test_host::ReplayVcpu;

    #[test]
    fn capture_apply_round_trip_through_the_traits() {
        let mut a = ReplayVcpu::new(RegisterFile::default(), Vec::new());
        for i in 0..16 {
            a.set_gpr(i, 0x1111 * i as u64 + 7);
            a.set_xmm(i, u128::from(i as u64) << 70 | 3);
        }
        a.set_rip(0xfff0);
        a.set_rflags(0x246);
        let msrs = MsrFile::with_wall_clock(1_700_000_000);
        let state = VcpuState::capture(&a, &msrs);
        let bytes = state.to_bytes().unwrap();
        let back = VcpuState::from_bytes(VCPU_STATE_VERSION, &bytes).unwrap();
        assert_eq!(back, state);
        let mut b = ReplayVcpu::new(RegisterFile::default(), Vec::new());
        let mut msrs_b = MsrFile::default();
        let left = back.apply(&mut b, &mut msrs_b).unwrap();
        assert_eq!(VcpuState::capture(&b, &msrs_b), state);
        assert!(!left.control);
        assert_eq!(b.gpr(3), 0x1111 * 3 + 7);
        assert_eq!(b.xmm(5), 5u128 << 70 | 3);
        // Hostile bytes: errors, never panics.
        for n in 0..bytes.len() {
            assert!(VcpuState::from_bytes(VCPU_STATE_VERSION, &bytes[..n]).is_err());
        }
        assert!(VcpuState::from_bytes(2, &bytes).is_err());
        let mut bad = back.clone();
        bad.msr_file.mtrr_def_type = 1 << 20;
        assert!(bad.apply(&mut b, &mut msrs_b).is_err());
    }
}
