//! AMD SVM: enabling it on a CPU, and a vCPU backend with nested paging.
//!
//! [`Svm::enable`] checks CPUID and VM_CR, sets EFER.SVME and the host save
//! area. [`SvmVcpu`] owns a VMCB (starting in the reset state, CS:IP =
//! F000:FFF0), nested page tables built from the VM's memory map (rebuilt
//! when the map changes), and I/O and MSR permission maps that intercept
//! everything, so no guest access reaches real hardware. Exits are decoded
//! into [`Exit`]s for the shared exit loop ([`crate::vcpu::run`]).
//!
//! Without NRIP save (QEMU's TCG has none) the next RIP comes from
//! EXITINFO2 for I/O and from the fixed instruction lengths of CPUID (2),
//! HLT (1) and RDMSR/WRMSR (2).

pub mod consistency;
mod exit_code;
mod instructions;
mod shadow;
mod state;
mod vmcb;

pub use exit_code::ExitCode;
pub use instructions::GuestGprs;
pub use vmcb::{offset, Vmcb};

use crate::emulator::{
    AccessHint, CpuState, DescriptorState, DescriptorTable, Hints, InstructionBytes, Segment,
    SegmentRegister, SystemSegment, RFLAGS_IF, RFLAGS_TF,
};
use crate::host::{Host, HostError, HostMemory};
use crate::host_debug::{DebugStop, HostDebug, StopKind};
use crate::memory::GuestMemory;
use crate::nested_paging::{NestedTables, Npt};
use crate::paging::ControlRegisters;
use crate::vcpu::{Event, Exit, ExitError, ShadowPagingBackend, SplitEntry, VcpuBackend};
use crate::vm::Vm;
use crate::xstate::{ExtendedState, XstateModel};
use alloc::boxed::Box;
use alloc::format;
use core::fmt;

/// EFER.SVME.
pub const EFER_SVME: u64 = 1 << 12;
const MSR_EFER: u32 = x86::msr::IA32_EFER;
// AMD's SVM MSRs (APM vol. 2, 15.30), which the `x86` crate does not have:
// VM_CR and VM_HSAVE_PA (the host save area's physical address).
const MSR_VM_CR: u32 = 0xc001_0114;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const VM_CR_SVMDIS: u64 = 1 << 4;

/// Why SVM cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmError {
    /// CPUID says the CPU has no SVM.
    NotSupported,
    /// The CPU has no nested paging.
    NoNestedPaging,
    /// SVM is disabled by firmware (VM_CR.SVMDIS).
    DisabledByFirmware,
    /// The host refused memory.
    Host(HostError),
    /// A host page has no physical address.
    NoHostPhys,
}

impl core::error::Error for SvmError {}

impl fmt::Display for SvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SvmError::NotSupported => write!(f, "the CPU has no SVM"),
            SvmError::NoNestedPaging => write!(f, "the CPU's SVM has no nested paging"),
            SvmError::DisabledByFirmware => write!(f, "SVM is disabled by firmware (VM_CR.SVMDIS)"),
            SvmError::Host(e) => write!(f, "{e}"),
            SvmError::NoHostPhys => write!(f, "host memory without a physical address"),
        }
    }
}

/// Optional SVM features of this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmFeatures {
    /// The CPU saves the next RIP in the VMCB on exits.
    pub nrip_save: bool,
    /// Decode assists: on a nested page fault the VMCB holds the guest
    /// instruction bytes the CPU fetched.
    pub decode_assists: bool,
    /// Number of ASIDs.
    pub asids: u32,
    /// Pause filter (CPUID 8000_000A EDX bit 10): an intercepted PAUSE
    /// exits only after [`PAUSE_FILTER_COUNT`] of them.
    pub pause_filter: bool,
    /// Pause filter threshold (EDX bit 12): the count starts again when
    /// PAUSEs are more than [`PAUSE_FILTER_THRESHOLD`] cycles apart (not
    /// a spin loop).
    pub pause_filter_threshold: bool,
}

/// SVM enabled on the current CPU. Keeps the host save area alive.
pub struct Svm {
    _hsave: Box<dyn HostMemory>,
    features: SvmFeatures,
    xstate: XstateModel,
}

fn phys_of(m: &dyn HostMemory) -> Result<u64, SvmError> {
    m.host_phys(0).map(|p| p.0).ok_or(SvmError::NoHostPhys)
}

impl Svm {
    /// Check the CPU, set EFER.SVME and VM_HSAVE_PA. Ring 0 only; call once
    /// per CPU.
    pub fn enable(host: &dyn Host) -> Result<Self, SvmError> {
        let ext = crate::host_cpu::cpuid(0x8000_0001);
        if ext.ecx & (1 << 2) == 0 {
            return Err(SvmError::NotSupported);
        }
        let svm = crate::host_cpu::cpuid(0x8000_000a);
        if svm.edx & 1 == 0 {
            return Err(SvmError::NoNestedPaging);
        }
        // SAFETY: CPUID reported SVM, so VM_CR exists; reading it has no
        // side effect.
        if unsafe { instructions::rdmsr(MSR_VM_CR) } & VM_CR_SVMDIS != 0 {
            return Err(SvmError::DisabledByFirmware);
        }
        let hsave = host.alloc_memory(4096, 4096).map_err(SvmError::Host)?;
        let hsave_pa = phys_of(hsave.as_ref())?;
        // Guests' x87/SSE/AVX state is saved and loaded around every VMRUN.
        crate::xstate::prepare_host_cpu();
        // SAFETY: SVM exists and is not disabled; setting EFER.SVME only
        // makes the SVM instructions available, and VM_HSAVE_PA points at a
        // page this object owns for as long as SVM is used.
        unsafe {
            let efer = instructions::rdmsr(MSR_EFER);
            instructions::wrmsr(MSR_EFER, efer | EFER_SVME);
            instructions::wrmsr(MSR_VM_HSAVE_PA, hsave_pa);
        }
        Ok(Self {
            _hsave: hsave,
            features: SvmFeatures {
                nrip_save: svm.edx & (1 << 3) != 0,
                decode_assists: svm.edx & (1 << 7) != 0,
                asids: svm.ebx,
                pause_filter: svm.edx & (1 << 10) != 0,
                pause_filter_threshold: svm.edx & (1 << 12) != 0,
            },
            xstate: XstateModel::detect(),
        })
    }

    /// The optional features found.
    pub fn features(&self) -> SvmFeatures {
        self.features
    }

    /// What guests may keep in extended state on this CPU.
    pub fn xstate_model(&self) -> &XstateModel {
        &self.xstate
    }
}

// Intercept bits (APM vol. 2, table B-1).
const INTERCEPT_INTR: u32 = 1 << 0;
const INTERCEPT_NMI: u32 = 1 << 1;
const INTERCEPT_VINTR: u32 = 1 << 4;
const INTERCEPT_CPUID: u32 = 1 << 18;
const INTERCEPT_IRET: u32 = 1 << 20;
const INTERCEPT_PAUSE: u32 = 1 << 23;
/// DR6.BS: the #DB is a single-step trap.
const DR6_BS: u64 = 1 << 14;
/// The #DB bit of the exception intercepts.
const INTERCEPT_DB: u32 = 1 << 1;
/// The #BP bit of the exception intercepts.
const INTERCEPT_BP: u32 = 1 << 3;
/// INTn (first instruction-intercept word).
const INTERCEPT_INTN: u32 = 1 << 21;
/// The exceptions that can turn the delivery of an exception into a #DF
/// or a shutdown: contributory (#TS, #NP, #SS, #GP) and #PF.
const INTERCEPT_DELIVERY_FAULTS: u32 = 0b1_1111 << 10;
const INTERCEPT_HLT: u32 = 1 << 24;
const INTERCEPT_INVLPGA: u32 = 1 << 26;
const INTERCEPT_IOIO: u32 = 1 << 27;
const INTERCEPT_MSR: u32 = 1 << 28;
const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
/// VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT.
const INTERCEPT_SVM_INSTRUCTIONS: u32 = 0x7f;
/// XSETBV (second instruction-intercept word): XCR0 is per vCPU.
const INTERCEPT_XSETBV: u32 = 1 << 13;

/// Exits `run` handles itself (XSETBV) before it gives up the CPU anyway.
const MAX_INTERNAL_EXITS: usize = 64;

/// The PAUSEs an intercepted spin loop runs before it exits, on a CPU
/// with the pause filter (KVM's default, `pause_filter_count`).
pub const PAUSE_FILTER_COUNT: u16 = 3000;
/// The cycles between two PAUSEs above which they are not one spin loop
/// (the filter's count starts again), on a CPU with the threshold (KVM's
/// `pause_filter_thresh`).
pub const PAUSE_FILTER_THRESHOLD: u16 = 128;

