//! The VMX vCPU and its VMCS: creating it with the host state and
//! controls, making it current, VMREAD/VMWRITE, VMCLEAR on drop.

use super::bitmaps::{fill_io_bitmaps, intercept_msr};
use super::capabilities::{Controls, FixedBits, CR0_PG, CR4_PAE};
use super::fields::{self, msr};
use super::instructions::{self, VmFail, VmxGprs};
use super::{phys_of, Vmx, VmxError};
use crate::host::HostMemory;
use crate::nested_paging::{Ept, NestedTables};
use crate::vcpu::VcpuBackend;
use crate::vm::Vm;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

/// The VMCS that is current on this CPU (the bare-metal host runs every
/// vCPU on one CPU), so field accesses VMPTRLD only when it changes.
static CURRENT_VMCS: AtomicU64 = AtomicU64::new(u64::MAX);

/// MSRs the VMCS does not switch but the guest owns: loaded on entry and
/// stored on exit through one MSR area (the host does not use them).
pub(super) const SWITCHED_MSRS: [u32; 5] = [
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
];

/// One vCPU on VMX with EPT and unrestricted guest.
pub struct VmxVcpu {
    pub(super) vmcs: Box<dyn HostMemory>,
    pub(super) vmcs_pa: u64,
    pub(super) gprs: VmxGprs,
    pub(super) launched: bool,
    pub(super) ept: Option<NestedTables<Ept>>,
    pub(super) io_bitmaps: Box<dyn HostMemory>,
    pub(super) io_generation: Option<u64>,
    pub(super) _msr_bitmap: Box<dyn HostMemory>,
    pub(super) msr_area: Box<dyn HostMemory>,
    pub(super) controls: Controls,
    pub(super) cr0: FixedBits,
    pub(super) cr4: FixedBits,
    pub(super) ept_caps: u64,
    pub(super) vpid: u16,
    /// The guest's x87/SSE/AVX registers and XCR0.
    pub(super) xstate: crate::xstate::ExtendedState,
    /// The guest's DR0-DR3 and DR6 (VM entry does not switch them).
    pub(super) debug: crate::debug_registers::GuestDebugRegisters,
    /// The PDPTE fields must be reloaded from guest memory before the next
    /// entry (the paging registers were restored).
    pub(super) pdptes_stale: bool,
    /// The host's debugger (a gdb stub), when it debugs this guest.
    pub(super) host_debug: Option<crate::host_debug::HostDebug>,
    /// Where the guest stopped for it, not yet taken.
    pub(super) debug_stop: Option<crate::host_debug::DebugStop>,
    /// While it steps the guest: the RIP after the last exit (an
    /// instruction the exit loop completed there is the step).
    pub(super) step_exit_rip: Option<u64>,
    /// The guest page-table walks of earlier emulations (checked
    /// against the guest's tables at every use).
    pub(super) translation_cache: crate::emulator::TranslationCache,
    /// The instructions earlier emulations decoded (reused only for the
    /// same bytes at the same RIP).
    pub(super) decode_cache: crate::emulator::DecodeCache,
}

