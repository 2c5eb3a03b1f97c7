//! A vCPU's whole architectural state as versioned plain data, captured
//! and applied through the backend-neutral traits ([`crate::emulator::CpuState`],
//! [`VcpuBackend`], [`ArchState`]) so that SVM, VMX and KVM vCPUs can be
//! saved, and restored on a fresh vCPU of any backend.
//!
//! Held: the 16 general registers, RIP, RFLAGS, the system registers
//! (segments with their hidden parts, LDTR, TR, GDTR, IDTR, CR0, CR2, CR3,
//! CR4, CR8, EFER), DR0-3, DR6, DR7, the whole x87/SSE/AVX image with
//! MXCSR and XCR0, the event state (an injected event not yet delivered,
//! the interrupt shadow, NMI blocking), the MSRs of [`PASS_THROUGH`] the
//! backend holds (SYSENTER, PAT, STAR/LSTAR/CSTAR/SFMASK, FS/GS and kernel
//! GS base), the TSC offset, and the [`MsrFile`]'s emulated MSRs.
//!
//! Everything is applied; every setter checks its values first, so a
//! state the vCPU would refuse at entry is a [`StateError::Invalid`] that
//! names the part. The TSC offset is applied where the backend offsets the
//! TSC (SVM, VMX); elsewhere the guest's TSC goes on from the host's.
//!
//! Not here: SVM's/VMX's nested-paging or shadow state (rebuilt from the
//! memory map and CR3), and the local APIC's TPR where CR8 is the emulated
//! APIC's (it is in the device state).

use super::arch::{
    ArchState, ArchStateError, DebugRegisters, EventState, SystemRegisters, XsaveImage,
};
use super::{MsrFile, MsrFileState, PASS_THROUGH};
use crate::device::save_restore::{self, StateError};
use crate::emulator::SegmentRegister;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Format version of [`VcpuState`].
pub const VCPU_STATE_VERSION: u32 = 2;

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
    /// Segments, descriptor tables, control registers, EFER.
    pub system: SystemRegisters,
    /// DR0-3, DR6, DR7.
    pub debug: DebugRegisters,
    /// The x87/SSE/AVX registers and XCR0.
    pub xsave: XsaveImage,
    /// The pending event, interrupt shadow and NMI blocking.
    pub events: EventState,
    /// The backend's MSRs of [`PASS_THROUGH`] it has, as (index, value).
    pub backend_msrs: Vec<(u32, u64)>,
    /// The TSC offset.
    pub tsc_offset: u64,
    /// The emulated MSRs.
    pub msr_file: MsrFileState,
}

impl VcpuState {
    /// Read `vcpu` and `msrs`. The vCPU is settled first
    /// ([`ArchState::settle`]), so a device read it has not yet handed to
    /// the guest is in the registers.
    pub fn capture<B: ArchState + ?Sized>(
        vcpu: &mut B,
        msrs: &MsrFile,
    ) -> Result<Self, StateError> {
        vcpu.settle()
            .map_err(|_| StateError::Invalid { field: "settle" })?;
        Ok(Self::read(vcpu, msrs))
    }

    /// Read `vcpu` and `msrs` as they are (see [`VcpuState::capture`]).
    pub fn read<B: ArchState + ?Sized>(vcpu: &B, msrs: &MsrFile) -> Self {
        Self {
            gprs: core::array::from_fn(|i| vcpu.gpr(i)),
            rip: vcpu.rip(),
            rflags: vcpu.rflags(),
            system: vcpu.system_registers(),
            debug: vcpu.debug_registers(),
            xsave: vcpu.xsave_image(),
            events: vcpu.event_state(),
            backend_msrs: PASS_THROUGH
                .iter()
                .filter_map(|&m| vcpu.backend_msr(m).map(|v| (m, v)))
                .collect(),
            tsc_offset: vcpu.tsc_offset(),
            msr_file: msrs.state(),
        }
    }

