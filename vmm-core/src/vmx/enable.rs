//! Switching VMX on for a CPU: CPUID and IA32_FEATURE_CONTROL, the
//! capability MSRs and the controls derived from them, VMXON.

use super::capabilities::{self, CapabilityMsrs, Controls, CR0_PE, CR0_PG};
use super::fields::msr;
use super::{instructions, phys_of, VmxError};
use crate::host::{Host, HostMemory};
use alloc::boxed::Box;

/// IA32_FEATURE_CONTROL: lock, VMXON outside SMX.
const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
const FEATURE_CONTROL_VMXON: u64 = 1 << 2;

/// VMX switched on for the current CPU. Keeps the VMXON region alive.
pub struct Vmx {
    _vmxon: Box<dyn HostMemory>,
    pub(super) caps: CapabilityMsrs,
    pub(super) controls: Controls,
    pub(super) xstate: crate::xstate::XstateModel,
}

impl Vmx {
    /// Check the CPU, read its capabilities, set the fixed CR0/CR4 bits and
    /// execute VMXON. Ring 0 only; call once per CPU.
    pub fn enable(host: &dyn Host) -> Result<Self, VmxError> {
        let leaf1 = crate::host_cpu::cpuid(1);
        if leaf1.ecx & (1 << 5) == 0 {
            return Err(VmxError::NotSupported);
        }
        // SAFETY: CPUID reported VMX, so these MSRs exist; reading them has
        // no side effect. IA32_FEATURE_CONTROL is written only while
        // unlocked, to allow VMXON and lock it as firmware would.
        let caps = unsafe {
            let fc = instructions::rdmsr(msr::FEATURE_CONTROL);
            if fc & FEATURE_CONTROL_LOCK == 0 {
                instructions::wrmsr(
                    msr::FEATURE_CONTROL,
                    fc | FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMXON,
                );
            } else if fc & FEATURE_CONTROL_VMXON == 0 {
                return Err(VmxError::DisabledByFirmware);
            }
            read_capabilities()
        };
        let controls = Controls::derive(&caps).map_err(VmxError::Missing)?;
        let mut region = host.alloc_memory(4096, 4096).map_err(VmxError::Host)?;
        region.as_mut_slice()[..4].copy_from_slice(&caps.revision().to_le_bytes());
        let pa = phys_of(region.as_ref())?;
        // Guests' x87/SSE/AVX state and XCR0 are saved and loaded around
        // every entry (XSETBV exits unconditionally), which needs
        // CR4.OSFXSR and CR4.OSXSAVE on the host.
        crate::xstate::prepare_host_cpu();
        // SAFETY: the bits set are VMX's fixed-1 bits (NE, VMXE), all
        // harmless to the host; VMXON gets a region with the revision ID
        // that this object keeps for as long as VMX is used.
        unsafe {
            instructions::set_cr0_cr4_bits(caps.cr0_fixed0 & !(CR0_PE | CR0_PG), caps.cr4_fixed0);
            instructions::vmxon(pa).map_err(|_| VmxError::VmxonFailed)?;
        }
        Ok(Self {
            _vmxon: region,
            caps,
            controls,
            xstate: crate::xstate::XstateModel::detect(),
        })
    }

    /// The capability MSRs read at enable time.
    pub fn capabilities(&self) -> &CapabilityMsrs {
        &self.caps
    }

    /// The controls every VMCS gets.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// What guests may keep in extended state on this CPU.
    pub fn xstate_model(&self) -> &crate::xstate::XstateModel {
        &self.xstate
    }
}

/// Read the capability MSRs (TRUE_* ones where IA32_VMX_BASIC says so).
///
/// # Safety
///
/// Ring 0 on a CPU with VMX.
unsafe fn read_capabilities() -> CapabilityMsrs {
    // SAFETY: guaranteed by the caller; the secondary and EPT MSRs are read
    // only when the CPU reports them.
    unsafe {
        let basic = instructions::rdmsr(msr::VMX_BASIC);
        let true_ctls = basic & CapabilityMsrs::BASIC_TRUE_CONTROLS != 0;
        let pick = |plain, tru| instructions::rdmsr(if true_ctls { tru } else { plain });
        let proc = pick(msr::VMX_PROCBASED, msr::VMX_TRUE_PROCBASED);
        let has_proc2 = (proc >> 32) & u64::from(capabilities::proc::SECONDARY_CONTROLS) != 0;
        let proc2 = if has_proc2 {
            instructions::rdmsr(msr::VMX_PROCBASED2)
        } else {
            0
        };
        let ept_or_vpid =
            u64::from(capabilities::proc2::ENABLE_EPT | capabilities::proc2::ENABLE_VPID) << 32;
        let ept_vpid = if proc2 & ept_or_vpid != 0 {
            instructions::rdmsr(msr::VMX_EPT_VPID_CAP)
        } else {
            0
        };
        CapabilityMsrs {
            basic,
            pin: pick(msr::VMX_PINBASED, msr::VMX_TRUE_PINBASED),
            proc,
            exit: pick(msr::VMX_EXIT, msr::VMX_TRUE_EXIT),
            entry: pick(msr::VMX_ENTRY, msr::VMX_TRUE_ENTRY),
            proc2,
            ept_vpid,
            cr0_fixed0: instructions::rdmsr(msr::VMX_CR0_FIXED0),
            cr0_fixed1: instructions::rdmsr(msr::VMX_CR0_FIXED1),
            cr4_fixed0: instructions::rdmsr(msr::VMX_CR4_FIXED0),
            cr4_fixed1: instructions::rdmsr(msr::VMX_CR4_FIXED1),
            misc: instructions::rdmsr(msr::VMX_MISC),
        }
    }
}