impl VmxVcpu {
    /// A vCPU of `vm` in the reset state. `vpid` must be non-zero and
    /// different for every vCPU that runs on this CPU.
    pub fn new(vmx: &Vmx, vm: &Vm, vpid: u16) -> Result<Self, VmxError> {
        let host = vm.host();
        let mut vmcs = host.alloc_memory(4096, 4096).map_err(VmxError::Host)?;
        vmcs.as_mut_slice()[..4].copy_from_slice(&vmx.caps.revision().to_le_bytes());
        let vmcs_pa = phys_of(vmcs.as_ref())?;
        let mut io_bitmaps = host.alloc_memory(2 * 4096, 4096).map_err(VmxError::Host)?;
        fill_io_bitmaps(io_bitmaps.as_mut_slice(), &[]);
        let mut msr_bitmap = host.alloc_memory(4096, 4096).map_err(VmxError::Host)?;
        msr_bitmap.as_mut_slice().fill(0xff);
        for m in crate::vcpu::PASS_THROUGH {
            if m != msr::PAT || vmx.controls.pat {
                intercept_msr(msr_bitmap.as_mut_slice(), m, false);
            }
        }
        let mut msr_area = host.alloc_memory(4096, 16).map_err(VmxError::Host)?;
        for (i, m) in SWITCHED_MSRS.iter().enumerate() {
            msr_area.as_mut_slice()[i * 16..i * 16 + 4].copy_from_slice(&m.to_le_bytes());
        }
        let io_pa = phys_of(io_bitmaps.as_ref())?;
        let msr_bitmap_pa = phys_of(msr_bitmap.as_ref())?;
        let msr_area_pa = phys_of(msr_area.as_ref())?;
        let mut me = Self {
            vmcs,
            vmcs_pa,
            gprs: VmxGprs::default(),
            launched: false,
            ept: None,
            io_bitmaps,
            io_generation: None,
            _msr_bitmap: msr_bitmap,
            msr_area,
            controls: vmx.controls,
            cr0: vmx.caps.guest_cr0(),
            cr4: vmx.caps.guest_cr4(),
            ept_caps: vmx.caps.ept_vpid,
            vpid: vpid.max(1),
            xstate: crate::xstate::ExtendedState::new(vmx.xstate.clone())
                .keep_host_state(vm.host().uses_extended_state()),
            debug: Default::default(),
            host_debug: None,
            debug_stop: None,
            step_exit_rip: None,
            translation_cache: crate::emulator::TranslationCache::new(),
            decode_cache: crate::emulator::DecodeCache::new(),
            pdptes_stale: false,
        };
        // SAFETY: VMX is on (`vmx` exists); the region is ours, carries the
        // revision ID and is cleared before first use.
        unsafe {
            instructions::vmclear(me.vmcs_pa).map_err(|e| me.setup_error("VMCLEAR", e))?;
            instructions::vmptrld(me.vmcs_pa).map_err(|e| me.setup_error("VMPTRLD", e))?;
        }
        CURRENT_VMCS.store(me.vmcs_pa, Ordering::Relaxed);
        let host_state = instructions::host_state();
        if host_state.selectors[6] == 0 {
            return Err(VmxError::NoHostTaskRegister);
        }
        let c = me.controls;
        // SAFETY: ring 0 on a CPU with VMX (a `Vmx` exists); these MSRs
        // exist on every such CPU (PAT only read when the controls switch
        // it) and reading them has no side effect.
        let [fs_base, gs_base, sysenter_cs, sysenter_esp, sysenter_eip, efer, pat] = unsafe {
            [
                instructions::rdmsr(msr::FS_BASE),
                instructions::rdmsr(msr::GS_BASE),
                instructions::rdmsr(msr::SYSENTER_CS),
                instructions::rdmsr(msr::SYSENTER_ESP),
                instructions::rdmsr(msr::SYSENTER_EIP),
                instructions::rdmsr(msr::EFER),
                if c.pat {
                    instructions::rdmsr(msr::PAT)
                } else {
                    0
                },
            ]
        };
        let writes: [(u32, u64); 40] = [
            (fields::PIN_BASED_CONTROLS, c.pin.into()),
            (fields::PROC_BASED_CONTROLS, c.proc.into()),
            (fields::SECONDARY_CONTROLS, c.proc2.into()),
            (fields::EXIT_CONTROLS, c.exit.into()),
            (fields::ENTRY_CONTROLS, c.entry.into()),
            (fields::EXCEPTION_BITMAP, 0),
            (fields::CR3_TARGET_COUNT, 0),
            (fields::IO_BITMAP_A, io_pa),
            (fields::IO_BITMAP_B, io_pa + 4096),
            (fields::MSR_BITMAP, msr_bitmap_pa),
            (fields::EXIT_MSR_STORE_ADDR, msr_area_pa),
            (fields::EXIT_MSR_STORE_COUNT, SWITCHED_MSRS.len() as u64),
            (fields::ENTRY_MSR_LOAD_ADDR, msr_area_pa),
            (fields::ENTRY_MSR_LOAD_COUNT, SWITCHED_MSRS.len() as u64),
            (fields::EXIT_MSR_LOAD_COUNT, 0),
            (fields::VMCS_LINK_POINTER, u64::MAX),
            (fields::HOST_CR0, host_state.cr0),
            (fields::HOST_CR3, host_state.cr3),
            (fields::HOST_CR4, host_state.cr4),
            (fields::HOST_CS_SELECTOR, host_state.selectors[0].into()),
            (fields::HOST_SS_SELECTOR, host_state.selectors[1].into()),
            (fields::HOST_DS_SELECTOR, host_state.selectors[2].into()),
            (fields::HOST_ES_SELECTOR, host_state.selectors[3].into()),
            (fields::HOST_FS_SELECTOR, host_state.selectors[4].into()),
            (fields::HOST_GS_SELECTOR, host_state.selectors[5].into()),
            (fields::HOST_TR_SELECTOR, host_state.selectors[6].into()),
            (fields::HOST_FS_BASE, fs_base),
            (fields::HOST_GS_BASE, gs_base),
            (fields::HOST_TR_BASE, host_state.tr_base),
            (fields::HOST_GDTR_BASE, host_state.gdtr_base),
            (fields::HOST_IDTR_BASE, host_state.idtr_base),
            (fields::HOST_SYSENTER_CS, sysenter_cs),
            (fields::HOST_SYSENTER_ESP, sysenter_esp),
            (fields::HOST_SYSENTER_EIP, sysenter_eip),
            (fields::HOST_IA32_EFER, efer),
            (fields::HOST_IA32_PAT, pat),
            (fields::HOST_RIP, instructions::exit_entry_point()),
            (fields::VPID, u64::from(me.vpid)),
            (fields::CR0_GUEST_HOST_MASK, me.cr0.owned_by_vmm() | CR0_PG),
            (fields::CR4_GUEST_HOST_MASK, me.cr4.owned_by_vmm() | CR4_PAE),
        ];
        for (field, value) in writes {
            if field == fields::HOST_IA32_PAT && !c.pat {
                continue;
            }
            if field == fields::VPID && !c.vpid {
                continue;
            }
            // SAFETY: VMX on, our VMCS current; the values are this CPU's
            // host state and controls the CPU allows.
            unsafe { instructions::vmwrite(field, value) }
                .map_err(|e| me.setup_error("VMWRITE", e))?;
        }
        if c.pause == super::capabilities::PauseExiting::Loop {
            // Used only while PAUSE-loop exiting is on (a sibling or
            // another VM waits for this CPU).
            for (field, value) in [
                (fields::PLE_GAP, super::capabilities::PLE_GAP),
                (fields::PLE_WINDOW, super::capabilities::PLE_WINDOW),
            ] {
                // SAFETY: as above: VMX on, our VMCS current, fields the
                // CPU has (it offers PAUSE-loop exiting).
                unsafe { instructions::vmwrite(field, value.into()) }
                    .map_err(|e| me.setup_error("VMWRITE", e))?;
            }
        }
        me.reset();
        Ok(me)
    }