/// Intercept PAUSE in `vmcb` (`on`) or stop, with the pause filter (and
/// its threshold) where `features` has it; without, every PAUSE exits.
/// The filter's fields are written only on a CPU that has them (they are
/// reserved elsewhere).
pub fn set_pause_intercept(vmcb: &mut Vmcb, features: &SvmFeatures, on: bool) {
    let misc = vmcb.read_u32(offset::INTERCEPT_MISC1);
    let wanted = if on {
        misc | INTERCEPT_PAUSE
    } else {
        misc & !INTERCEPT_PAUSE
    };
    if wanted == misc {
        return;
    }
    vmcb.write_u32(offset::INTERCEPT_MISC1, wanted);
    if on && features.pause_filter {
        vmcb.write_u16(offset::PAUSE_FILTER_COUNT, PAUSE_FILTER_COUNT);
        if features.pause_filter_threshold {
            vmcb.write_u16(offset::PAUSE_FILTER_THRESHOLD, PAUSE_FILTER_THRESHOLD);
        }
    }
}

/// Clear the read and write intercept bits of `msr` in an MSR permission
/// map (two bits per MSR in three 8 KiB-MSR ranges, APM vol. 2 15.11).
fn pass_msr_through(map: &mut [u8], msr: u32) {
    let (range_base, range_offset) = match msr {
        0..=0x1fff => (0, 0),
        0xc000_0000..=0xc000_1fff => (0xc000_0000, 0x800),
        0xc001_0000..=0xc001_1fff => (0xc001_0000, 0x1000),
        _ => return,
    };
    let bit = (msr - range_base) as usize * 2;
    if let Some(byte) = map.get_mut(range_offset + bit / 8) {
        *byte &= !(0b11 << (bit % 8));
    }
}

/// EFER.LMA (the CPU's; a WRMSR cannot change it).
const EFER_LMA: u64 = 1 << 10;

/// One vCPU on SVM, with nested paging ([`SvmVcpu::new`]) or shadow paging
/// ([`SvmVcpu::new_shadow`]).
pub struct SvmVcpu {
    vmcb: Vmcb,
    gprs: GuestGprs,
    npt: Option<NestedTables<Npt>>,
    iopm: Box<dyn HostMemory>,
    /// `Vm::direct_ports_generation` the I/O permission map was built for.
    iopm_generation: u64,
    _msrpm: Box<dyn HostMemory>,
    features: SvmFeatures,
    asid: u32,
    /// Shadow paging state, when nested paging is not used.
    shadow: Option<shadow::ShadowState>,
    /// The guest's x87/SSE/AVX registers and XCR0.
    xstate: ExtendedState,
    /// EFER bits the guest may write (from CPUID).
    efer_writable: u64,
    /// The CPU's MAXPHYADDR, for the VMRUN checks.
    max_phys_bits: u8,
    /// An injected NMI's handler has not returned yet: SVM keeps no NMI
    /// blocking a VMM can read, so the vCPU tracks it (IRET intercepted
    /// while it is set), as hardware would hold further NMIs.
    nmi_masked: bool,
    /// The RIP of an intercepted IRET that ends the NMI handler: NMIs open
    /// again once it retires. The IRET runs with RFLAGS.TF set and #DB
    /// intercepted, so the exit comes right after it (the next NMI is then
    /// delivered before the interrupted code goes on, as on hardware); an
    /// IRET that faults instead opens NMIs at the first exit where the
    /// guest has moved past it.
    iret_rip: Option<u64>,
    /// While that IRET is stepped: the guest's own RFLAGS.TF and DR6 from
    /// before it (a trap the guest asked for is its own; otherwise DR6 is
    /// put back).
    iret_step: Option<(bool, u64)>,
    /// The guest's DR0-DR3 (VMRUN does not switch them).
    debug: crate::debug_registers::GuestDebugRegisters,
    /// The host's debugger (a gdb stub), when it debugs this guest.
    host_debug: Option<HostDebug>,
    /// Where the guest stopped for it, not yet taken.
    debug_stop: Option<DebugStop>,
    /// While it steps the guest: the RIP of the last exit (an instruction
    /// the exit loop completed there is the step).
    step_exit_rip: Option<u64>,
    /// VMRUN refused the guest's own instruction once in this run (a
    /// second refusal is the VMM's fault, see `end_entry`).
    refused_before: bool,
    /// The guest page-table walks of earlier emulations (checked
    /// against the guest's tables at every use).
    translation_cache: crate::emulator::TranslationCache,
    /// The instructions earlier emulations decoded (reused only for the
    /// same bytes at the same RIP).
    decode_cache: crate::emulator::DecodeCache,
}

/// What the host's debugger changed in the VMCB for one entry, to be put
/// back after the exit.
#[derive(Clone, Copy)]
struct DebugEntry {
    debug: HostDebug,
    /// The guest's own RFLAGS.TF.
    guest_tf: bool,
    /// The guest's DR6 and DR7.
    dr6: u64,
    dr7: u64,
    /// Intercept bits added (exceptions, first instruction word).
    exceptions: u32,
    misc: u32,
}

impl SvmVcpu {
    /// A vCPU of `vm` in the reset state. `asid` must be non-zero and
    /// different for every vCPU that runs on this CPU.
    pub fn new(svm: &Svm, vm: &Vm, asid: u32) -> Result<Self, SvmError> {
        let host = vm.host();
        let page = host.alloc_memory(4096, 4096).map_err(SvmError::Host)?;
        let vmcb = Vmcb::new(page);
        vmcb.phys().ok_or(SvmError::NoHostPhys)?;
        // Intercept every port and every MSR: unclaimed ports still exit,
        // so nothing reaches real hardware.
        let mut iopm = host.alloc_memory(3 * 4096, 4096).map_err(SvmError::Host)?;
        iopm.as_mut_slice().fill(0xff);
        let mut msrpm = host.alloc_memory(2 * 4096, 4096).map_err(SvmError::Host)?;
        msrpm.as_mut_slice().fill(0xff);
        for msr in crate::vcpu::PASS_THROUGH {
            pass_msr_through(msrpm.as_mut_slice(), msr);
        }
        let iopm_pa = phys_of(iopm.as_ref())?;
        let msrpm_pa = phys_of(msrpm.as_ref())?;
        let mut me = Self {
            vmcb,
            gprs: GuestGprs::default(),
            npt: None,
            iopm,
            iopm_generation: 0,
            _msrpm: msrpm,
            features: svm.features(),
            asid: asid.max(1),
            shadow: None,
            xstate: ExtendedState::new(svm.xstate.clone())
                .keep_host_state(host.uses_extended_state()),
            efer_writable: consistency::efer_writable(),
            max_phys_bits: consistency::max_phys_bits(),
            nmi_masked: false,
            iret_rip: None,
            iret_step: None,
            debug: Default::default(),
            host_debug: None,
            debug_stop: None,
            step_exit_rip: None,
            refused_before: false,
            translation_cache: crate::emulator::TranslationCache::new(),
            decode_cache: crate::emulator::DecodeCache::new(),
        };
        me.vmcb.write_u64(offset::IOPM_BASE, iopm_pa);
        me.vmcb.write_u64(offset::MSRPM_BASE, msrpm_pa);
        me.vmcb.write_u32(
            offset::INTERCEPT_MISC1,
            INTERCEPT_INTR
                | INTERCEPT_NMI
                | INTERCEPT_CPUID
                | INTERCEPT_HLT
                | INTERCEPT_INVLPGA
                | INTERCEPT_IOIO
                | INTERCEPT_MSR
                | INTERCEPT_SHUTDOWN,
        );
        me.vmcb.write_u32(
            offset::INTERCEPT_MISC2,
            INTERCEPT_SVM_INSTRUCTIONS | INTERCEPT_XSETBV,
        );
        me.vmcb.write_u32(offset::ASID, me.asid);
        // The guest's TSC starts at zero, as after power-on.
        me.vmcb.write_u64(
            offset::TSC_OFFSET,
            crate::vcpu::msr_host_tsc().wrapping_neg(),
        );
        // V_INTR_MASKING: the host's RFLAGS.IF, not the guest's, masks
        // physical interrupts while the guest runs.
        me.vmcb.write_u64(offset::V_INTR, 1 << 24);
        me.vmcb.write_u64(offset::NP_ENABLE, 1);
        me.reset();
        Ok(me)
    }

