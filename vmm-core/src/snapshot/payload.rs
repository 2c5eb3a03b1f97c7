//! The decoded forms of the vCPU and memory-map sections.

use super::error::SnapshotError;
use super::section::SectionKind;
use crate::device::save_restore;
use crate::memory::{GuestMemory, RegionKind};
use crate::vcpu::{ArchState, MsrFile, VcpuState, VCPU_STATE_VERSION};
use crate::vm::{VcpuExitState, Vm};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// One vCPU as the vCPU section of a version-3 file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuRecord {
    /// The [`crate::vcpu::VcpuState`] format version of `state`.
    pub version: u32,
    /// The encoded [`crate::vcpu::VcpuState`].
    pub state: Vec<u8>,
    /// Halted: where the vCPU resumes once woken and whether its HLT ran
    /// with RFLAGS.TF (held by the VM's exit loop, not the vCPU).
    pub halted: Option<(u64, bool)>,
    /// A reset another vCPU carried out is still to be done on this one:
    /// the TSC offset it takes then (held by the VM's exit loop).
    pub reset: Option<u64>,
}

/// One vCPU as a version-2 file keeps it (no pending reset; one vCPU).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuRecordV2 {
    /// The [`crate::vcpu::VcpuState`] format version of `state`.
    pub version: u32,
    /// The encoded [`crate::vcpu::VcpuState`].
    pub state: Vec<u8>,
    /// Halted, as in [`VcpuRecord::halted`].
    pub halted: Option<(u64, bool)>,
}

/// One vCPU's saved state, decoded: its [`VcpuState`] and what the VM's
/// exit loop holds of it.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedVcpu {
    /// Registers, FPU/XSAVE, MSRs, pending events, TSC offset.
    pub state: VcpuState,
    /// Halt and pending-reset state ([`Vm::vcpu_exit_state`]).
    pub exit: VcpuExitState,
}

/// Capture every vCPU of `vm` (`vcpus[i]` with `msrs[i]` is vCPU `i`):
/// settled, read, with the exit loop's state of each. `vcpus` and `msrs`
/// must have one entry per vCPU of `vm`.
pub fn capture_vcpus(
    vm: &Vm,
    vcpus: &mut [&mut dyn ArchState],
    msrs: &[MsrFile],
) -> Result<Vec<SavedVcpu>, SnapshotError> {
    check_count(vm.vcpu_count(), vcpus.len(), msrs.len())?;
    let mut saved = Vec::with_capacity(vcpus.len());
    for (i, (vcpu, msrs)) in vcpus.iter_mut().zip(msrs).enumerate() {
        saved.push(SavedVcpu {
            state: VcpuState::capture(&mut **vcpu, msrs)?,
            exit: vm.vcpu_exit_state(i).unwrap_or_default(),
        });
    }
    Ok(saved)
}

/// The vCPU count a caller gave must be the VM's, with an MSR file each.
pub(crate) fn check_count(vm: usize, vcpus: usize, msrs: usize) -> Result<(), SnapshotError> {
    if vcpus != vm || msrs != vm {
        return Err(SnapshotError::VcpuCount {
            vm,
            given: vcpus.min(msrs),
        });
    }
    Ok(())
}

/// The vCPU section's payload (format [`super::FORMAT_VERSION`]) for
/// `vcpus`.
pub fn encode_vcpus(vcpus: &[SavedVcpu]) -> Result<Vec<u8>, SnapshotError> {
    let mut records = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        records.push(VcpuRecord {
            version: VCPU_STATE_VERSION,
            state: v.state.to_bytes()?,
            halted: v.exit.halted,
            reset: v.exit.reset,
        });
    }
    Ok(save_restore::encode(&records)?)
}

/// Decode a vCPU section's payload written in file format `format` (2 or
/// 3), checking every vCPU state.
pub fn decode_vcpus(format: u32, payload: &[u8]) -> Result<Vec<SavedVcpu>, SnapshotError> {
    let bad = SnapshotError::Malformed {
        section: SectionKind::Vcpus,
        what: "does not decode",
    };
    let records: Vec<VcpuRecord> = if format == 2 {
        let old: Vec<VcpuRecordV2> = save_restore::decode(payload).map_err(|_| bad.clone())?;
        old.into_iter()
            .map(|r| VcpuRecord {
                version: r.version,
                state: r.state,
                halted: r.halted,
                reset: None,
            })
            .collect()
    } else {
        save_restore::decode(payload).map_err(|_| bad)?
    };
    let mut vcpus = Vec::with_capacity(records.len());
    for r in records {
        vcpus.push(SavedVcpu {
            state: VcpuState::from_bytes(r.version, &r.state)?,
            exit: VcpuExitState {
                halted: r.halted,
                reset: r.reset,
            },
        });
    }
    Ok(vcpus)
}

/// One region of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// 0 RAM, 1 read-only, 2 split, 3 MMIO.
    pub kind: u8,
}

/// The map of `memory` as the memory-map section keeps it.
pub fn memory_map(memory: &GuestMemory) -> Vec<MapEntry> {
    memory
        .regions()
        .map(|r| MapEntry {
            start: r.start,
            len: r.len,
            kind: match r.kind {
                RegionKind::Ram => 0,
                RegionKind::ReadOnly => 1,
                RegionKind::Split => 2,
                RegionKind::Mmio | RegionKind::Unmapped => 3,
            },
        })
        .collect()
}
