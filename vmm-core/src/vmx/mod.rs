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

pub mod capabilities;
pub mod entry_checks;
pub mod exit_reason;
pub mod fields;
mod instructions;

pub use capabilities::{CapabilityMsrs, Controls, MissingCapability};
pub use instructions::VmxGprs;

use crate::emulator::{CpuState, Exception, Segment, SegmentRegister, RFLAGS_IF};
use crate::host::{Host, HostError, HostMemory};
use crate::nested_paging::{Ept, NestedTables};
use crate::paging::ControlRegisters;
use crate::stats::ExitKind;
use crate::vcpu::{Event, Exit, ExitError, VcpuBackend};
use crate::vm::Vm;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use capabilities::{FixedBits, CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE, CR4_VMXE};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use exit_reason::{entry_failure_qualification, exit_reason_name, instruction_error_name, reason};
use fields::msr;
use instructions::VmFail;

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

fn phys_of(m: &dyn HostMemory) -> Result<u64, VmxError> {
    m.host_phys(0).map(|p| p.0).ok_or(VmxError::NoHostPhys)
}

/// IA32_FEATURE_CONTROL: lock, VMXON outside SMX.
const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
const FEATURE_CONTROL_VMXON: u64 = 1 << 2;
/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;

/// VMX switched on for the current CPU. Keeps the VMXON region alive.
pub struct Vmx {
    _vmxon: Box<dyn HostMemory>,
    caps: CapabilityMsrs,
    controls: Controls,
    xstate: crate::xstate::XstateModel,
}

impl Vmx {
    /// Check the CPU, read its capabilities, set the fixed CR0/CR4 bits and
    /// execute VMXON. Ring 0 only; call once per CPU.
    pub fn enable(host: &dyn Host) -> Result<Self, VmxError> {
        let leaf1 = core::arch::x86_64::__cpuid(1);
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
        }
    }
}

/// The VMCS that is current on this CPU (the bare-metal host runs every
/// vCPU on one CPU), so field accesses VMPTRLD only when it changes.
static CURRENT_VMCS: AtomicU64 = AtomicU64::new(u64::MAX);

/// MSRs the VMCS does not switch but the guest owns: loaded on entry and
/// stored on exit through one MSR area (the host does not use them).
const SWITCHED_MSRS: [u32; 5] = [
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
];

/// EFER bits a guest may set: SCE, LME, NXE, FFXSR (LMA is the CPU's).
const EFER_GUEST_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 11) | (1 << 14);
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_TS: u64 = 1 << 3;
const CR4_PCIDE: u64 = 1 << 17;

/// Interruptibility state: blocking by STI and by MOV SS.
const BLOCKING_STI_MOVSS: u64 = 0b11;
/// Guest interruptibility: blocking by NMI (virtual-NMI blocking, since
/// the pin controls include virtual NMIs).
const BLOCKING_NMI: u64 = 1 << 3;
/// Interruption-information valid bit.
const INFO_VALID: u64 = 1 << 31;
/// Interruption-information "deliver error code" bit.
const INFO_ERROR_CODE: u64 = 1 << 11;

/// Internal exits in a row before `run` returns to the exit loop anyway.
const MAX_INTERNAL_EXITS: u32 = 1000;

/// One vCPU on VMX with EPT and unrestricted guest.
pub struct VmxVcpu {
    vmcs: Box<dyn HostMemory>,
    vmcs_pa: u64,
    gprs: VmxGprs,
    launched: bool,
    ept: Option<NestedTables<Ept>>,
    io_bitmaps: Box<dyn HostMemory>,
    io_generation: Option<u64>,
    _msr_bitmap: Box<dyn HostMemory>,
    msr_area: Box<dyn HostMemory>,
    controls: Controls,
    cr0: FixedBits,
    cr4: FixedBits,
    ept_caps: u64,
    vpid: u16,
    /// The guest's x87/SSE/AVX registers and XCR0.
    xstate: crate::xstate::ExtendedState,
}

/// Set (intercept) or clear the read and write bits of `msr` in a VMX MSR
/// bitmap (SDM 25.6.9: read-low, read-high, write-low, write-high, 1 KiB
/// each).
fn intercept_msr(map: &mut [u8], msr: u32, intercept: bool) {
    let (base, index) = match msr {
        0..=0x1fff => (0, msr as usize),
        0xc000_0000..=0xc000_1fff => (0x400, (msr - 0xc000_0000) as usize),
        _ => return,
    };
    for area in [base, base + 0x800] {
        if let Some(byte) = map.get_mut(area + index / 8) {
            if intercept {
                *byte |= 1 << (index % 8);
            } else {
                *byte &= !(1 << (index % 8));
            }
        }
    }
}

/// Fill the two 4 KiB I/O bitmaps (A: ports 0-0x7fff, B: 0x8000-0xffff):
/// every port exits but the `direct` ranges.
fn fill_io_bitmaps(maps: &mut [u8], direct: &[(u16, u16)]) {
    maps.fill(0xff);
    for &(first, count) in direct {
        for port in u32::from(first)..(u32::from(first) + u32::from(count)).min(0x1_0000) {
            if let Some(byte) = maps.get_mut(port as usize / 8) {
                *byte &= !(1 << (port % 8));
            }
        }
    }
}

/// An I/O instruction exit with qualification `q` (SDM table 28-5: size
/// minus one in bits 2:0, IN in bit 3, string in bit 4, port in 31:16).
/// String instructions go to the emulator.
pub fn io_exit(q: u64, next_rip: u64) -> Exit {
    if q & (1 << 4) != 0 {
        return Exit::Emulate { gpa: None };
    }
    Exit::PortIo {
        port: (q >> 16) as u16,
        size: ((q & 0b111) + 1) as u8,
        write: q & (1 << 3) == 0,
        next_rip,
    }
}