    /// Rebuild the nested page tables if the memory map changed.
    fn sync_nested_tables(&mut self, vm: &Vm) -> Result<(), ExitError> {
        let current = self.npt.as_ref().map(|t| t.generation());
        if current == Some(vm.memory().generation()) {
            // Pages copied on write map the VM's own frames now.
            if let Some(tables) = self.npt.as_mut() {
                let changed = tables.update_copied(vm.host(), vm.memory()).map_err(|e| {
                    ExitError::EntryFailed {
                        detail: format!("{e}"),
                    }
                })?;
                if changed > 0 {
                    self.vmcb.write_u8(offset::TLB_CONTROL, 3);
                }
            }
            return Ok(());
        }
        let tables = NestedTables::<Npt>::build(vm.host(), vm.memory()).map_err(|e| {
            ExitError::EntryFailed {
                detail: format!("{e}"),
            }
        })?;
        self.vmcb.write_u64(offset::N_CR3, tables.root().0);
        // Flush this ASID's TLB entries: the old translations are stale.
        self.vmcb.write_u8(offset::TLB_CONTROL, 3);
        self.npt = Some(tables);
        Ok(())
    }

    /// Rebuild the I/O permission map if the VM's pass-through ports
    /// changed: every port exits except those a device monitor lets through
    /// (see `crate::dmm`).
    fn sync_io_permissions(&mut self, vm: &Vm) {
        let generation = vm.direct_ports_generation();
        if generation == self.iopm_generation {
            return;
        }
        let map = self.iopm.as_mut_slice();
        map.fill(0xff);
        for direct in vm.direct_ports() {
            for (first, count) in direct.ranges() {
                for port in (u32::from(first)..u32::from(first) + u32::from(count)).take(0x1_0000) {
                    let port = port as usize;
                    if let Some(byte) = map.get_mut(port / 8) {
                        *byte &= !(1 << (port % 8));
                    }
                }
            }
        }
        self.iopm_generation = generation;
    }

    fn next_rip(&self, length: u64) -> u64 {
        next_rip(&self.vmcb, self.features.nrip_save, length)
    }

    /// XSETBV: #UD without CR4.OSXSAVE, #GP outside CPL 0 or for a value
    /// the model refuses; otherwise the guest's XCR0 changes and RIP moves
    /// past the 3-byte instruction.
    fn xsetbv(&mut self) {
        // An event the exit interrupted is not possible here (XSETBV is an
        // instruction), so EXITINTINFO needs no re-injection.
        let value = (self.gprs.rdx << 32) | (self.gpr(0) & 0xffff_ffff);
        let osxsave = self.control().cr4 & crate::paging::CR4_OSXSAVE != 0;
        let cpl = self.cpl();
        match self
            .xstate
            .xsetbv(self.gprs.rcx as u32, value, osxsave, cpl)
        {
            Ok(()) => {
                let next = self.next_rip(3);
                self.set_rip(next);
            }
            Err(e) => {
                self.inject(Event::Exception(e));
            }
        }
    }

    /// An error exit from a guest that passed the checks when it entered:
    /// the guest itself made CR0 or CR4 illegal with a MOV the CPU should
    /// have refused with #GP. Real CPUs do; QEMU's TCG lets CR0.NW without
    /// CR0.CD (and similar) through, then ends the guest's run as a failed
    /// VMRUN some instructions later, past the point where the #GP belonged.
    /// The VM stops naming the rule and the quirk; `None` for any other
    /// error exit.
    fn native_illegal_state(&self, entered: &consistency::GuestState) -> Option<Exit> {
        let now = self.guest_state();
        let rule = consistency::first_violation(&now)?;
        if now.cr0 == entered.cr0 && now.cr4 == entered.cr4 {
            return None;
        }
        Some(Exit::Error(ExitError::EntryFailed {
            detail: format!(
                "the guest wrote CR0 {:#x} CR4 {:#x} ({rule}) with its own MOV; a real CPU \
                 raises #GP there, this one (QEMU TCG) ended the guest's run instead",
                now.cr0, now.cr4
            ),
        }))
    }

    /// The fields VMRUN's consistency checks read.
    fn guest_state(&self) -> consistency::GuestState {
        consistency::GuestState {
            cr0: self.vmcb.read_u64(offset::CR0),
            cr3: self.vmcb.read_u64(offset::CR3),
            cr4: self.vmcb.read_u64(offset::CR4),
            efer: self.vmcb.read_u64(offset::EFER),
            dr6: self.vmcb.read_u64(offset::DR6),
            dr7: self.vmcb.read_u64(offset::DR7),
            cs_attributes: self.vmcb.segment(Segment::Cs).attributes,
            event_injection: self.vmcb.read_u64(offset::EVENT_INJ),
            max_phys_bits: self.max_phys_bits,
        }
    }

    /// A nested page fault while an event was being delivered, on memory
    /// this VM does not have (the IDT, GDT, stack or their page tables
    /// point there): re-entering would only fault again, so the delivery
    /// fails as on hardware (see [`crate::vcpu::delivery_fault`]); with
    /// `DoubleFault` the #DF is already in EVENTINJ. `None` for any other
    /// nested page fault.
    fn undeliverable_event(&mut self, vm: &Vm) -> Option<crate::vcpu::DeliveryFault> {
        let int_info = self.vmcb.read_u64(offset::EXIT_INT_INFO);
        let gpa = self.vmcb.read_u64(offset::EXIT_INFO2);
        if int_info & (1 << 31) == 0 || vm.memory().kind_at(gpa) == crate::memory::RegionKind::Ram {
            return None;
        }
        log::debug!("delivering event {int_info:#x} touched {gpa:#x}, which is not RAM");
        let outcome = crate::vcpu::delivery_fault(((int_info >> 8) & 7) as u8, int_info as u8);
        if outcome == crate::vcpu::DeliveryFault::DoubleFault {
            // #DF with error code 0, in place of the event.
            self.vmcb
                .write_u64(offset::EVENT_INJ, 8 | (3 << 8) | (1 << 11) | (1 << 31));
        }
        Some(outcome)
    }

    /// Before an entry that injects an exception: intercept the exceptions
    /// its delivery can raise, so a fault during the delivery comes back
    /// with the injected event in EXITINTINFO and the double-fault rules
    /// are applied here (a CPU delivering the injected event may not apply
    /// them itself: QEMU's TCG does not). Returns the intercepts added.
    fn watch_delivery(&mut self) -> u32 {
        let inj = self.vmcb.read_u64(offset::EVENT_INJ);
        if inj & (1 << 31) == 0 || (inj >> 8) & 7 != 3 {
            return 0;
        }
        let exceptions = self.vmcb.read_u32(offset::INTERCEPT_EXCEPTIONS);
        let added = INTERCEPT_DELIVERY_FAULTS & !exceptions;
        self.vmcb
            .write_u32(offset::INTERCEPT_EXCEPTIONS, exceptions | added);
        added
    }

    /// Exception `vector`, intercepted by [`Self::watch_delivery`]: during
    /// the injected event's delivery, the double-fault rules decide (#DF
    /// in its place, a shutdown, or the new exception delivered); after
    /// it (the handler faulted), the exception is the guest's. The event
    /// is in EVENTINJ for the next entry; `Some` if the vCPU shuts down.
    fn fault_in_delivery(&mut self, vector: u8) -> Option<Exit> {
        let info = self.vmcb.read_u64(offset::EXIT_INT_INFO);
        let error_code = self.vmcb.read_u64(offset::EXIT_INFO1) & 0xffff_ffff;
        let protected = self.control().cr0 & crate::paging::CR0_PE != 0;
        let (vector, error_code) = if info & (1 << 31) != 0 {
            match crate::vcpu::fault_during_delivery(((info >> 8) & 7) as u8, info as u8, vector) {
                Some(crate::vcpu::DeliveryFault::Shutdown) => return Some(Exit::Shutdown),
                Some(crate::vcpu::DeliveryFault::DoubleFault) => (8, 0),
                None => (vector, error_code),
            }
        } else {
            (vector, error_code)
        };
        if vector == 14 {
            self.vmcb
                .write_u64(offset::CR2, self.vmcb.read_u64(offset::EXIT_INFO2));
        }
        let mut event = u64::from(vector) | (3 << 8) | (1 << 31);
        if protected {
            event |= (1 << 11) | (error_code << 32);
        }
        self.vmcb.write_u64(offset::EVENT_INJ, event);
        None
    }

    /// Run the intercepted IRET at RIP `rip` with RFLAGS.TF set and #DB
    /// intercepted: the exit after it says NMIs are open again.
    fn step_iret(&mut self, rip: u64) {
        let rflags = self.vmcb.read_u64(offset::RFLAGS);
        let dr6 = self.vmcb.read_u64(offset::DR6);
        self.iret_rip = Some(rip);
        self.iret_step = Some((rflags & RFLAGS_TF != 0, dr6));
        self.vmcb.write_u64(offset::RFLAGS, rflags | RFLAGS_TF);
        self.set_debug_intercept(true);
    }

    /// The stepped IRET is over (it retired, or faulted, or the vCPU was
    /// reset): #DB is the guest's own again.
    fn end_iret_step(&mut self) {
        self.iret_step = None;
        self.set_debug_intercept(false);
    }

