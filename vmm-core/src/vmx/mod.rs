//! Intel VMX: enabling it on a CPU, and a vCPU backend with EPT and
//! unrestricted guest.
//!
//! [`Vmx::enable`] checks CPUID and IA32_FEATURE_CONTROL, reads the
//! capability MSRs and derives the controls from them
//! ([`capabilities::Controls::derive`]: never a hard-coded bit the CPU may
//! not allow), sets CR0/CR4 to VMX's fixed bits and executes VMXON.
//! [`VmxVcpu`] owns one VMCS, starting in the reset state (CS:IP =
//! F000:FFF0, real mode run natively thanks to unrestricted guest), EPT
//! tables built by the same [`NestedTables`] builder as AMD's NPT (rebuilt
//! when the memory map changes), a VPID, I/O bitmaps that make every port
//! exit except the VM's pass-through ports ([`Vm::direct_ports`]), and an
//! MSR bitmap that lets through only MSRs the VMCS or its MSR areas switch.
//!
//! Exits are decoded into [`Exit`]s for the shared exit loop
//! ([`crate::vcpu::run`]); the next RIP comes from the VM-exit instruction
//! length. Control-register accesses (to the bits VMX fixes, PG and PAE)
//! and XSETBV are handled here, since they concern how this backend keeps
//! the guest's view apart from what the CPU runs with.
//!
//! VMCS fields are read and written with VMREAD/VMWRITE, so every access
//! first makes this vCPU's VMCS current (one VMPTRLD when another vCPU ran
//! on this CPU since).
//!
//! A failed VMLAUNCH/VMRESUME names its VM-instruction error and the
//! fields it concerns; a VM-entry failure exit names the exit reason and
//! qualification and the first guest-state rule the VMCS breaks
//! ([`entry_checks`]), with the guest state, in the VM's stop reason.
//!
//! One concept per module: `enable` (VMXON and the capabilities),
//! `vcpu` (the [`VmxVcpu`] and its VMCS), `guest_state` (registers and
//! segments), `control_registers` (CR0/CR3/CR4/CR8 and EFER), `events`
//! (injection and interruptibility), `ept` (EPT and TLB flushes), `bitmaps`
//! (I/O and MSR bitmaps), `exits` (decoding exits), `entry_failure`
//! (explaining a failed entry) and `backend` (the [`VcpuBackend`] impl).
//!
//! [`VcpuBackend`]: crate::vcpu::VcpuBackend
//! [`NestedTables`]: crate::nested_paging::NestedTables
//! [`Vm::direct_ports`]: crate::vm::Vm::direct_ports
//! [`Exit`]: crate::vcpu::Exit

mod backend;
mod bitmaps;
pub mod capabilities;
mod control_registers;
mod enable;
pub mod entry_checks;
mod entry_failure;
mod ept;
mod events;
pub mod exit_reason;
mod exits;
pub mod fields;
mod guest_state;
mod host_debug;
mod instructions;
mod state;
mod vcpu;

pub use backend::VmxEntry;
pub use capabilities::{CapabilityMsrs, Controls, MissingCapability, PauseExiting};
pub use enable::Vmx;
pub use exits::io_exit;
pub use guest_state::{access_rights_from_attributes, attributes_from_access_rights};
pub use instructions::VmxGprs;
pub use vcpu::VmxVcpu;

use crate::host::{HostError, HostMemory};
use core::fmt;
use exit_reason::instruction_error_name;

/// Why VMX cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// CPUID says the CPU has no VMX.
    NotSupported,
    /// Firmware locked IA32_FEATURE_CONTROL without allowing VMXON.
    DisabledByFirmware,
    /// The CPU lacks a capability this backend needs.
    Missing(MissingCapability),
    /// VMXON failed.
    VmxonFailed,
    /// The host runs without a task register, which VM exits need.
    NoHostTaskRegister,
    /// A VMX instruction failed while setting up a VMCS: the instruction
    /// and the VM-instruction error number.
    Instruction {
        /// What was executed.
        what: &'static str,
        /// The VM-instruction error (0 for VMfailInvalid).
        error: u64,
    },
    /// The host refused memory.
    Host(HostError),
    /// A host page has no physical address.
    NoHostPhys,
}

impl core::error::Error for VmxError {}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxError::NotSupported => write!(f, "the CPU has no VMX"),
            VmxError::DisabledByFirmware => {
                write!(
                    f,
                    "VMX is disabled by firmware (IA32_FEATURE_CONTROL locked)"
                )
            }
            VmxError::Missing(m) => write!(f, "{m}"),
            VmxError::VmxonFailed => write!(f, "VMXON failed"),
            VmxError::NoHostTaskRegister => {
                write!(f, "the host has no task register (VM exits load one)")
            }
            VmxError::Instruction { what, error } => write!(
                f,
                "{what} failed: VM-instruction error {error} ({})",
                instruction_error_name(*error)
            ),
            VmxError::Host(e) => write!(f, "{e}"),
            VmxError::NoHostPhys => write!(f, "host memory without a physical address"),
        }
    }
}

pub(super) fn phys_of(m: &dyn HostMemory) -> Result<u64, VmxError> {
    m.host_phys(0).map(|p| p.0).ok_or(VmxError::NoHostPhys)
}