    fn setup_error(&self, what: &'static str, e: VmFail) -> VmxError {
        let error = match e {
            VmFail::Invalid => 0,
            VmFail::Valid => {
                // SAFETY: VMX on; reading the error field of the current
                // VMCS has no side effect.
                let read = unsafe { instructions::vmread(fields::VM_INSTRUCTION_ERROR) };
                read.unwrap_or(0)
            }
        };
        VmxError::Instruction { what, error }
    }

    /// Make this vCPU's VMCS the current one.
    pub(super) fn load(&self) {
        if CURRENT_VMCS.load(Ordering::Relaxed) != self.vmcs_pa {
            // SAFETY: VMX is on (a vCPU exists only after `Vmx::enable`);
            // the VMCS is ours and was cleared and set up by `new`.
            if unsafe { instructions::vmptrld(self.vmcs_pa) }.is_ok() {
                CURRENT_VMCS.store(self.vmcs_pa, Ordering::Relaxed);
            } else {
                log::error!("VMPTRLD {:#x} failed", self.vmcs_pa);
            }
        }
    }

    pub(super) fn read(&self, field: u32) -> u64 {
        self.load();
        // SAFETY: VMX on, our VMCS current; VMREAD has no side effect.
        match unsafe { instructions::vmread(field) } {
            Ok(v) => v,
            Err(e) => {
                log::error!("VMREAD {field:#x} failed: {e:?}");
                0
            }
        }
    }

    pub(super) fn write(&self, field: u32, value: u64) {
        self.load();
        // SAFETY: VMX on, our VMCS current; every caller writes guest
        // state or controls this backend computed, none of which gives
        // the guest memory or devices outside its VM.
        if let Err(e) = unsafe { instructions::vmwrite(field, value) } {
            log::error!("VMWRITE {field:#x} = {value:#x} failed: {e:?}");
        }
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        // SAFETY: VMX is on; clearing our own VMCS flushes it to memory
        // before the region is freed.
        let _ = unsafe { instructions::vmclear(self.vmcs_pa) };
        let _ = CURRENT_VMCS.compare_exchange(
            self.vmcs_pa,
            u64::MAX,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        // Keep the page alive until after VMCLEAR.
        let _ = self.vmcs.as_slice().len();
    }
}