    /// Intercept #DB or not.
    fn set_debug_intercept(&mut self, on: bool) {
        let exceptions = self.vmcb.read_u32(offset::INTERCEPT_EXCEPTIONS);
        let exceptions = if on {
            exceptions | INTERCEPT_DB
        } else {
            exceptions & !INTERCEPT_DB
        };
        self.vmcb
            .write_u32(offset::INTERCEPT_EXCEPTIONS, exceptions);
    }

    /// Intercept IRET (while an injected NMI's handler runs) or not.
    fn set_iret_intercept(&mut self, on: bool) {
        let misc = self.vmcb.read_u32(offset::INTERCEPT_MISC1);
        let misc = if on {
            misc | INTERCEPT_IRET
        } else {
            misc & !INTERCEPT_IRET
        };
        self.vmcb.write_u32(offset::INTERCEPT_MISC1, misc);
    }

    /// Let the host's debugger (a gdb stub) debug this guest from the next
    /// entry on (`None`: the guest's debugging is its own again). While
    /// it does, #BP and #DB are intercepted (and INTn, when it has
    /// planted INT3s: QEMU's TCG reports INT3 as INTn), its breakpoints
    /// are in DR0-DR3 with its DR7 while the guest runs (the guest's own
    /// DR0-DR3 and DR7 are kept aside and put back after each exit), and
    /// a step runs the guest with RFLAGS.TF, which the guest is not shown.
    /// A stop ends the slice; [`SvmVcpu::take_debug_stop`] says where.
    pub fn set_host_debug(&mut self, debug: Option<HostDebug>) {
        self.host_debug = debug;
        self.debug_stop = None;
        self.step_exit_rip = None;
    }

    /// Where the guest stopped for the host's debugger, once.
    pub fn take_debug_stop(&mut self) -> Option<DebugStop> {
        self.debug_stop.take()
    }

    /// The linear address of the next instruction.
    fn linear_pc(&self) -> u64 {
        self.segment(Segment::Cs).base.wrapping_add(self.rip())
    }

    /// Before an entry under the host's debugger: its intercepts, TF for
    /// a step, its breakpoints in DR7 (DR0-DR3 are loaded by `run`).
    fn enter_host_debug(&mut self, debug: HostDebug) -> DebugEntry {
        let rflags = self.vmcb.read_u64(offset::RFLAGS);
        let exceptions = self.vmcb.read_u32(offset::INTERCEPT_EXCEPTIONS);
        let misc = self.vmcb.read_u32(offset::INTERCEPT_MISC1);
        let entry = DebugEntry {
            debug,
            guest_tf: rflags & RFLAGS_TF != 0,
            dr6: self.vmcb.read_u64(offset::DR6),
            dr7: self.vmcb.read_u64(offset::DR7),
            exceptions: (INTERCEPT_DB | INTERCEPT_BP) & !exceptions,
            misc: if debug.software_breakpoints {
                INTERCEPT_INTN & !misc
            } else {
                0
            },
        };
        self.vmcb
            .write_u32(offset::INTERCEPT_EXCEPTIONS, exceptions | entry.exceptions);
        self.vmcb
            .write_u32(offset::INTERCEPT_MISC1, misc | entry.misc);
        if debug.step {
            self.vmcb.write_u64(offset::RFLAGS, rflags | RFLAGS_TF);
        }
        if debug.has_breakpoints() {
            self.vmcb.write_u64(offset::DR7, debug.dr7());
        }
        entry
    }

    /// After the exit: the guest's TF, DR7 and intercepts back.
    fn leave_host_debug(&mut self, entry: &DebugEntry) {
        let exceptions = self.vmcb.read_u32(offset::INTERCEPT_EXCEPTIONS);
        self.vmcb
            .write_u32(offset::INTERCEPT_EXCEPTIONS, exceptions & !entry.exceptions);
        let misc = self.vmcb.read_u32(offset::INTERCEPT_MISC1);
        self.vmcb
            .write_u32(offset::INTERCEPT_MISC1, misc & !entry.misc);
        if entry.debug.step && !entry.guest_tf {
            let rflags = self.vmcb.read_u64(offset::RFLAGS);
            self.vmcb.write_u64(offset::RFLAGS, rflags & !RFLAGS_TF);
        }
        if entry.debug.has_breakpoints() {
            self.vmcb.write_u64(offset::DR7, entry.dr7);
        }
    }

    /// An exit under the host's debugger: `Some(true)` if the guest
    /// stopped for it (the stop is recorded), `Some(false)` if the exit
    /// was handled here and the guest is to be entered again, `None` if
    /// the exit is not the debugger's.
    fn host_debug_exit(&mut self, vm: &Vm, code: ExitCode, entry: &DebugEntry) -> Option<bool> {
        match code {
            ExitCode::Exception(1) if self.iret_step.is_none() => {
                let dr6 = self.vmcb.read_u64(offset::DR6);
                let ours = (0..4)
                    .filter(|i| entry.debug.breakpoints[*i].is_some())
                    .any(|i| dr6 & (1 << i) != 0);
                if entry.debug.step || ours {
                    // The guest does not see the debugger's #DB in DR6.
                    self.vmcb.write_u64(offset::DR6, entry.dr6);
                    self.debug_stop = Some(DebugStop::from_dr6(dr6, self.linear_pc()));
                    Some(true)
                } else {
                    // The guest's own trap (its TF): it takes it.
                    self.vmcb
                        .write_u64(offset::EVENT_INJ, 1 | (3 << 8) | (1 << 31));
                    Some(false)
                }
            }
            ExitCode::Exception(3) => {
                self.debug_stop = Some(DebugStop {
                    kind: StopKind::Int3,
                    pc: self.linear_pc(),
                });
                Some(true)
            }
            ExitCode::Swint => {
                let pc = self.linear_pc();
                let mut bytes = [0u8; 15];
                let n = crate::host_debug::read_linear(vm.memory(), self.control(), pc, &mut bytes);
                let long = self.control().efer & EFER_LMA != 0;
                let (vector, len) = match software_interrupt(&bytes[..n], long) {
                    Some(SoftInt::Int3) => {
                        self.debug_stop = Some(DebugStop {
                            kind: StopKind::Int3,
                            pc,
                        });
                        return Some(true);
                    }
                    Some(SoftInt::Int(vector, len)) => (Some(vector), len),
                    // INTO raises #OF only with RFLAGS.OF set.
                    Some(SoftInt::Into(len)) => {
                        ((self.rflags() & (1 << 11) != 0).then_some(4), len)
                    }
                    None => {
                        // Not an instruction we know as INTn: the guest
                        // gets #UD, as for one that does not decode.
                        self.vmcb
                            .write_u64(offset::EVENT_INJ, 6 | (3 << 8) | (1 << 31));
                        return Some(false);
                    }
                };
                // The guest's own INT n: delivered as the instruction
                // would, returning after it.
                let next = self.rip().wrapping_add(len as u64);
                self.set_rip(next);
                self.vmcb.write_u64(offset::NEXT_RIP, next);
                if let Some(v) = vector {
                    self.vmcb
                        .write_u64(offset::EVENT_INJ, u64::from(v) | (4 << 8) | (1 << 31));
                }
                Some(false)
            }
            _ => None,
        }
    }

    fn decode_exit(&mut self, vm: &Vm) -> Exit {
        decode_exit(
            &mut self.vmcb,
            self.features.nrip_save,
            self.features.decode_assists,
            vm.memory(),
        )
    }
}

/// An INTn-class instruction, as [`software_interrupt`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SoftInt {
    /// INT3 (0xCC).
    Int3,
    /// INT n (0xCD n): the vector and the instruction's length.
    Int(u8, usize),
    /// INTO (0xCE): its length.
    Into(usize),
}

/// The INTn-class instruction at the start of `bytes` (legacy prefixes,
/// and REX in long mode, skipped), or `None` if it is not one.
fn software_interrupt(bytes: &[u8], long_mode: bool) -> Option<SoftInt> {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let prefix = matches!(
            b,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
        ) || (long_mode && (0x40..=0x4f).contains(&b));
        if !prefix || i >= 14 {
            break;
        }
        i += 1;
    }
    match bytes.get(i)? {
        0xcc => Some(SoftInt::Int3),
        0xcd => bytes.get(i + 1).map(|v| SoftInt::Int(*v, i + 2)),
        0xce if !long_mode => Some(SoftInt::Into(i + 1)),
        _ => None,
    }
}

/// The RIP after an intercepted instruction of `length` bytes: the VMCB's
/// next RIP when the CPU saves it, else the guest RIP plus `length`.
fn next_rip(vmcb: &Vmcb, nrip_save: bool, length: u64) -> u64 {
    if nrip_save {
        vmcb.read_u64(offset::NEXT_RIP)
    } else {
        vmcb.read_u64(offset::RIP).wrapping_add(length)
    }
}