/// VMX access rights to the VMCB-style attributes the emulator uses
/// (type/S/DPL/P in bits 7:0, AVL/L/DB/G in bits 11:8). An unusable
/// segment reads as not present.
pub fn attributes_from_access_rights(ar: u64) -> u16 {
    if ar & (1 << 16) != 0 {
        return (ar & 0x7f) as u16 & !0x80;
    }
    ((ar & 0xff) | ((ar >> 4) & 0xf00)) as u16
}

/// The inverse of [`attributes_from_access_rights`].
pub fn access_rights_from_attributes(attributes: u16) -> u64 {
    let a = u64::from(attributes);
    (a & 0xff) | ((a & 0xf00) << 4)
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
    fn load(&self) {
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

    fn read(&self, field: u32) -> u64 {
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

    fn write(&self, field: u32, value: u64) {
        self.load();
        // SAFETY: VMX on, our VMCS current; every caller writes guest
        // state or controls this backend computed, none of which gives
        // the guest memory or devices outside its VM.
        if let Err(e) = unsafe { instructions::vmwrite(field, value) } {
            log::error!("VMWRITE {field:#x} = {value:#x} failed: {e:?}");
        }
    }

    /// Rebuild the EPT tables if the memory map changed.
    fn sync_ept(&mut self, vm: &Vm) -> Result<(), ExitError> {
        let current = self.ept.as_ref().map(|t| t.generation());
        if current == Some(vm.memory().generation()) {
            return Ok(());
        }
        let tables = NestedTables::<Ept>::build(vm.host(), vm.memory()).map_err(|e| {
            ExitError::EntryFailed {
                detail: format!("{e}"),
            }
        })?;
        // Write-back structures, 4-level walk.
        let eptp = tables.root().0 | 6 | (3 << 3);
        self.write(fields::EPT_POINTER, eptp);
        use capabilities::ept_cap;
        let kind = if self.ept_caps & ept_cap::INVEPT_SINGLE != 0 {
            1
        } else {
            2
        };
        // SAFETY: VMX on; the capability MSR says this INVEPT kind exists.
        // A root address reused from freed tables must not keep stale
        // translations.
        if unsafe { instructions::invept(kind, eptp) }.is_err() {
            log::warn!("INVEPT failed");
        }
        self.ept = Some(tables);
        Ok(())
    }

    /// Rebuild the I/O bitmaps if the VM's pass-through ports changed.
    fn sync_io_bitmaps(&mut self, vm: &Vm) {
        let generation = vm.direct_ports_generation();
        if self.io_generation == Some(generation) {
            return;
        }
        let mut direct = alloc::vec::Vec::new();
        for d in vm.direct_ports() {
            direct.extend(d.ranges());
        }
        fill_io_bitmaps(self.io_bitmaps.as_mut_slice(), &direct);
        self.io_generation = Some(generation);
    }

    fn entry_controls(&self) -> u64 {
        self.read(fields::ENTRY_CONTROLS)
    }

    /// The guest's view of CR0 (read shadow for the bits we own).
    fn guest_cr0(&self) -> u64 {
        let mask = self.read(fields::CR0_GUEST_HOST_MASK);
        (self.read(fields::GUEST_CR0) & !mask) | (self.read(fields::CR0_READ_SHADOW) & mask)
    }

    fn guest_cr4(&self) -> u64 {
        let mask = self.read(fields::CR4_GUEST_HOST_MASK);
        (self.read(fields::GUEST_CR4) & !mask) | (self.read(fields::CR4_READ_SHADOW) & mask)
    }

    /// Load the four PDPTEs from guest memory when the guest uses PAE paging
    /// outside long mode (with EPT, VM entry takes them from the VMCS).
    fn load_pdptes(&self, vm: &Vm) -> Result<(), Exception> {
        let cr0 = self.guest_cr0();
        let cr4 = self.guest_cr4();
        let efer = self.read(fields::GUEST_IA32_EFER);
        if cr0 & CR0_PG == 0 || cr4 & CR4_PAE == 0 || efer & EFER_LMA != 0 {
            return Ok(());
        }
        let base = self.read(fields::GUEST_CR3) & 0xffff_ffe0;
        for i in 0..4u32 {
            let pdpte = vm
                .memory()
                .read_u64(base + u64::from(i) * 8)
                .map_err(|_| Exception::GeneralProtection(0))?;
            // Present entries with reserved bits set fault (#GP on MOV CR).
            if pdpte & 1 != 0 && pdpte & 0x1e6 != 0 {
                return Err(Exception::GeneralProtection(0));
            }
            self.write(fields::GUEST_PDPTE0 + 2 * i, pdpte);
        }
        Ok(())
    }

    /// MOV to CR0 (or LMSW/CLTS) with value `value`, as the guest sees it.
    fn set_cr0(&mut self, vm: &Vm, value: u64) -> Result<(), Exception> {
        let gp = Exception::GeneralProtection(0);
        if value >> 32 != 0
            || (value & CR0_PG != 0 && value & CR0_PE == 0)
            || (value & CR0_NW != 0 && value & CR0_CD == 0)
        {
            return Err(gp);
        }
        let old = self.guest_cr0();
        let mut efer = self.read(fields::GUEST_IA32_EFER);
        let mut entry = self.entry_controls();
        let ia32e = u64::from(capabilities::entry::IA32E_MODE_GUEST);
        if value & CR0_PG != 0 && old & CR0_PG == 0 && efer & EFER_LME != 0 {
            if self.guest_cr4() & CR4_PAE == 0 {
                return Err(gp);
            }
            efer |= EFER_LMA;
            entry |= ia32e;
        } else if value & CR0_PG == 0 && efer & EFER_LMA != 0 {
            // Leaving long mode from 64-bit code, or with PCIDE on, faults.
            let (_, _, cs_ar, _) = fields::guest_segment(Segment::Cs as u32);
            if self.read(cs_ar) & (1 << 13) != 0 || self.guest_cr4() & CR4_PCIDE != 0 {
                return Err(gp);
            }
            efer &= !EFER_LMA;
            entry &= !ia32e;
        }
        self.write(fields::GUEST_IA32_EFER, efer);
        self.write(fields::ENTRY_CONTROLS, entry);
        self.write(fields::CR0_READ_SHADOW, value);
        self.write(fields::GUEST_CR0, self.cr0.apply(value));
        if (old ^ value) & (CR0_PG | CR0_PE) != 0 {
            self.load_pdptes(vm)?;
        }
        Ok(())
    }

    /// MOV to CR4.
    fn set_cr4(&mut self, vm: &Vm, value: u64) -> Result<(), Exception> {
        let gp = Exception::GeneralProtection(0);
        // VMX is hidden from the guest; bits VMX does not allow are
        // reserved as far as the guest knows.
        let allowed = self.cr4.may_be_one & !CR4_VMXE;
        if value & !allowed != 0 {
            return Err(gp);
        }
        let efer = self.read(fields::GUEST_IA32_EFER);
        if efer & EFER_LMA != 0 && value & CR4_PAE == 0 {
            return Err(gp);
        }
        // PCIDE only in long mode, and only with PCID 0 in CR3.
        let old_pcide = self.guest_cr4() & CR4_PCIDE != 0;
        if value & CR4_PCIDE != 0
            && !old_pcide
            && (efer & EFER_LMA == 0 || self.read(fields::GUEST_CR3) & 0xfff != 0)
        {
            return Err(gp);
        }
        let old = self.guest_cr4();
        self.write(fields::CR4_READ_SHADOW, value);
        self.write(fields::GUEST_CR4, self.cr4.apply(value));
        if (old ^ value) & CR4_PAE != 0 {
            self.load_pdptes(vm)?;
        }
        Ok(())
    }

    /// A control-register access exit (qualification `q`): carried out
    /// here; the guest moves on, or gets #GP.
    fn control_register_access(&mut self, vm: &mut Vm, q: u64) -> Result<(), Exit> {
        let cr = q & 0xf;
        let access = (q >> 4) & 0b11;
        let reg = ((q >> 8) & 0xf) as usize;
        let result = match (access, cr) {
            (0, 0) => {
                let v = self.gpr(reg);
                self.set_cr0(vm, v)
            }
            (0, 3) => {
                self.write(fields::GUEST_CR3, self.gpr(reg));
                self.load_pdptes(vm)
            }
            (0, 4) => {
                let v = self.gpr(reg);
                self.set_cr4(vm, v)
            }
            (1, 3) => {
                let v = self.read(fields::GUEST_CR3);
                self.set_gpr(reg, v);
                Ok(())
            }
            // CR8 is the local APIC's TPR (bits 7:4 of its MMIO register).
            (0, 8) => {
                let tpr = ((self.gpr(reg) & 0xf) << 4) as u32;
                vm.mmio_write(0xfee0_0080, &tpr.to_le_bytes());
                Ok(())
            }
            (1, 8) => {
                let mut b = [0u8; 4];
                vm.mmio_read(0xfee0_0080, &mut b);
                self.set_gpr(reg, u64::from((u32::from_le_bytes(b) >> 4) & 0xf));
                Ok(())
            }
            (2, _) => {
                let v = self.guest_cr0() & !CR0_TS;
                self.set_cr0(vm, v)
            }
            (3, _) => {
                // LMSW: loads PE, MP, EM, TS; cannot clear PE.
                let old = self.guest_cr0();
                let src = (q >> 16) & 0xf;
                let v = (old & !0xe) | (src & 0xe) | ((old | src) & CR0_PE);
                self.set_cr0(vm, v)
            }
            _ => {
                return Err(Exit::Error(ExitError::Unhandled {
                    code: reason::CR_ACCESS.into(),
                    detail: format!("control-register access, qualification {q:#x}"),
                }))
            }
        };
        match result {
            Ok(()) => {
                // The CPU flushes the guest's TLB on these writes; done by
                // VMWRITE it does not, and VPID keeps entries across entries.
                if (access == 0 && matches!(cr, 0 | 3 | 4)) || access == 3 {
                    self.flush_guest_tlb();
                }
                self.skip_instruction()
            }
            Err(e) => {
                self.inject(Event::Exception(e));
            }
        }
        Ok(())
    }

    /// Drop the TLB entries tagged with this vCPU's VPID (without VPID,
    /// every VM entry and exit flushes them anyway).
    fn flush_guest_tlb(&self) {
        if !self.controls.vpid {
            return;
        }
        use capabilities::ept_cap;
        let kind = if self.ept_caps & ept_cap::INVVPID_SINGLE != 0 {
            1
        } else {
            2
        };
        // SAFETY: VMX on; the capability MSR says this INVVPID kind exists.
        if unsafe { instructions::invvpid(kind, self.vpid) }.is_err() {
            log::warn!("INVVPID failed");
        }
    }

    /// XSETBV: #UD without CR4.OSXSAVE, #GP outside CPL 0 or for a value
    /// the model refuses; otherwise the guest's XCR0 changes (it is loaded
    /// at the next entry).
    fn xsetbv(&mut self) {
        let value = (self.gprs.rdx << 32) | (self.gprs.rax & 0xffff_ffff);
        let osxsave = self.guest_cr4() & CR4_OSXSAVE != 0;
        let cpl = self.cpl();
        match self
            .xstate
            .xsetbv(self.gprs.rcx as u32, value, osxsave, cpl)
        {
            Ok(()) => self.skip_instruction(),
            Err(e) => {
                self.inject(Event::Exception(e));
            }
        }
    }

    fn next_rip(&self) -> u64 {
        self.read(fields::GUEST_RIP)
            .wrapping_add(self.read(fields::EXIT_INSTRUCTION_LENGTH))
    }

    fn skip_instruction(&mut self) {
        let next = self.next_rip();
        self.set_rip(next);
    }

    /// An event whose delivery the exit interrupted is delivered again on
    /// the next entry.
    fn reinject_vectoring_event(&self) {
        let info = self.read(fields::IDT_VECTORING_INFO);
        if info & INFO_VALID == 0 {
            return;
        }
        self.write(fields::ENTRY_INTERRUPTION_INFO, info & (INFO_VALID | 0x7ff));
        if info & INFO_ERROR_CODE != 0 {
            self.write(
                fields::ENTRY_EXCEPTION_ERROR_CODE,
                self.read(fields::IDT_VECTORING_ERROR_CODE),
            );
        }
        // Software interrupts and exceptions need the instruction length.
        if matches!((info >> 8) & 7, 4..=6) {
            self.write(
                fields::ENTRY_INSTRUCTION_LENGTH,
                self.read(fields::EXIT_INSTRUCTION_LENGTH),
            );
        }
    }

    /// The guest state VM entry checks, for [`entry_checks`].
    fn snapshot(&self) -> entry_checks::GuestStateSnapshot {
        let segment = |sel: u32, base: u32, limit: u32, ar: u32| entry_checks::VmcsSegment {
            selector: self.read(sel) as u16,
            base: self.read(base),
            limit: self.read(limit) as u32,
            access_rights: self.read(ar) as u32,
        };
        let (cs_sel, cs_limit, cs_ar, cs_base) = fields::guest_segment(Segment::Cs as u32);
        let (ss_sel, ss_limit, ss_ar, ss_base) = fields::guest_segment(Segment::Ss as u32);
        entry_checks::GuestStateSnapshot {
            cr0: self.read(fields::GUEST_CR0),
            cr4: self.read(fields::GUEST_CR4),
            efer: self.read(fields::GUEST_IA32_EFER),
            entry_controls: self.read(fields::ENTRY_CONTROLS) as u32,
            unrestricted: self.controls.proc2 & capabilities::proc2::UNRESTRICTED_GUEST != 0,
            rflags: self.read(fields::GUEST_RFLAGS),
            cs: segment(cs_sel, cs_base, cs_limit, cs_ar),
            ss: segment(ss_sel, ss_base, ss_limit, ss_ar),
            tr: segment(
                fields::GUEST_TR_SELECTOR,
                fields::GUEST_TR_BASE,
                fields::GUEST_TR_LIMIT,
                fields::GUEST_TR_ACCESS_RIGHTS,
            ),
            ldtr: segment(
                fields::GUEST_LDTR_SELECTOR,
                fields::GUEST_LDTR_BASE,
                fields::GUEST_LDTR_LIMIT,
                fields::GUEST_LDTR_ACCESS_RIGHTS,
            ),
            interruptibility: self.read(fields::GUEST_INTERRUPTIBILITY) as u32,
            activity: self.read(fields::GUEST_ACTIVITY_STATE) as u32,
            entry_event: self.read(fields::ENTRY_INTERRUPTION_INFO) as u32,
        }
    }

    /// The guest-state fields a failed VM entry is explained with.
    fn guest_state_summary(&self) -> String {
        let seg = |s: Segment| {
            let (sel, limit, ar, base) = fields::guest_segment(s as u32);
            format!(
                "{s:?} {:#x}/base {:#x}/limit {:#x}/ar {:#x}",
                self.read(sel),
                self.read(base),
                self.read(limit),
                self.read(ar)
            )
        };
        format!(
            "CR0 {:#x} (shadow {:#x}) CR4 {:#x} (shadow {:#x}) CR3 {:#x} EFER {:#x} \
             entry controls {:#x} RFLAGS {:#x} RIP {:#x} interruptibility {:#x} activity {:#x} \
             entry event {:#x}; {}; {}; TR {:#x}/base {:#x}/limit {:#x}/ar {:#x}; \
             LDTR {:#x}/ar {:#x}",
            self.read(fields::GUEST_CR0),
            self.read(fields::CR0_READ_SHADOW),
            self.read(fields::GUEST_CR4),
            self.read(fields::CR4_READ_SHADOW),
            self.read(fields::GUEST_CR3),
            self.read(fields::GUEST_IA32_EFER),
            self.read(fields::ENTRY_CONTROLS),
            self.read(fields::GUEST_RFLAGS),
            self.read(fields::GUEST_RIP),
            self.read(fields::GUEST_INTERRUPTIBILITY),
            self.read(fields::GUEST_ACTIVITY_STATE),
            self.read(fields::ENTRY_INTERRUPTION_INFO),
            seg(Segment::Cs),
            seg(Segment::Ss),
            self.read(fields::GUEST_TR_SELECTOR),
            self.read(fields::GUEST_TR_BASE),
            self.read(fields::GUEST_TR_LIMIT),
            self.read(fields::GUEST_TR_ACCESS_RIGHTS),
            self.read(fields::GUEST_LDTR_SELECTOR),
            self.read(fields::GUEST_LDTR_ACCESS_RIGHTS),
        )
    }

    /// VMLAUNCH/VMRESUME failed outright (VMfailInvalid/VMfailValid).
    fn instruction_failure(&self, e: VmFail) -> Exit {
        let what = if self.launched {
            "VMRESUME"
        } else {
            "VMLAUNCH"
        };
        let detail = match e {
            VmFail::Invalid => format!("{what}: VMfailInvalid (no current VMCS)"),
            VmFail::Valid => {
                let n = self.read(fields::VM_INSTRUCTION_ERROR);
                let fields_text = match n {
                    7 => format!(
                        "pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x} EPTP {:#x} \
                         entry event {:#x}",
                        self.read(fields::PIN_BASED_CONTROLS),
                        self.read(fields::PROC_BASED_CONTROLS),
                        self.read(fields::SECONDARY_CONTROLS),
                        self.read(fields::EXIT_CONTROLS),
                        self.read(fields::ENTRY_CONTROLS),
                        self.read(fields::EPT_POINTER),
                        self.read(fields::ENTRY_INTERRUPTION_INFO),
                    ),
                    8 => format!(
                        "host CR0 {:#x} CR4 {:#x} CR3 {:#x} CS {:#x} SS {:#x} TR {:#x} \
                         RIP {:#x} EFER {:#x}",
                        self.read(fields::HOST_CR0),
                        self.read(fields::HOST_CR4),
                        self.read(fields::HOST_CR3),
                        self.read(fields::HOST_CS_SELECTOR),
                        self.read(fields::HOST_SS_SELECTOR),
                        self.read(fields::HOST_TR_SELECTOR),
                        self.read(fields::HOST_RIP),
                        self.read(fields::HOST_IA32_EFER),
                    ),
                    _ => self.guest_state_summary(),
                };
                format!(
                    "{what}: VM-instruction error {n} ({}); {fields_text}",
                    instruction_error_name(n)
                )
            }
        };
        Exit::Error(ExitError::EntryFailed { detail })
    }

    /// Decode the exit that just happened: `None` if it was handled here
    /// and the guest can go on at once.
    fn decode_exit(&mut self, vm: &mut Vm) -> Option<Exit> {
        let raw = self.read(fields::EXIT_REASON);
        let basic = (raw & 0xffff) as u32;
        let q = self.read(fields::EXIT_QUALIFICATION);
        if raw & (1 << 31) != 0 {
            let why = if basic == reason::ENTRY_FAIL_GUEST_STATE {
                entry_failure_qualification(q)
            } else if basic == reason::ENTRY_FAIL_MSR_LOADING {
                "an MSR in the VM-entry MSR-load area was refused (qualification = entry)"
            } else {
                ""
            };
            let check = if basic == reason::ENTRY_FAIL_GUEST_STATE {
                match entry_checks::first_failed_check(&self.snapshot(), self.cr0, self.cr4) {
                    Some(c) => format!("; failed check: {} ({})", c.rule, c.fields),
                    None => String::from("; no modelled guest-state check fails"),
                }
            } else {
                String::new()
            };
            return Some(Exit::Error(ExitError::EntryFailed {
                detail: format!(
                    "exit reason {basic} ({}), qualification {q:#x}: {why}{check}; {}",
                    exit_reason_name(basic),
                    self.guest_state_summary()
                ),
            }));
        }
        self.reinject_vectoring_event();
        let exit = match basic {
            reason::EXTERNAL_INTERRUPT => Exit::ExternalInterrupt,
            reason::EXCEPTION_OR_NMI
                if (self.read(fields::EXIT_INTERRUPTION_INFO) >> 8) & 7 == 2 =>
            {
                Exit::ExternalInterrupt
            }
            reason::TRIPLE_FAULT => Exit::Shutdown,
            reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
            reason::CPUID => Exit::Cpuid {
                next_rip: self.next_rip(),
            },
            reason::HLT => Exit::Hlt {
                next_rip: self.next_rip(),
            },
            reason::IO => io_exit(q, self.next_rip()),
            reason::RDMSR | reason::WRMSR => Exit::Msr {
                write: basic == reason::WRMSR,
                next_rip: self.next_rip(),
            },
            reason::EPT_VIOLATION => {
                let gpa = self.read(fields::GUEST_PHYSICAL_ADDRESS);
                let vectoring = self.read(fields::IDT_VECTORING_INFO);
                if vectoring & INFO_VALID != 0
                    && vm.memory().kind_at(gpa) != crate::memory::RegionKind::Ram
                {
                    // Delivering an event (IDT, GDT, stack or their page
                    // tables) touched memory this VM does not have:
                    // re-entering would only exit here again.
                    log::debug!(
                        "delivering event {vectoring:#x} touched {gpa:#x}, which is not RAM"
                    );
                    let (event_type, vector) = (((vectoring >> 8) & 7) as u8, vectoring as u8);
                    match crate::vcpu::delivery_fault(event_type, vector) {
                        crate::vcpu::DeliveryFault::Shutdown => Exit::Shutdown,
                        crate::vcpu::DeliveryFault::DoubleFault => {
                            self.write(
                                fields::ENTRY_INTERRUPTION_INFO,
                                8 | (3 << 8) | INFO_ERROR_CODE | INFO_VALID,
                            );
                            self.write(fields::ENTRY_EXCEPTION_ERROR_CODE, 0);
                            vm.stats_mut().record(ExitKind::Mmio);
                            return None;
                        }
                    }
                } else if vm.memory().kind_at(gpa) == crate::memory::RegionKind::Ram {
                    // The tables say "not RAM" where the map says RAM.
                    Exit::Error(ExitError::Unhandled {
                        code: basic.into(),
                        detail: format!("EPT violation on RAM at {gpa:#x}, qualification {q:#x}"),
                    })
                } else {
                    Exit::Emulate { gpa: Some(gpa) }
                }
            }
            reason::EPT_MISCONFIG => Exit::Error(ExitError::Unhandled {
                code: basic.into(),
                detail: format!(
                    "EPT misconfiguration at {:#x}",
                    self.read(fields::GUEST_PHYSICAL_ADDRESS)
                ),
            }),
            reason::VMCALL..=reason::VMXON | reason::INVEPT | reason::INVVPID | reason::VMFUNC => {
                Exit::VirtInstruction
            }
            reason::CR_ACCESS => {
                vm.stats_mut().record(ExitKind::ControlRegister);
                return self.control_register_access(vm, q).err();
            }
            reason::XSETBV => {
                vm.stats_mut().record(ExitKind::Other);
                self.xsetbv();
                return None;
            }
            reason::INVD => {
                vm.stats_mut().record(ExitKind::Other);
                self.skip_instruction();
                return None;
            }
            other => Exit::Error(ExitError::Unhandled {
                code: other.into(),
                detail: format!(
                    "{}: qualification {q:#x}, rip {:#x}",
                    exit_reason_name(other),
                    self.read(fields::GUEST_RIP)
                ),
            }),
        };
        Some(exit)
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

impl CpuState for VmxVcpu {
    fn gpr(&self, index: usize) -> u64 {
        let g = &self.gprs;
        match index {
            0 => g.rax,
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.read(fields::GUEST_RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8..=15 => g.r[index - 8],
            _ => 0,
        }
    }
    fn set_gpr(&mut self, index: usize, value: u64) {
        let g = &mut self.gprs;
        match index {
            0 => g.rax = value,
            1 => g.rcx = value,
            2 => g.rdx = value,
            3 => g.rbx = value,
            4 => self.write(fields::GUEST_RSP, value),
            5 => g.rbp = value,
            6 => g.rsi = value,
            7 => g.rdi = value,
            8..=15 => g.r[index - 8] = value,
            _ => {}
        }
    }
    fn rip(&self) -> u64 {
        self.read(fields::GUEST_RIP)
    }
    fn set_rip(&mut self, value: u64) {
        self.write(fields::GUEST_RIP, value);
        // Moving past an instruction ends its STI/MOV SS blocking.
        let s = self.read(fields::GUEST_INTERRUPTIBILITY);
        if s & BLOCKING_STI_MOVSS != 0 {
            self.write(fields::GUEST_INTERRUPTIBILITY, s & !BLOCKING_STI_MOVSS);
        }
    }
    fn rflags(&self) -> u64 {
        self.read(fields::GUEST_RFLAGS)
    }
    fn set_rflags(&mut self, value: u64) {
        self.write(fields::GUEST_RFLAGS, value);
    }
    fn segment(&self, segment: Segment) -> SegmentRegister {
        let (sel, limit, ar, base) = fields::guest_segment(segment as u32);
        SegmentRegister::new(
            self.read(sel) as u16,
            self.read(base),
            self.read(limit) as u32,
            attributes_from_access_rights(self.read(ar)),
        )
    }
    fn control(&self) -> ControlRegisters {
        ControlRegisters {
            cr0: self.guest_cr0(),
            cr3: self.read(fields::GUEST_CR3),
            cr4: self.guest_cr4(),
            efer: self.read(fields::GUEST_IA32_EFER),
        }
    }
    fn xmm(&self, index: usize) -> u128 {
        self.xstate.xmm(index)
    }
    fn set_xmm(&mut self, index: usize, value: u128) {
        self.xstate.set_xmm(index, value)
    }
    fn ymm_upper(&self, index: usize) -> Option<u128> {
        self.xstate.ymm_upper(index)
    }
    fn set_ymm_upper(&mut self, index: usize, value: u128) {
        self.xstate.set_ymm_upper(index, value)
    }
    fn xcr0(&self) -> Option<u64> {
        Some(self.xstate.xcr0())
    }
    fn cpl(&self) -> u8 {
        let (_, _, ar, _) = fields::guest_segment(Segment::Ss as u32);
        ((self.read(ar) >> 5) & 3) as u8
    }
}

impl VcpuBackend for VmxVcpu {
    fn run(&mut self, vm: &mut Vm) -> Exit {
        if let Err(e) = self.sync_ept(vm) {
            return Exit::Error(e);
        }
        self.sync_io_bitmaps(vm);
        for _ in 0..MAX_INTERNAL_EXITS {
            self.load();
            self.xstate.switch_to_guest(vm.host().current_cpu());
            // SAFETY: VMX is on and our VMCS current; its host state is this
            // CPU's, HOST_RIP the exit path of `enter`; its EPT maps only
            // this VM's memory, its I/O bitmaps intercept every port but
            // the VM's pass-through ports and its MSR bitmap only lets
            // through MSRs the VMCS or its MSR areas switch.
            let entered = unsafe { instructions::enter(&mut self.gprs, self.launched) };
            self.xstate.switch_to_host();
            // A physical interrupt that ended the guest's run is taken now.
            instructions::take_pending_interrupts();
            if let Err(e) = entered {
                return self.instruction_failure(e);
            }
            self.launched = true;
            // The event we injected (if any) was delivered or is reported
            // again through the IDT-vectoring information.
            // (A failed entry keeps it, for the diagnosis.)
            let failed_entry = self.read(fields::EXIT_REASON) & (1 << 31) != 0;
            let pending = self.read(fields::ENTRY_INTERRUPTION_INFO);
            if pending & INFO_VALID != 0 && !failed_entry {
                self.write(fields::ENTRY_INTERRUPTION_INFO, 0);
            }
            if let Some(exit) = self.decode_exit(vm) {
                if exit == Exit::InterruptWindow {
                    self.request_interrupt_window(false);
                }
                return exit;
            }
        }
        Exit::Preempted
    }

    fn inject(&mut self, event: Event) -> bool {
        if self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID != 0 {
            return false;
        }
        let info = match event {
            Event::Exception(e) => {
                let mut v = u64::from(e.vector()) | (3 << 8) | INFO_VALID;
                // Real mode delivers no error code (and VM entry refuses one).
                if let Some(code) = e.error_code() {
                    if self.guest_cr0() & CR0_PE != 0 {
                        v |= INFO_ERROR_CODE;
                        self.write(fields::ENTRY_EXCEPTION_ERROR_CODE, code.into());
                    }
                }
                if let Exception::PageFault(pf) = e {
                    self.gprs.cr2 = pf.address;
                }
                v
            }
            Event::Interrupt(vector) => u64::from(vector) | INFO_VALID,
            Event::Nmi => 2 | (2 << 8) | INFO_VALID,
        };
        self.write(fields::ENTRY_INTERRUPTION_INFO, info);
        true
    }

    fn interrupts_open(&self) -> bool {
        self.rflags() & RFLAGS_IF != 0
            && self.read(fields::GUEST_INTERRUPTIBILITY) & BLOCKING_STI_MOVSS == 0
            && self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID == 0
    }

    fn nmis_open(&self) -> bool {
        // Blocking by NMI (bit 3) is virtual-NMI blocking ("virtual NMIs"
        // is always on, see `Controls::derive`): set by injecting an NMI,
        // cleared by the handler's IRET. (Without virtual NMIs, NMI exiting
        // makes IRET leave the bit alone and only one NMI ever arrived.)
        self.read(fields::GUEST_INTERRUPTIBILITY) & (BLOCKING_NMI | 0b10) == 0
            && self.read(fields::ENTRY_INTERRUPTION_INFO) & INFO_VALID == 0
    }

    fn backend_msr(&self, msr: u32) -> Option<u64> {
        match msr {
            crate::vcpu::MSR_EFER => Some(self.read(fields::GUEST_IA32_EFER)),
            _ => None,
        }
    }

    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        match msr {
            crate::vcpu::MSR_EFER => {
                if value & !(EFER_GUEST_WRITABLE | EFER_LMA) != 0 {
                    return false;
                }
                let current = self.read(fields::GUEST_IA32_EFER);
                // LME cannot change while paging is on.
                if self.guest_cr0() & CR0_PG != 0 && (current ^ value) & EFER_LME != 0 {
                    return false;
                }
                let lma = current & EFER_LMA;
                self.write(fields::GUEST_IA32_EFER, (value & EFER_GUEST_WRITABLE) | lma);
                true
            }
            _ => false,
        }
    }

    fn reset(&mut self) {
        let ia32e = u64::from(capabilities::entry::IA32E_MODE_GUEST);
        self.write(fields::ENTRY_CONTROLS, self.entry_controls() & !ia32e);
        const RESET_CR0: u64 = 0x6000_0010;
        self.write(fields::CR0_READ_SHADOW, RESET_CR0);
        self.write(fields::GUEST_CR0, self.cr0.apply(RESET_CR0));
        self.write(fields::CR4_READ_SHADOW, 0);
        self.write(fields::GUEST_CR4, self.cr4.apply(0));
        self.write(fields::GUEST_CR3, 0);
        self.write(fields::GUEST_IA32_EFER, 0);
        for s in Segment::ALL {
            let (sel, limit, ar, base) = fields::guest_segment(s as u32);
            let (selector, b, attributes) = if s == Segment::Cs {
                (0xf000, 0xffff_0000, SegmentRegister::CODE)
            } else {
                (0, 0, SegmentRegister::DATA)
            };
            self.write(sel, selector);
            self.write(base, b);
            self.write(limit, 0xffff);
            self.write(ar, access_rights_from_attributes(attributes));
        }
        self.write(fields::GUEST_LDTR_SELECTOR, 0);
        self.write(fields::GUEST_LDTR_BASE, 0);
        self.write(fields::GUEST_LDTR_LIMIT, 0xffff);
        self.write(fields::GUEST_LDTR_ACCESS_RIGHTS, 0x82);
        self.write(fields::GUEST_TR_SELECTOR, 0);
        self.write(fields::GUEST_TR_BASE, 0);
        self.write(fields::GUEST_TR_LIMIT, 0xffff);
        self.write(fields::GUEST_TR_ACCESS_RIGHTS, 0x8b);
        self.write(fields::GUEST_GDTR_BASE, 0);
        self.write(fields::GUEST_GDTR_LIMIT, 0xffff);
        self.write(fields::GUEST_IDTR_BASE, 0);
        self.write(fields::GUEST_IDTR_LIMIT, 0xffff);
        self.write(fields::GUEST_RIP, 0xfff0);
        self.write(fields::GUEST_RSP, 0);
        self.write(fields::GUEST_RFLAGS, 2);
        self.write(fields::GUEST_DR7, 0x400);
        self.write(fields::GUEST_IA32_DEBUGCTL, 0);
        self.write(fields::GUEST_INTERRUPTIBILITY, 0);
        self.write(fields::GUEST_ACTIVITY_STATE, 0);
        self.write(fields::GUEST_PENDING_DEBUG, 0);
        self.write(fields::GUEST_SYSENTER_CS, 0);
        self.write(fields::GUEST_SYSENTER_ESP, 0);
        self.write(fields::GUEST_SYSENTER_EIP, 0);
        if self.controls.pat {
            self.write(fields::GUEST_IA32_PAT, 0x0007_0406_0007_0406);
        }
        for i in 0..4 {
            self.write(fields::GUEST_PDPTE0 + 2 * i, 0);
        }
        self.write(fields::ENTRY_INTERRUPTION_INFO, 0);
        let proc = self.read(fields::PROC_BASED_CONTROLS);
        self.write(
            fields::PROC_BASED_CONTROLS,
            proc & !u64::from(capabilities::proc::INTERRUPT_WINDOW_EXITING),
        );
        for i in 0..SWITCHED_MSRS.len() {
            self.msr_area.as_mut_slice()[i * 16 + 8..i * 16 + 16].fill(0);
        }
        self.xstate.reset();
        // After RESET, EDX holds the processor signature.
        self.gprs = VmxGprs {
            rdx: core::arch::x86_64::__cpuid(1).eax.into(),
            ..VmxGprs::default()
        };
        // The guest's own TLB entries are stale.
        self.flush_guest_tlb();
        // The guest's TSC starts near zero, as after a power-on.
        self.set_tsc_offset(crate::vcpu::msr_host_tsc().wrapping_neg());
    }

    fn extended_state(&self) -> Option<&crate::xstate::ExtendedState> {
        Some(&self.xstate)
    }

    fn tsc_offset(&self) -> u64 {
        if self.controls.proc & capabilities::proc::USE_TSC_OFFSETTING != 0 {
            self.read(fields::TSC_OFFSET)
        } else {
            0
        }
    }

    fn set_tsc_offset(&mut self, offset: u64) -> bool {
        if self.controls.proc & capabilities::proc::USE_TSC_OFFSETTING == 0 {
            return false;
        }
        self.write(fields::TSC_OFFSET, offset);
        true
    }

    fn request_interrupt_window(&mut self, on: bool) {
        let proc = self.read(fields::PROC_BASED_CONTROLS);
        let bit = u64::from(capabilities::proc::INTERRUPT_WINDOW_EXITING);
        let wanted = if on || !self.controls.interrupt_window_optional {
            proc | bit
        } else {
            proc & !bit
        };
        if wanted != proc {
            self.write(fields::PROC_BASED_CONTROLS, wanted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bitmap_bits_follow_the_sdm_layout() {
        let mut map = [0xffu8; 4096];
        intercept_msr(&mut map, 0x174, false); // SYSENTER_CS: bit 0x174
        assert_eq!(map[0x174 / 8], !(1 << (0x174 % 8)));
        assert_eq!(map[0x800 + 0x174 / 8], !(1 << (0x174 % 8)));
        intercept_msr(&mut map, 0xc000_0082, false); // LSTAR: bit 0x82 of the high maps
        assert_eq!(map[0x400 + 0x10], !(1 << 2));
        assert_eq!(map[0xc00 + 0x10], !(1 << 2));
        intercept_msr(&mut map, 0x4000_0000, false); // outside: ignored
        assert_eq!(map.iter().filter(|b| **b != 0xff).count(), 4);
        intercept_msr(&mut map, 0x174, true);
        assert_eq!(map[0x174 / 8], 0xff);
    }

    #[test]
    fn io_bitmaps_intercept_every_port_but_the_direct_ones() {
        let mut maps = [0u8; 8192];
        fill_io_bitmaps(&mut maps, &[(0x3f8, 8), (0xfffe, 4)]);
        assert_eq!(maps[0x3f8 / 8], 0x00);
        assert_eq!(maps[0x3f0 / 8], 0xff);
        // The range is clipped at the last port; bitmap B holds 0x8000 up.
        assert_eq!(maps[0xffff / 8], 0x3f);
        assert_eq!(maps.iter().filter(|b| **b != 0xff).count(), 2);
    }

    #[test]
    fn io_qualifications_decode_to_port_exits() {
        // OUT DX, AL to 0x3f8.
        assert_eq!(
            io_exit(0x03f8_0000, 0x1001),
            Exit::PortIo {
                port: 0x3f8,
                size: 1,
                write: true,
                next_rip: 0x1001
            }
        );
        // IN EAX, DX from 0xcfc.
        assert_eq!(
            io_exit(0x0cfc_0000 | (1 << 3) | 0b011, 7),
            Exit::PortIo {
                port: 0xcfc,
                size: 4,
                write: false,
                next_rip: 7
            }
        );
        // REP INSW: the emulator's.
        assert_eq!(
            io_exit(0x0170_0000 | (1 << 5) | (1 << 4) | (1 << 3) | 1, 9),
            Exit::Emulate { gpa: None }
        );
    }

    #[test]
    fn access_rights_convert_both_ways() {
        // A 64-bit code segment: type b, S, P, L; and a 32-bit flat one
        // with G and D/B.
        assert_eq!(attributes_from_access_rights(0x209b), 0x029b);
        assert_eq!(attributes_from_access_rights(0xc093), 0x0c93);
        assert_eq!(access_rights_from_attributes(0x0c93), 0xc093);
        // Unusable: not present, whatever else the field says.
        assert_eq!(attributes_from_access_rights(0x1_0093) & 0x80, 0);
    }
}