    /// Set everything on `vcpu` and `msrs`. A value the vCPU refuses is
    /// [`StateError::Invalid`] naming the part; parts set before it stay
    /// set, so the caller discards the vCPU then.
    pub fn apply<B: ArchState + ?Sized>(
        &self,
        vcpu: &mut B,
        msrs: &mut MsrFile,
    ) -> Result<(), StateError> {
        let invalid = |field| {
            move |e: ArchStateError| {
                log::warn!("vCPU state refused: {field}: {e}; {self:x?}");
                StateError::Invalid { field }
            }
        };
        if !msrs.set_state(self.msr_file) {
            return Err(StateError::Invalid {
                field: "mtrr default type",
            });
        }
        vcpu.settle().map_err(invalid("settle"))?;
        // RFLAGS first: the event state is checked against it.
        for (i, v) in self.gprs.iter().enumerate() {
            vcpu.set_gpr(i, *v);
        }
        vcpu.set_rflags(self.rflags);
        vcpu.set_system_registers(&self.system)
            .map_err(invalid("system registers"))?;
        for &(msr, value) in &self.backend_msrs {
            if !PASS_THROUGH.contains(&msr) || !vcpu.set_backend_msr(msr, value) {
                return Err(StateError::Invalid { field: "msr" });
            }
        }
        vcpu.set_debug_registers(&self.debug)
            .map_err(invalid("debug registers"))?;
        vcpu.set_xsave_image(&self.xsave)
            .map_err(invalid("extended state"))?;
        // RIP before the event state: moving RIP ends an interrupt shadow.
        vcpu.set_rip(self.rip);
        vcpu.set_event_state(&self.events)
            .map_err(invalid("event state"))?;
        vcpu.set_tsc_offset(self.tsc_offset);
        Ok(())
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

/// Move the whole state of vCPU `from` to vCPU `to` (of any backend,
/// typically a fresh one that replaces `from`), through the encoded form a
/// snapshot stores: capture, encode, decode, scramble `to`'s general
/// registers (so nothing it held before survives by accident), apply.
/// `msrs` is the MSR file both share. The state round trip of the hosts'
/// `state_roundtrip` debug option; on an error `to` is unusable.
pub fn move_state<A: ArchState + ?Sized, B: ArchState + ?Sized>(
    from: &mut A,
    to: &mut B,
    msrs: &mut MsrFile,
) -> Result<(), StateError> {
    let state = VcpuState::capture(from, msrs)?;
    let state = VcpuState::from_bytes(VCPU_STATE_VERSION, &state.to_bytes()?)?;
    for i in 0..16 {
        to.set_gpr(i, 0xdead_0000_0000_0000 | i as u64);
    }
    to.set_rip(0xdead_beef);
    state.apply(to, msrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{CpuState, DescriptorTable, RegisterFile, Segment};
    use crate::test_host::ReplayVcpu;
    use crate::vcpu::{EventKind, InterruptShadow, PendingEvent};

    /// A vCPU in 64-bit mode with every part of its state away from the
    /// power-on values.
    fn busy_vcpu() -> ReplayVcpu {
        let mut regs = RegisterFile::long_mode(0x1000);
        regs.gdtr = DescriptorTable {
            base: 0xffff_8000_0010_0000,
            limit: 0x7f,
        };
        let mut a = ReplayVcpu::new(regs, Vec::new());
        for i in 0..16 {
            a.set_gpr(i, 0x1111 * i as u64 + 7);
            a.set_xmm(i, u128::from(i as u64) << 70 | 3);
            a.regs.ymm_upper[i] = u128::from(i as u64 + 1) << 90;
        }
        a.set_rip(0xffff_ffff_8100_0000);
        a.set_rflags(0x246);
        a.arch.ldtr = SegmentRegister::new(0x18, 0xffff_8000_0020_0000, 0x27, 0x82);
        a.arch.tr = SegmentRegister::new(0x40, 0xffff_8000_0030_0000, 0x67, 0x8b);
        a.arch.idtr = DescriptorTable {
            base: 0xffff_ffff_ff57_b000,
            limit: 0xfff,
        };
        a.arch.cr2 = 0x7fff_dead_b000;
        a.arch.cr8 = 0xa;
        a.arch.debug = DebugRegisters {
            dr: [0x1000, 0x2000, 0xffff_8000_0000_0000, 0x4000],
            dr6: 0xffff_4ff1,
            dr7: 0x0f0f_0403,
        };
        a.arch.events = EventState {
            pending: Some(PendingEvent {
                kind: EventKind::Exception,
                vector: 13,
                error_code: Some(0x18),
                instruction_length: 0,
            }),
            interrupt_shadow: InterruptShadow::Sti,
            nmi_blocked: true,
            single_step_pending: false,
        };
        // x87: FCW, FSW, a register's bytes; MXCSR with DAZ.
        a.arch.xsave[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
        a.arch.xsave[2..4].copy_from_slice(&0x3800u16.to_le_bytes());
        a.arch.xsave[32..42].copy_from_slice(&[9; 10]);
        a.arch.xsave[24..28].copy_from_slice(&0x1fc0u32.to_le_bytes());
        a
    }

    #[test]
    fn capture_apply_capture_gives_the_same_state() {
        let mut a = busy_vcpu();
        let msrs = MsrFile::with_wall_clock(1_700_000_000);
        let state = VcpuState::capture(&mut a, &msrs).unwrap();
        assert_eq!(state.system.cr2, 0x7fff_dead_b000);
        assert_eq!(state.system.ldtr.selector, 0x18);
        assert_eq!(state.debug.dr[2], 0xffff_8000_0000_0000);
        assert_eq!(state.xsave.mxcsr(), 0x1fc0);
        assert_eq!(state.xsave.xcr0, 7);
        let bytes = state.to_bytes().unwrap();
        let back = VcpuState::from_bytes(VCPU_STATE_VERSION, &bytes).unwrap();
        assert_eq!(back, state);
        // A fresh vCPU in its power-on state takes all of it.
        let mut b = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
        let mut msrs_b = MsrFile::default();
        back.apply(&mut b, &mut msrs_b).unwrap();
        assert_eq!(VcpuState::capture(&mut b, &msrs_b).unwrap(), state);
        assert_eq!(b.gpr(3), 0x1111 * 3 + 7);
        assert_eq!(b.xmm(5), 5u128 << 70 | 3);
        assert_eq!(b.regs.ymm_upper[5], 6u128 << 90);
        assert_eq!(b.segment(Segment::Cs), a.segment(Segment::Cs));
        let arch = |v: &ReplayVcpu| {
            let t = &v.arch;
            (t.ldtr, t.tr, t.idtr, t.cr2, t.cr8, t.debug, t.events)
        };
        assert_eq!(arch(&b), arch(&a));
        assert_eq!(b.arch.xsave[32..42], [9; 10]);
        // Hostile bytes: errors, never panics.
        for n in 0..bytes.len() {
            assert!(VcpuState::from_bytes(VCPU_STATE_VERSION, &bytes[..n]).is_err());
        }
        assert!(VcpuState::from_bytes(1, &bytes).is_err());
    }

    #[test]
    fn invalid_states_are_refused_naming_the_part() {
        let mut a = busy_vcpu();
        let good = VcpuState::capture(&mut a, &MsrFile::default()).unwrap();
        type Breaker = fn(&mut VcpuState);
        let cases: [(&str, Breaker); 17] = [
            ("system registers", |s| s.system.cr0 &= !1),
            ("system registers", |s| s.system.cr0 |= 1 << 32),
            ("system registers", |s| {
                s.system.cr0 = (s.system.cr0 & !(1 << 30)) | 1 << 29
            }),
            ("system registers", |s| s.system.efer &= !(1 << 10)),
            ("system registers", |s| s.system.cr4 &= !(1 << 5)),
            ("system registers", |s| s.system.cr8 = 16),
            ("system registers", |s| s.system.cr3 = 1 << 50),
            ("system registers", |s| s.system.tr.attributes = 0x93),
            ("system registers", |s| {
                s.system.segments[1].attributes |= 1 << 10
            }),
            ("system registers", |s| s.system.idtr.base = 1 << 50),
            ("debug registers", |s| s.debug.dr7 |= 1 << 40),
            ("debug registers", |s| s.debug.dr[0] = 1 << 50),
            ("extended state", |s| s.xsave.xcr0 = 6),
            ("extended state", |s| s.xsave.area.truncate(600)),
            ("extended state", |s| s.xsave.area[26] = 1),
            ("event state", |s| {
                s.events.pending.as_mut().unwrap().vector = 40;
            }),
            ("event state", |s| s.rflags &= !(1 << 9)),
        ];
        for (field, breaker) in cases {
            let mut bad = good.clone();
            breaker(&mut bad);
            let mut b = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
            assert_eq!(
                bad.apply(&mut b, &mut MsrFile::default()),
                Err(StateError::Invalid { field }),
                "{bad:?}"
            );
        }
        // An error code in real mode, an interrupt while IF is clear or in
        // a shadow, an NMI while NMIs are blocked, INT n without a length.
        let real_cr0 = 0x6000_0010;
        let refused = [
            (
                EventKind::Exception,
                13,
                Some(0),
                0,
                InterruptShadow::None,
                false,
                real_cr0,
            ),
            (
                EventKind::ExternalInterrupt,
                0x20,
                None,
                0,
                InterruptShadow::Sti,
                false,
                0x11,
            ),
            (
                EventKind::Nmi,
                2,
                None,
                0,
                InterruptShadow::None,
                true,
                0x11,
            ),
            (
                EventKind::SoftwareInterrupt,
                0x80,
                None,
                0,
                InterruptShadow::None,
                false,
                0x11,
            ),
            (
                EventKind::SoftwareException,
                13,
                None,
                1,
                InterruptShadow::None,
                false,
                0x11,
            ),
        ];
        for (kind, vector, error_code, len, shadow, nmi_blocked, cr0) in refused {
            let e = EventState {
                pending: Some(PendingEvent {
                    kind,
                    vector,
                    error_code,
                    instruction_length: len,
                }),
                interrupt_shadow: shadow,
                nmi_blocked,
                single_step_pending: false,
            };
            assert!(
                crate::vcpu::check_event_state(&e, 0x202, cr0).is_err(),
                "{e:?}"
            );
        }
        // A refused setter changes nothing.
        let before = VcpuState::read(&a, &MsrFile::default());
        let mut sys = before.system;
        sys.cr8 = 99;
        assert!(a.set_system_registers(&sys).is_err());
        let mut x = before.xsave.clone();
        x.xcr0 = 0;
        assert!(a.set_xsave_image(&x).is_err());
        assert_eq!(VcpuState::read(&a, &MsrFile::default()), before);
    }
}