/// Decode the #VMEXIT recorded in `vmcb` into the backend-neutral [`Exit`]:
/// EXITCODE, EXITINFO1/2, EXITINTINFO, the next RIP (`nrip_save`: the CPU
/// saves it) and, for nested page faults, what `memory` has at the faulting
/// address, the final guest-physical address of the access and, with
/// `decode_assists`, the instruction bytes the CPU fetched. An event whose delivery the exit interrupted (EXITINTINFO
/// valid) is copied to EVENTINJ for re-injection; no other VMCB byte is
/// written. Touches no hardware: what [`SvmVcpu`] runs after every VMRUN,
/// and what the `svm_exits` fuzzer drives with arbitrary VMCBs.
pub fn decode_exit(
    vmcb: &mut Vmcb,
    nrip_save: bool,
    decode_assists: bool,
    memory: &GuestMemory,
) -> Exit {
    let code = vmcb.read_u64(offset::EXIT_CODE);
    let info1 = vmcb.read_u64(offset::EXIT_INFO1);
    let info2 = vmcb.read_u64(offset::EXIT_INFO2);
    // An event whose delivery the exit interrupted must be delivered
    // again on the next entry.
    let int_info = vmcb.read_u64(offset::EXIT_INT_INFO);
    if int_info & (1 << 31) != 0 {
        vmcb.write_u64(offset::EVENT_INJ, int_info);
    }
    match ExitCode::from_raw(code) {
        ExitCode::Ioio => io_exit(info1, info2),
        // A write to RAM shared copy-on-write: its first (the exit loop
        // copies the page, the tables map the copy, the write runs again).
        ExitCode::Npf if info1 & NPF_WRITE != 0 && memory.is_shared_page(info2) => {
            Exit::CopyOnWrite { gpa: info2 }
        }
        ExitCode::Npf if memory.kind_at(info2) == crate::memory::RegionKind::Ram => {
            // The tables say "not RAM" where the map says RAM: they were
            // built before the map last changed (handled by `run`), or
            // they are wrong, which must not go unnoticed.
            Exit::Error(ExitError::Unhandled {
                code,
                detail: format!("nested page fault on RAM at {info2:#x}, error {info1:#x}"),
            })
        }
        ExitCode::Npf => {
            let fetched = decode_assists.then(|| {
                let n = usize::from(vmcb.read_u8(offset::INSN_LEN) & 0xf);
                let mut bytes = [0u8; 15];
                for (i, b) in bytes.iter_mut().enumerate().take(n) {
                    *b = vmcb.read_u8(offset::INSN_BYTES + i);
                }
                (bytes, n)
            });
            Exit::Emulate {
                gpa: Some(info2),
                hints: npf_hints(info1, info2, fetched.as_ref().map(|(b, n)| &b[..*n])),
            }
        }
        ExitCode::Cpuid => Exit::Cpuid {
            next_rip: next_rip(vmcb, nrip_save, 2),
        },
        ExitCode::Hlt => Exit::Hlt {
            next_rip: next_rip(vmcb, nrip_save, 1),
        },
        // PAUSE is F3 90 (a spin loop's `rep; nop`); without the saved
        // next RIP a longer encoding (more prefixes) is taken as that.
        ExitCode::Pause => Exit::Pause {
            next_rip: next_rip(vmcb, nrip_save, 2),
        },
        ExitCode::Msr => Exit::Msr {
            write: info1 & 1 != 0,
            next_rip: next_rip(vmcb, nrip_save, 2),
        },
        ExitCode::Intr | ExitCode::Nmi => Exit::ExternalInterrupt,
        ExitCode::Vintr => Exit::InterruptWindow,
        ExitCode::Shutdown => Exit::Shutdown,
        ExitCode::Invlpga => Exit::VirtInstruction,
        c if c.is_svm_instruction() => Exit::VirtInstruction,
        ExitCode::Invalid => Exit::Error(ExitError::EntryFailed {
            detail: format!(
                "VMRUN refused the VMCB (exit code {code:#x}); CR0 {:#x} CR4 {:#x} EFER {:#x} CS {:?}",
                vmcb.read_u64(offset::CR0),
                vmcb.read_u64(offset::CR4),
                vmcb.read_u64(offset::EFER),
                vmcb.segment(Segment::Cs)
            ),
        }),
        _ => Exit::Error(ExitError::Unhandled {
            code,
            detail: format!(
                "info1 {info1:#x} info2 {info2:#x} rip {:#x}",
                vmcb.read_u64(offset::RIP)
            ),
        }),
    }
}

impl CpuState for SvmVcpu {
    fn gpr(&self, index: usize) -> u64 {
        let g = &self.gprs;
        match index {
            0 => self.vmcb.read_u64(offset::RAX),
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.vmcb.read_u64(offset::RSP),
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
            0 => self.vmcb.write_u64(offset::RAX, value),
            1 => g.rcx = value,
            2 => g.rdx = value,
            3 => g.rbx = value,
            4 => self.vmcb.write_u64(offset::RSP, value),
            5 => g.rbp = value,
            6 => g.rsi = value,
            7 => g.rdi = value,
            8..=15 => g.r[index - 8] = value,
            _ => {}
        }
    }
    fn rip(&self) -> u64 {
        self.vmcb.read_u64(offset::RIP)
    }
    fn set_rip(&mut self, value: u64) {
        self.vmcb.write_u64(offset::RIP, value);
        // Moving past an instruction ends its interrupt shadow.
        self.vmcb.write_u64(offset::INTERRUPT_SHADOW, 0);
    }
    fn rflags(&self) -> u64 {
        let rflags = self.vmcb.read_u64(offset::RFLAGS);
        // While the NMI handler's IRET is stepped, TF is ours, not the
        // guest's: the exit loop, the emulator and a saved state see the
        // guest's own flag.
        match self.iret_step {
            Some((false, _)) => rflags & !RFLAGS_TF,
            _ => rflags,
        }
    }
    fn set_rflags(&mut self, value: u64) {
        let value = match self.iret_step {
            Some((false, _)) => value | RFLAGS_TF,
            _ => value,
        };
        self.vmcb.write_u64(offset::RFLAGS, value);
    }
    fn segment(&self, segment: Segment) -> SegmentRegister {
        self.vmcb.segment(segment)
    }
    fn control(&self) -> ControlRegisters {
        if let Some(guest) = self.shadow_control() {
            return guest;
        }
        ControlRegisters {
            cr0: self.vmcb.read_u64(offset::CR0),
            cr3: self.vmcb.read_u64(offset::CR3),
            cr4: self.vmcb.read_u64(offset::CR4),
            efer: self.vmcb.read_u64(offset::EFER) & !EFER_SVME,
        }
    }
    crate::xstate::extended_state_methods!(xstate);
    fn cpl(&self) -> u8 {
        self.vmcb.read_u8(offset::CPL)
    }
    fn set_mov_ss_shadow(&mut self) {
        self.vmcb.write_u64(offset::INTERRUPT_SHADOW, 1);
    }
    fn translation_cache(&mut self) -> Option<&mut crate::emulator::TranslationCache> {
        Some(&mut self.translation_cache)
    }
    fn decode_cache(&mut self) -> Option<&mut crate::emulator::DecodeCache> {
        Some(&mut self.decode_cache)
    }
    fn descriptor_state(&mut self) -> Option<&mut dyn DescriptorState> {
        Some(self)
    }
    fn set_cr0(&mut self, value: u64) -> bool {
        // Under nested paging the guest's CR0 is the VMCB's (LMSW changes
        // only PE, MP, EM and TS); shadow paging keeps its own copy and
        // intercepts LMSW before it could reach the emulator.
        if self.shadow_control().is_some() {
            return false;
        }
        self.vmcb.write_u64(offset::CR0, value);
        true
    }
}

impl DescriptorState for SvmVcpu {
    fn gdtr(&self) -> DescriptorTable {
        let g = self.vmcb.segment_at(offset::GDTR);
        DescriptorTable {
            base: g.base,
            limit: g.limit as u16,
        }
    }
    fn set_segment(&mut self, segment: Segment, value: SegmentRegister) {
        self.vmcb.set_segment(segment, value);
    }
    fn ldtr(&self) -> SegmentRegister {
        self.vmcb.segment_at(offset::LDTR)
    }
    fn set_cpl(&mut self, cpl: u8) {
        self.vmcb.write_u8(offset::CPL, cpl);
    }
    fn idtr(&self) -> DescriptorTable {
        let g = self.vmcb.segment_at(offset::IDTR);
        DescriptorTable {
            base: g.base,
            limit: g.limit as u16,
        }
    }
    fn tr(&self) -> SegmentRegister {
        self.vmcb.segment_at(offset::TR)
    }
    fn set_system_segment(&mut self, which: SystemSegment, value: SegmentRegister) -> bool {
        let at = match which {
            SystemSegment::Ldtr => offset::LDTR,
            SystemSegment::Tr => offset::TR,
        };
        self.vmcb.set_segment_at(at, value);
        true
    }
}

/// One SVM entry from its set-up to its end ([`SplitEntry`]).
pub struct SvmEntry {
    /// The VMCB's physical address.
    pa: u64,
    /// The guest state entered with (for a refused VMRUN's diagnosis).
    entered: consistency::GuestState,
    /// Exceptions intercepted to watch an event's delivery.
    watched: u32,
    /// What the host's debugger changed for this entry.
    debugger: Option<DebugEntry>,
    /// The debugger's breakpoints were in DR0-DR3.
    debugger_breakpoints: bool,
}

impl SplitEntry for SvmVcpu {
    type Entry = SvmEntry;
    const MAX_INTERNAL_EXITS: u32 = MAX_INTERNAL_EXITS as u32;

    fn begin_entry(&mut self, vm: &mut Vm, first: bool) -> Result<SvmEntry, Exit> {
        if first {
            if self.debug_stop.is_some() {
                // Held for the host's debugger.
                return Err(Exit::Preempted);
            }
            if self.host_debug.is_some_and(|d| d.step)
                && self.step_exit_rip.is_some_and(|at| at != self.rip())
            {
                // The exit loop completed the stepped instruction itself.
                self.debug_stop = Some(DebugStop {
                    kind: StopKind::Step,
                    pc: self.linear_pc(),
                });
                return Err(Exit::Preempted);
            }
            self.sync_io_permissions(vm);
            let paging = if self.shadow.is_some() {
                self.shadow_enter(vm)
            } else {
                self.sync_nested_tables(vm)
            };
            if let Err(e) = paging {
                return Err(Exit::Error(e));
            }
            self.refused_before = false;
        }
        let Some(pa) = self.vmcb.phys() else {
            return Err(Exit::Error(ExitError::OutOfMemory));
        };
        // Clean bits are not used: the CPU reloads everything every time.
        self.vmcb.write_u32(offset::CLEAN_BITS, 0);
        let entered = self.guest_state();
        if let Some(rule) = consistency::first_violation(&entered) {
            // Every path that writes this state checks it first, so
            // this is a VMM bug: say which rule, rather than let VMRUN
            // fail with an opaque exit code.
            return Err(Exit::Error(ExitError::EntryFailed {
                detail: format!("the guest state breaks a VMRUN check: {rule}"),
            }));
        }
        let watched = self.watch_delivery();
        let debugger = self.host_debug.map(|d| self.enter_host_debug(d));
        let debugger_breakpoints = debugger.filter(|e| e.debug.has_breakpoints());
        self.xstate.switch_to_guest(vm.host().current_cpu());
        match debugger_breakpoints {
            // The debugger's breakpoints in DR0-DR3 while the guest runs.
            Some(e) => crate::debug_registers::GuestDebugRegisters {
                dr: e.debug.addresses(),
                ..self.debug
            }
            .load(false),
            None => self.debug.load(false),
        }
        Ok(SvmEntry {
            pa,
            entered,
            watched,
            debugger,
            debugger_breakpoints: debugger_breakpoints.is_some(),
        })
    }

    fn enter(&mut self, entry: &mut SvmEntry) {
        // SAFETY: SVM was enabled by `Svm::enable` (required to build
        // this vCPU); the VMCB is ours, its nested tables map only this
        // VM's memory, its permission maps intercept every MSR and every
        // port but the unhooked ports of a device passed through to
        // this VM (which the host gave to it, see `crate::dmm`); the
        // host handles the interrupts it unmasks (see
        // `instructions::vmrun`).
        unsafe { instructions::vmrun(entry.pa, &mut self.gprs) };
        if !entry.debugger_breakpoints {
            self.debug.save(false);
        }
        self.xstate.switch_to_host();
        self.vmcb.write_u8(offset::TLB_CONTROL, 0);
        self.vmcb.write_u64(offset::EVENT_INJ, 0);
    }

    fn end_entry(&mut self, vm: &mut Vm, entry: SvmEntry) -> Option<Exit> {
        let SvmEntry {
            entered,
            watched,
            debugger,
            ..
        } = entry;
        let code = ExitCode::from_raw(self.vmcb.read_u64(offset::EXIT_CODE));
        let rip = self.vmcb.read_u64(offset::RIP);
        if let Some(entry) = debugger {
            self.leave_host_debug(&entry);
            if entry.debug.step {
                self.step_exit_rip = Some(rip);
            }
        }
        if watched != 0 {
            let exceptions = self.vmcb.read_u32(offset::INTERCEPT_EXCEPTIONS);
            self.vmcb
                .write_u32(offset::INTERCEPT_EXCEPTIONS, exceptions & !watched);
            if let ExitCode::Exception(vector) = code {
                if vector < 32 && watched & (1 << vector) != 0 {
                    vm.stats_mut().record(crate::stats::ExitKind::Other);
                    return self.fault_in_delivery(vector);
                }
            }
        }
        if let Some(entry) = debugger {
            match self.host_debug_exit(vm, code, &entry) {
                Some(true) => return Some(Exit::Preempted),
                Some(false) => return None,
                None => {}
            }
        }
        if let Some((guest_tf, dr6)) = self.iret_step {
            if code == ExitCode::Exception(1) {
                // The trap right after the stepped IRET: NMIs are open.
                self.end_iret_step();
                self.nmi_masked = false;
                self.iret_rip = None;
                if guest_tf {
                    // The guest stepped the IRET itself: the trap (DR6
                    // as the CPU set it) is its own.
                    self.vmcb
                        .write_u64(offset::EVENT_INJ, 1 | (3 << 8) | (1 << 31));
                } else {
                    self.vmcb.write_u64(offset::DR6, dr6);
                }
                return Some(Exit::NmiWindow);
            }
            if self.iret_rip.is_some_and(|at| at != rip) {
                // The IRET did not retire (it faulted): the trap will
                // not come.
                self.end_iret_step();
            }
        }
        if self.iret_rip.is_some_and(|at| at != rip) {
            // The NMI handler's IRET has retired.
            self.nmi_masked = false;
            self.iret_rip = None;
        }
        match code {
            ExitCode::Invalid => {
                if let Some(exit) = self.native_illegal_state(&entered) {
                    return Some(exit);
                }
                if !self.refused_before
                    && consistency::first_violation(&self.guest_state()).is_none()
                {
                    // The state we entered with passes every check and
                    // is unchanged: what failed is one of the guest's
                    // own instructions, which QEMU's TCG ends as a
                    // failed VMRUN (a MOV to CR4 with a reserved bit)
                    // where a real CPU raises #GP, leaving RIP on it.
                    log::debug!(
                        "the CPU refused the guest's instruction at {:#x}: #GP",
                        self.rip()
                    );
                    self.inject(Event::Exception(
                        crate::emulator::Exception::GeneralProtection(0),
                    ));
                    self.refused_before = true;
                    return None;
                }
            }
            ExitCode::Xsetbv => {
                vm.stats_mut().record(crate::stats::ExitKind::Other);
                self.xsetbv();
                return None;
            }
            ExitCode::Npf => match self.undeliverable_event(vm) {
                Some(crate::vcpu::DeliveryFault::Shutdown) => return Some(Exit::Shutdown),
                Some(crate::vcpu::DeliveryFault::DoubleFault) => {
                    vm.stats_mut().record(crate::stats::ExitKind::Mmio);
                    return None;
                }
                None => {}
            },
            _ => {}
        }
        if code == ExitCode::Iret {
            // Let this IRET run, one step; NMIs open once it has.
            self.step_iret(rip);
            self.set_iret_intercept(false);
            return None;
        }
        let exit = match self.shadow_exit(vm) {
            Some(exit) => exit,
            None => self.decode_exit(vm),
        };
        if exit == Exit::InterruptWindow {
            self.request_interrupt_window(false);
        }
        Some(exit)
    }
}

impl VcpuBackend for SvmVcpu {
    fn run(&mut self, vm: &mut Vm) -> Exit {
        crate::vcpu::run_split(self, vm)
    }

    fn set_pause_exiting(&mut self, on: bool) {
        set_pause_intercept(&mut self.vmcb, &self.features, on);
    }

    fn inject(&mut self, event: Event) -> bool {
        if self.vmcb.read_u64(offset::EVENT_INJ) & (1 << 31) != 0 {
            return false;
        }
        if let Event::Exception(crate::emulator::Exception::PageFault(pf)) = event {
            self.vmcb.write_u64(offset::CR2, pf.address);
            self.shadow_note_cr2(pf.address);
        }
        if event == Event::Nmi {
            self.nmi_masked = true;
            self.iret_rip = None;
            self.end_iret_step();
            self.set_iret_intercept(true);
        }
        let protected = self.control().cr0 & crate::paging::CR0_PE != 0;
        let value = consistency::event_injection(event, protected);
        self.vmcb.write_u64(offset::EVENT_INJ, value);
        true
    }

    fn debug_trap(&mut self, bits: u64) {
        if self.vmcb.read_u64(offset::EVENT_INJ) & (1 << 31) != 0 {
            // The instruction did not complete after all: it faulted.
            return;
        }
        let dr6 = self.vmcb.read_u64(offset::DR6);
        self.vmcb
            .write_u64(offset::DR6, dr6 | (bits & (DR6_BS | 0xf)));
        // #DB: vector 1, a hardware exception without error code.
        self.vmcb
            .write_u64(offset::EVENT_INJ, 1 | (3 << 8) | (1 << 31));
    }

    fn breakpoints(&self) -> crate::emulator::Breakpoints {
        crate::emulator::Breakpoints {
            addresses: self.debug.dr,
            dr7: self.vmcb.read_u64(offset::DR7),
            io_enabled: self.control().cr4 & crate::paging::CR4_DE != 0,
        }
    }

    fn interrupts_open(&self) -> bool {
        self.rflags() & RFLAGS_IF != 0
            && self.vmcb.read_u64(offset::INTERRUPT_SHADOW) & 1 == 0
            && self.vmcb.read_u64(offset::EVENT_INJ) & (1 << 31) == 0
    }

    fn nmis_open(&self) -> bool {
        !self.nmi_masked && self.vmcb.read_u64(offset::EVENT_INJ) & (1 << 31) == 0
    }

    fn may_run_on(&self) -> bool {
        // The stepped NMI-handler IRET owns TF and #DB: the guest runs
        // until its trap.
        self.host_debug.is_none()
            && self.iret_step.is_none()
            && self.vmcb.read_u64(offset::EVENT_INJ) & (1 << 31) == 0
            && self.vmcb.read_u64(offset::INTERRUPT_SHADOW) & 1 == 0
    }

    fn backend_msr(&self, msr: u32) -> Option<u64> {
        match msr {
            crate::vcpu::MSR_EFER => Some(
                self.shadow_efer()
                    .unwrap_or(self.vmcb.read_u64(offset::EFER) & !EFER_SVME),
            ),
            _ => self.vmcb_msr(msr),
        }
    }

    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        match msr {
            crate::vcpu::MSR_EFER => {
                if self.shadow.is_some() {
                    return self.shadow_set_efer(value, self.efer_writable);
                }
                let current = self.vmcb.read_u64(offset::EFER);
                let cr0 = self.vmcb.read_u64(offset::CR0);
                match consistency::efer_write(current, cr0, value, self.efer_writable, true) {
                    Ok(efer) => {
                        self.vmcb.write_u64(offset::EFER, efer);
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => self.set_vmcb_msr(msr, value),
        }
    }

    fn reset(&mut self) {
        self.vmcb.set_reset_state();
        self.reset_vmcb_extras();
        self.debug = Default::default();
        self.nmi_masked = false;
        self.iret_rip = None;
        self.end_iret_step();
        self.set_iret_intercept(false);
        self.xstate.reset();
        // RESET zeroes the TSC.
        self.set_tsc_offset(crate::vcpu::msr_host_tsc().wrapping_neg());
        self.shadow_reset();
        // After RESET, EDX holds the processor signature.
        self.gprs = GuestGprs {
            rdx: crate::host_cpu::cpuid(1).eax.into(),
            ..GuestGprs::default()
        };
    }

    fn extended_state(&self) -> Option<&crate::xstate::ExtendedState> {
        Some(&self.xstate)
    }

    fn tsc_offset(&self) -> u64 {
        self.vmcb.read_u64(offset::TSC_OFFSET)
    }

    fn set_tsc_offset(&mut self, offset: u64) -> bool {
        self.vmcb.write_u64(offset::TSC_OFFSET, offset);
        true
    }

    fn request_interrupt_window(&mut self, on: bool) {
        let mut misc = self.vmcb.read_u32(offset::INTERCEPT_MISC1);
        let mut v_intr = self.vmcb.read_u64(offset::V_INTR);
        // V_IRQ (bit 8) with priority 0xf and V_IGN_TPR: the guest "sees"
        // a virtual interrupt as soon as it can take one, which exits.
        const V_IRQ: u64 = 1 << 8;
        const V_PRIO_IGN_TPR: u64 = (0xf << 16) | (1 << 20);
        if on {
            misc |= INTERCEPT_VINTR;
            v_intr |= V_IRQ | V_PRIO_IGN_TPR;
        } else {
            misc &= !INTERCEPT_VINTR;
            v_intr &= !(V_IRQ | V_PRIO_IGN_TPR);
        }
        self.vmcb.write_u32(offset::INTERCEPT_MISC1, misc);
        self.vmcb.write_u64(offset::V_INTR, v_intr);
    }

    fn shadow_paging(&mut self) -> Option<&mut dyn ShadowPagingBackend> {
        if self.shadow.is_some() {
            Some(self)
        } else {
            None
        }
    }
}

/// EXITINFO1 of a nested page fault: a write access.
const NPF_WRITE: u64 = 1 << 1;
/// EXITINFO1: an instruction fetch.
const NPF_FETCH: u64 = 1 << 4;
/// EXITINFO1: the fault was on the final guest-physical address of the
/// access (not on a guest page-table entry).
const NPF_FINAL: u64 = 1 << 32;
/// EXITINFO1: the fault was on a guest page-table entry.
const NPF_TABLE: u64 = 1 << 33;

/// What a nested page fault tells the emulator (EXITINFO1 `info1`,
/// EXITINFO2 `info2`, and with decode assists the `fetched` instruction
/// bytes, none when the CPU fetched none): the access's guest-physical
/// address when the fault was on the final address of a data access (not
/// on a guest page-table entry, not on an instruction fetch), and the
/// bytes, at most 15.
pub fn npf_hints(info1: u64, info2: u64, fetched: Option<&[u8]>) -> Hints {
    let data_access = info1 & (NPF_FINAL | NPF_TABLE | NPF_FETCH) == NPF_FINAL;
    Hints {
        access: data_access.then_some(AccessHint {
            gpa: info2,
            write: info1 & NPF_WRITE != 0,
            linear: None,
        }),
        bytes: fetched.filter(|b| !b.is_empty()).map(InstructionBytes::new),
    }
}

/// The exit for an IN/OUT intercept: EXITINFO1 describes the instruction
/// (type, string, REP, size, address size, port), EXITINFO2 holds the
/// next RIP.
pub fn io_exit(info1: u64, info2: u64) -> Exit {
    let port = (info1 >> 16) as u16;
    let size = match (info1 >> 4) & 0b111 {
        0b001 => 1,
        0b010 => 2,
        _ => 4,
    };
    let input = info1 & 1 != 0;
    let string = info1 & (1 << 2) != 0;
    let address_size = match (info1 >> 7) & 0b111 {
        0b001 => 16,
        0b010 => 32,
        0b100 => 64,
        _ => 0,
    };
    if string && input && address_size != 0 {
        // INS writes through ES whatever the prefixes, so the
        // exit says all there is to know. (OUTS may carry a
        // segment override, which only a decode finds.)
        return Exit::PortString(crate::emulator::PortString {
            input,
            size,
            address_size,
            rep: info1 & (1 << 3) != 0,
            segment: crate::emulator::Segment::Es,
            next_rip: info2,
        });
    }
    if info1 & 0b1100 != 0 {
        return Exit::emulate(None);
    }
    Exit::PortIo {
        port,
        size,
        write: info1 & 1 == 0,
        next_rip: info2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intn_exits_are_read_as_int3_int_n_or_into() {
        assert_eq!(software_interrupt(&[0xcc], false), Some(SoftInt::Int3));
        assert_eq!(
            software_interrupt(&[0xcd, 0x80], true),
            Some(SoftInt::Int(0x80, 2))
        );
        // Prefixes count in the length; REX only in long mode.
        assert_eq!(
            software_interrupt(&[0x66, 0x48, 0xcd, 0x21], true),
            Some(SoftInt::Int(0x21, 4))
        );
        assert_eq!(software_interrupt(&[0x48, 0xcd, 0x21], false), None);
        assert_eq!(software_interrupt(&[0xce], false), Some(SoftInt::Into(1)));
        assert_eq!(
            software_interrupt(&[0xce], true),
            None,
            "INTO is #UD in 64-bit mode"
        );
        // Cut short, or something else: not INTn.
        assert_eq!(software_interrupt(&[0xcd], false), None);
        assert_eq!(software_interrupt(&[0x66; 15], false), None);
        assert_eq!(software_interrupt(&[0x90], false), None);
        assert_eq!(ExitCode::from_raw(0x75), ExitCode::Swint);
        assert_eq!(ExitCode::Swint.raw(), 0x75);
    }

    #[test]
    fn io_exits_follow_exitinfo1() {
        // OUT DX, AL to 0x3f8.
        assert_eq!(
            io_exit(0x03f8_0000 | (1 << 4), 0x1001),
            Exit::PortIo {
                port: 0x3f8,
                size: 1,
                write: true,
                next_rip: 0x1001
            }
        );
        // IN EAX from 0xcfc.
        assert_eq!(
            io_exit(0x0cfc_0000 | (1 << 6) | 1, 7),
            Exit::PortIo {
                port: 0xcfc,
                size: 4,
                write: false,
                next_rip: 7
            }
        );
        // REP INSW with 16-bit addressing: carried out from the exit's
        // particulars.
        assert_eq!(
            io_exit(
                0x0170_0000 | (1 << 7) | (1 << 5) | (1 << 3) | (1 << 2) | 1,
                9
            ),
            Exit::PortString(crate::emulator::PortString {
                input: true,
                size: 2,
                address_size: 16,
                rep: true,
                segment: crate::emulator::Segment::Es,
                next_rip: 9,
            })
        );
        // OUTSB (its segment may be overridden) and REP IN: decoded.
        assert_eq!(
            io_exit(0x03f8_0000 | (1 << 8) | (1 << 4) | (1 << 2), 9),
            Exit::emulate(None)
        );
        assert_eq!(
            io_exit(0x03f8_0000 | (1 << 8) | (1 << 4) | (1 << 3) | 1, 9),
            Exit::emulate(None)
        );
    }

    #[test]
    fn nested_page_faults_pass_the_final_address_and_fetched_bytes() {
        let bytes = [0x89u8, 0x03, 0xcc];
        // A write to the final address, with decode-assist bytes.
        let h = npf_hints(NPF_FINAL | NPF_WRITE | 1, 0xfee0_0010, Some(&bytes));
        assert_eq!(
            h.access,
            Some(AccessHint {
                gpa: 0xfee0_0010,
                write: true,
                linear: None
            })
        );
        assert_eq!(h.bytes.map(|b| b.as_slice().to_vec()), Some(bytes.to_vec()));
        // A read; no bytes fetched.
        let h = npf_hints(NPF_FINAL, 0xfee0_0010, Some(&[]));
        assert_eq!(h.access.map(|a| a.write), Some(false));
        assert_eq!(h.bytes, None);
        // On a guest page-table entry, on a fetch, or without saying which:
        // no address.
        for info1 in [
            NPF_TABLE,
            NPF_TABLE | NPF_FINAL,
            NPF_FINAL | NPF_FETCH,
            NPF_WRITE,
        ] {
            assert_eq!(
                npf_hints(info1, 0xfee0_0010, None).access,
                None,
                "{info1:#x}"
            );
        }
    }

    #[test]
    fn decode_exit_reads_decode_assist_bytes_only_when_the_cpu_has_them() {
        use crate::host::Host;
        let host = crate::test_host::TestHost::new();
        let mut vmcb = Vmcb::new(host.alloc_memory(4096, 4096).unwrap());
        let memory = GuestMemory::new();
        vmcb.write_u64(offset::EXIT_CODE, 0x400);
        vmcb.write_u64(offset::EXIT_INFO1, NPF_FINAL | NPF_WRITE);
        vmcb.write_u64(offset::EXIT_INFO2, 0xfee0_0010);
        // A count with garbage above bits 3:0, and more bytes than it says.
        vmcb.write_u8(offset::INSN_LEN, 0xf2);
        for i in 0..15 {
            vmcb.write_u8(offset::INSN_BYTES + i, 0x90 + i as u8);
        }
        let Exit::Emulate { gpa, hints } = decode_exit(&mut vmcb, false, true, &memory) else {
            panic!("not an emulation exit");
        };
        assert_eq!(gpa, Some(0xfee0_0010));
        assert_eq!(hints.access.map(|a| a.gpa), Some(0xfee0_0010));
        assert_eq!(
            hints.bytes.map(|b| b.as_slice().to_vec()),
            Some(alloc::vec![0x90, 0x91])
        );
        // Fifteen at most.
        vmcb.write_u8(offset::INSN_LEN, 0x0f);
        let Exit::Emulate { hints, .. } = decode_exit(&mut vmcb, false, true, &memory) else {
            panic!("not an emulation exit");
        };
        assert_eq!(hints.bytes.map(|b| b.as_slice().len()), Some(15));
        // Without decode assists the field means nothing.
        let Exit::Emulate { hints, .. } = decode_exit(&mut vmcb, false, false, &memory) else {
            panic!("not an emulation exit");
        };
        assert_eq!(hints.bytes, None);
    }

    #[test]
    fn pause_is_intercepted_only_when_asked_with_the_filter_where_the_cpu_has_it() {
        use crate::host::Host;
        let host = crate::test_host::TestHost::new();
        let mut vmcb = Vmcb::new(host.alloc_memory(4096, 4096).unwrap());
        vmcb.write_u32(offset::INTERCEPT_MISC1, INTERCEPT_HLT | INTERCEPT_IRET);
        let plain = SvmFeatures {
            nrip_save: true,
            decode_assists: false,
            asids: 8,
            pause_filter: false,
            pause_filter_threshold: false,
        };
        // QEMU's TCG: no filter, so every PAUSE exits; the filter's
        // (reserved) fields stay 0.
        set_pause_intercept(&mut vmcb, &plain, true);
        assert_eq!(
            vmcb.read_u32(offset::INTERCEPT_MISC1),
            INTERCEPT_HLT | INTERCEPT_IRET | (1 << 23)
        );
        assert_eq!(vmcb.read_u16(offset::PAUSE_FILTER_COUNT), 0);
        assert_eq!(vmcb.read_u16(offset::PAUSE_FILTER_THRESHOLD), 0);
        // Off again: the other intercepts stay.
        set_pause_intercept(&mut vmcb, &plain, false);
        assert_eq!(
            vmcb.read_u32(offset::INTERCEPT_MISC1),
            INTERCEPT_HLT | INTERCEPT_IRET
        );
        // With the filter and its threshold: a spin loop exits after
        // 3000 PAUSEs less than 128 cycles apart.
        let filtered = SvmFeatures {
            pause_filter: true,
            pause_filter_threshold: true,
            ..plain
        };
        set_pause_intercept(&mut vmcb, &filtered, true);
        assert_ne!(vmcb.read_u32(offset::INTERCEPT_MISC1) & (1 << 23), 0);
        assert_eq!(vmcb.read_u16(offset::PAUSE_FILTER_COUNT), 3000);
        assert_eq!(vmcb.read_u16(offset::PAUSE_FILTER_THRESHOLD), 128);
    }

    #[test]
    fn a_pause_exit_resumes_after_the_instruction() {
        use crate::host::Host;
        let host = crate::test_host::TestHost::new();
        let mut vmcb = Vmcb::new(host.alloc_memory(4096, 4096).unwrap());
        let memory = GuestMemory::new();
        assert_eq!(ExitCode::from_raw(0x77), ExitCode::Pause);
        vmcb.write_u64(offset::EXIT_CODE, 0x77);
        vmcb.write_u64(offset::RIP, 0x1000);
        vmcb.write_u64(offset::NEXT_RIP, 0x1003);
        // The CPU's next RIP where it saves one (a prefixed PAUSE), else
        // past F3 90.
        assert_eq!(
            decode_exit(&mut vmcb, true, false, &memory),
            Exit::Pause { next_rip: 0x1003 }
        );
        assert_eq!(
            decode_exit(&mut vmcb, false, false, &memory),
            Exit::Pause { next_rip: 0x1002 }
        );
    }

    #[test]
    fn msr_permission_map_bits_follow_the_apm_layout() {
        let mut map = [0xffu8; 0x2000];
        pass_msr_through(&mut map, 0x174); // SYSENTER_CS: bits 0x2e8, 0x2e9
        assert_eq!(map[0x2e8 / 8], 0xfc);
        pass_msr_through(&mut map, 0xc000_0082); // LSTAR: bits 0x104-0x105 of 0x800
        assert_eq!(map[0x820], 0xcf);
        pass_msr_through(&mut map, 0xc001_0000);
        assert_eq!(map[0x1000], 0xfc);
        pass_msr_through(&mut map, 0x4000_0000); // outside the map: ignored
        assert_eq!(map.iter().filter(|b| **b != 0xff).count(), 3);
    }
}
