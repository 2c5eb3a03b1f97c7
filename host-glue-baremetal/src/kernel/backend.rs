//! The hardware backend the host runs its VMs on: AMD SVM or Intel VMX,
//! chosen from CPUID or by `cpu=` on the command line, and the vCPU of
//! either kind behind one type, so the scheduler and the exit loop do not
//! care which.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use host_glue_baremetal::cmdline::CpuBackend;
use vmm_core::emulator::{CpuState, Segment, SegmentRegister};
use vmm_core::host::Host;
use vmm_core::host_debug::{DebugStop, HostDebug};
use vmm_core::shadow_paging::{ShadowConfig, ShadowStats};
use vmm_core::svm::{Svm, SvmEntry, SvmVcpu};
use vmm_core::vcpu::{
    self, ArchState, Exit, InterruptSource, MsrFile, Prepared, RunOutcome, Slice, SplitEntry, Turn,
};
use vmm_core::vm::Vm;
use vmm_core::vmx::{Vmx, VmxEntry, VmxVcpu};
use vmm_devices::pc::Pc;

/// Virtualization switched on for this CPU.
pub enum Backend {
    /// AMD SVM with nested paging.
    Svm(Svm),
    /// Intel VMX with EPT and unrestricted guest.
    Vmx(Vmx),
}

/// What CPUID says this CPU has.
#[derive(Clone, Copy, Debug)]
pub struct CpuFeatures {
    /// SVM with nested paging.
    pub svm: bool,
    /// VMX.
    pub vmx: bool,
}

/// Look at CPUID.
pub fn detect() -> CpuFeatures {
    let cpuid = x86::cpuid::CpuId::new();
    let svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_svm())
        && cpuid.get_svm_info().is_some_and(|s| s.has_nested_paging());
    let vmx = cpuid.get_feature_info().is_some_and(|f| f.has_vmx());
    CpuFeatures { svm, vmx }
}

/// Switch on the backend `choice` asks for (`Auto`: SVM if the CPU has it
/// with nested paging, else VMX).
pub fn enable(choice: CpuBackend, host: &dyn Host) -> Result<Backend, String> {
    let features = detect();
    let use_vmx = match choice {
        CpuBackend::Svm => false,
        CpuBackend::Vmx => true,
        CpuBackend::Auto => !features.svm && features.vmx,
    };
    if use_vmx {
        install_task_register();
        let vmx = Vmx::enable(host).map_err(|e| format!("cannot use VMX: {e}"))?;
        log::info!(
            "VMX enabled: EPT, unrestricted guest{}; controls {:x?}",
            if vmx.controls().vpid { ", VPID" } else { "" },
            vmx.controls()
        );
        Ok(Backend::Vmx(vmx))
    } else {
        let svm = Svm::enable(host).map_err(|e| format!("cannot use SVM: {e}"))?;
        log::info!("SVM enabled: {:?}", svm.features());
        Ok(Backend::Svm(svm))
    }
}

impl Backend {
    /// A vCPU for `vm`; `id` (from 1) tags its TLB entries (ASID/VPID).
    pub fn vcpu(&self, vm: &Vm, id: u32) -> Result<Vcpu, String> {
        match self {
            Backend::Svm(svm) => SvmVcpu::new(svm, vm, id)
                .map(|v| Vcpu::Svm(Box::new(v)))
                .map_err(|e| format!("{e}")),
            Backend::Vmx(vmx) => VmxVcpu::new(vmx, vm, id.min(0xffff) as u16)
                .map(|v| Vcpu::Vmx(Box::new(v)))
                .map_err(|e| format!("{e}")),
        }
    }

    /// A vCPU for `vm` that runs with shadow paging (nested paging off);
    /// SVM only so far.
    pub fn shadow_vcpu(&self, vm: &Vm, id: u32) -> Result<Vcpu, String> {
        match self {
            Backend::Svm(svm) => SvmVcpu::new_shadow(svm, vm, id, ShadowConfig::default())
                .map(|v| Vcpu::Svm(Box::new(v)))
                .map_err(|e| format!("{e}")),
            Backend::Vmx(_) => Err(String::from("shadow paging is not implemented on VMX yet")),
        }
    }

    /// Another vCPU for `vm` with shadow paging, on the same shadow pager as
    /// its sibling `bsp` (one pager per VM: a page-table write by any vCPU
    /// reaches every vCPU's trees).
    pub fn shadow_vcpu_sharing(&self, vm: &Vm, id: u32, bsp: &Vcpu) -> Result<Vcpu, String> {
        let pager = match bsp {
            Vcpu::Svm(v) => v.shadow_pager(),
            Vcpu::Vmx(_) => None,
        }
        .ok_or_else(|| String::from("the first vCPU does not run with shadow paging"))?;
        match self {
            Backend::Svm(svm) => SvmVcpu::new_shadow_sharing(svm, vm, id, pager.share())
                .map(|v| Vcpu::Svm(Box::new(v)))
                .map_err(|e| format!("{e}")),
            Backend::Vmx(_) => Err(String::from("shadow paging is not implemented on VMX yet")),
        }
    }

    /// "SVM" or "VMX".
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Svm(_) => "SVM",
            Backend::Vmx(_) => "VMX",
        }
    }
}

/// One guest entry of either backend, begun and not yet ended.
pub enum Entry {
    /// On SVM.
    Svm(SvmEntry),
    /// On VMX.
    Vmx(VmxEntry),
}

/// A vCPU of either backend.
pub enum Vcpu {
    /// On SVM.
    Svm(Box<SvmVcpu>),
    /// On VMX.
    Vmx(Box<VmxVcpu>),
}

impl Vcpu {
    /// Run the shared exit loop on this vCPU.
    pub fn run(
        &mut self,
        vm: &mut Vm,
        interrupts: &dyn InterruptSource,
        msrs: &mut MsrFile,
        slice: Slice,
    ) -> RunOutcome {
        match self {
            Vcpu::Svm(v) => vcpu::run(v.as_mut(), vm, interrupts, msrs, slice),
            Vcpu::Vmx(v) => vcpu::run(v.as_mut(), vm, interrupts, msrs, slice),
        }
    }

    /// Run vCPU `index` of `pc` on this vCPU.
    pub fn run_pc(&mut self, pc: &mut Pc, index: usize, slice: Slice) -> RunOutcome {
        match self {
            Vcpu::Svm(v) => pc.run_vcpu(index, v.as_mut(), slice),
            Vcpu::Vmx(v) => pc.run_vcpu(index, v.as_mut(), slice),
        }
    }

    /// The first half of vCPU `index`'s exit loop in `pc`
    /// ([`Pc::prepare_vcpu`]), for a host CPU that runs one of a PC's
    /// vCPUs while others run elsewhere.
    pub fn prepare_pc(&mut self, pc: &mut Pc, index: usize, turn: &mut Turn) -> Prepared {
        match self {
            Vcpu::Svm(v) => pc.prepare_vcpu(index, v.as_mut(), turn),
            Vcpu::Vmx(v) => pc.prepare_vcpu(index, v.as_mut(), turn),
        }
    }

    /// The second half: handle `exit` ([`Pc::handle_vcpu_exit`]).
    pub fn handle_pc_exit(
        &mut self,
        pc: &mut Pc,
        index: usize,
        turn: &mut Turn,
        exit: Exit,
    ) -> Option<RunOutcome> {
        match self {
            Vcpu::Svm(v) => pc.handle_vcpu_exit(index, v.as_mut(), turn, exit),
            Vcpu::Vmx(v) => pc.handle_vcpu_exit(index, v.as_mut(), turn, exit),
        }
    }

    /// Set up a guest entry ([`SplitEntry::begin_entry`]): needs the VM.
    pub fn begin_entry(&mut self, vm: &mut Vm, first: bool) -> Result<Entry, Exit> {
        match self {
            Vcpu::Svm(v) => v.begin_entry(vm, first).map(Entry::Svm),
            Vcpu::Vmx(v) => v.begin_entry(vm, first).map(Entry::Vmx),
        }
    }

    /// The hardware entry alone ([`SplitEntry::enter`]): needs no VM, so
    /// the caller holds no lock across it.
    pub fn enter(&mut self, entry: &mut Entry) {
        match (self, entry) {
            (Vcpu::Svm(v), Entry::Svm(e)) => v.enter(e),
            (Vcpu::Vmx(v), Entry::Vmx(e)) => v.enter(e),
            // An entry begun by the other kind of vCPU: not entered
            // (`end_entry` reports it).
            _ => {}
        }
    }

    /// After the exit ([`SplitEntry::end_entry`]): `None` to enter again.
    pub fn end_entry(&mut self, vm: &mut Vm, entry: Entry) -> Option<Exit> {
        match (self, entry) {
            (Vcpu::Svm(v), Entry::Svm(e)) => v.end_entry(vm, e),
            (Vcpu::Vmx(v), Entry::Vmx(e)) => v.end_entry(vm, e),
            _ => Some(Exit::Error(vmm_core::vcpu::ExitError::EntryFailed {
                detail: String::from("an entry of the other backend"),
            })),
        }
    }

    /// Exits handled inside the backend in a row before a run ends.
    pub fn max_internal_exits(&self) -> u32 {
        match self {
            Vcpu::Svm(_) => <SvmVcpu as SplitEntry>::MAX_INTERNAL_EXITS,
            Vcpu::Vmx(_) => <VmxVcpu as SplitEntry>::MAX_INTERNAL_EXITS,
        }
    }

    /// Intercept PAUSE (a yield) while this vCPU's host CPU has other
    /// tasks (`shared`), or not (see `VcpuBackend::set_pause_exiting`).
    pub fn set_pause_exiting(&mut self, shared: bool) {
        use vmm_core::vcpu::VcpuBackend;
        match self {
            Vcpu::Svm(v) => v.set_pause_exiting(shared),
            Vcpu::Vmx(v) => v.set_pause_exiting(shared),
        }
    }

    /// The offset this vCPU adds to the host's TSC.
    pub fn tsc_offset(&self) -> u64 {
        use vmm_core::vcpu::VcpuBackend;
        match self {
            Vcpu::Svm(v) => v.tsc_offset(),
            Vcpu::Vmx(v) => v.tsc_offset(),
        }
    }

    /// Set that offset (the siblings of a PC share the first one's).
    pub fn set_tsc_offset(&mut self, offset: u64) {
        use vmm_core::vcpu::VcpuBackend;
        match self {
            Vcpu::Svm(v) => v.set_tsc_offset(offset),
            Vcpu::Vmx(v) => v.set_tsc_offset(offset),
        };
    }

    /// Give this vCPU the TSC offset of `other`, so both read the same TSC
    /// (the application processors of a PC take the bootstrap
    /// processor's).
    pub fn take_tsc_of(&mut self, other: &Vcpu) {
        use vmm_core::vcpu::VcpuBackend;
        let offset = match other {
            Vcpu::Svm(v) => v.tsc_offset(),
            Vcpu::Vmx(v) => v.tsc_offset(),
        };
        match self {
            Vcpu::Svm(v) => v.set_tsc_offset(offset),
            Vcpu::Vmx(v) => v.set_tsc_offset(offset),
        };
    }

    /// Move this vCPU's whole state into `fresh` and put `fresh` in its
    /// place (the old vCPU is dropped), the devices of a PC saved and
    /// restored on the way ([`Pc::move_vcpu`]); `msrs` is a guest
    /// program's MSR file (a PC has its own).
    pub fn replace(
        &mut self,
        mut fresh: Vcpu,
        pc: Option<&mut Pc>,
        msrs: &mut MsrFile,
    ) -> Result<(), String> {
        fn go<A: ArchState, B: ArchState>(
            a: &mut A,
            b: &mut B,
            pc: Option<&mut Pc>,
            msrs: &mut MsrFile,
        ) -> Result<(), String> {
            match pc {
                Some(pc) => pc.move_vcpu(a, b),
                None => vcpu::move_state(a, b, msrs),
            }
            .map_err(|e| format!("state round trip: {e}"))
        }
        match (&mut *self, &mut fresh) {
            (Vcpu::Svm(a), Vcpu::Svm(b)) => go(a.as_mut(), b.as_mut(), pc, msrs)?,
            (Vcpu::Vmx(a), Vcpu::Vmx(b)) => go(a.as_mut(), b.as_mut(), pc, msrs)?,
            (Vcpu::Svm(a), Vcpu::Vmx(b)) => go(a.as_mut(), b.as_mut(), pc, msrs)?,
            (Vcpu::Vmx(a), Vcpu::Svm(b)) => go(a.as_mut(), b.as_mut(), pc, msrs)?,
        }
        *self = fresh;
        Ok(())
    }

    /// The vCPU as its architectural state, whichever backend it runs on.
    pub fn arch(&mut self) -> &mut dyn ArchState {
        match self {
            Vcpu::Svm(v) => v.as_mut(),
            Vcpu::Vmx(v) => v.as_mut(),
        }
    }

    /// Move every vCPU of a PC (`vcpus[i]` is vCPU `i`) into the fresh
    /// ones `fresh` and put them in their places, the devices saved and
    /// restored on the way and the vCPUs through the bytes of a snapshot's
    /// vCPU section ([`Pc::move_vcpus`]).
    pub fn replace_all(
        vcpus: &mut alloc::vec::Vec<Vcpu>,
        mut fresh: alloc::vec::Vec<Vcpu>,
        pc: &mut Pc,
    ) -> Result<(), String> {
        {
            let mut from: alloc::vec::Vec<&mut dyn ArchState> =
                vcpus.iter_mut().map(Vcpu::arch).collect();
            let mut to: alloc::vec::Vec<&mut dyn ArchState> =
                fresh.iter_mut().map(Vcpu::arch).collect();
            pc.move_vcpus(&mut from, &mut to)
                .map_err(|e| format!("state round trip: {e}"))?;
        }
        *vcpus = fresh;
        Ok(())
    }

    /// Give the clone `clone` (on its vCPUs `to`, `to[i]` vCPU `i`) the
    /// state of `parent`, paused on `from`, whose RAM it shares
    /// ([`Pc::fork_from_vcpus`]).
    pub fn fork_all(
        from: &mut [Vcpu],
        parent: &mut Pc,
        clone: &mut Pc,
        to: &mut [Vcpu],
    ) -> Result<(), String> {
        let mut from: alloc::vec::Vec<&mut dyn ArchState> =
            from.iter_mut().map(Vcpu::arch).collect();
        let mut to: alloc::vec::Vec<&mut dyn ArchState> = to.iter_mut().map(Vcpu::arch).collect();
        clone
            .fork_from_vcpus(parent, &mut from, &mut to)
            .map_err(|e| format!("{e}"))
    }

    /// The shadow pager's counters, if this vCPU uses shadow paging.
    pub fn shadow_stats(&self) -> Option<ShadowStats> {
        match self {
            Vcpu::Svm(v) => v.shadow_stats(),
            Vcpu::Vmx(_) => None,
        }
    }

    /// The guest's registers, as the emulator and a debugger see them.
    pub fn cpu(&mut self) -> &mut dyn CpuState {
        match self {
            Vcpu::Svm(v) => v.as_mut(),
            Vcpu::Vmx(v) => v.as_mut(),
        }
    }

    /// Let the host's debugger debug the guest on this vCPU (`None`: stop).
    pub fn set_host_debug(&mut self, debug: Option<HostDebug>) {
        match self {
            Vcpu::Svm(v) => v.set_host_debug(debug),
            Vcpu::Vmx(v) => v.set_host_debug(debug),
        }
    }

    /// Where the guest stopped for the host's debugger, once.
    pub fn take_debug_stop(&mut self) -> Option<DebugStop> {
        match self {
            Vcpu::Svm(v) => v.take_debug_stop(),
            Vcpu::Vmx(v) => v.take_debug_stop(),
        }
    }

    /// The guest's RIP.
    pub fn rip(&self) -> u64 {
        match self {
            Vcpu::Svm(v) => v.rip(),
            Vcpu::Vmx(v) => v.rip(),
        }
    }

    /// The guest's RFLAGS.
    pub fn rflags(&self) -> u64 {
        match self {
            Vcpu::Svm(v) => v.rflags(),
            Vcpu::Vmx(v) => v.rflags(),
        }
    }

    /// A guest segment register.
    pub fn segment(&self, s: Segment) -> SegmentRegister {
        match self {
            Vcpu::Svm(v) => v.segment(s),
            Vcpu::Vmx(v) => v.segment(s),
        }
    }
}

/// A 64-bit TSS: 104 bytes, no I/O bitmap.
#[repr(C, align(16))]
struct TaskStateSegment([u32; 26]);

/// The host GDT with a TSS: null, 64-bit code (0x08), data (0x10), and the
/// 16-byte TSS descriptor (0x18).
#[repr(C, align(16))]
struct Gdt([u64; 5]);

const TSS_SELECTOR: u16 = 0x18;

/// Load a GDT with a TSS and the task register: VM exits load TR from the
/// VMCS, and VM entry refuses a host TR selector of zero. The boot code's
/// code and data descriptors are kept at the same selectors, so nothing
/// else changes.
fn install_task_register() {
    let tr: u16;
    // SAFETY: STR only reads the task register.
    unsafe { core::arch::asm!("str {0:x}", out(reg) tr, options(nomem, nostack)) };
    if tr != 0 {
        return;
    }
    // Both live for the rest of the run: the CPU reads them.
    let tss: &'static TaskStateSegment = Box::leak(Box::new(TaskStateSegment([0; 26])));
    let base = tss as *const TaskStateSegment as u64;
    let limit = (core::mem::size_of::<TaskStateSegment>() - 1) as u64;
    // Type 9 (available 64-bit TSS), present.
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let high = base >> 32;
    let gdt: &'static mut Gdt = Box::leak(Box::new(Gdt([
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        low,
        high,
    ])));
    let mut pointer = [0u8; 10];
    pointer[..2].copy_from_slice(&((core::mem::size_of::<Gdt>() - 1) as u16).to_le_bytes());
    pointer[2..].copy_from_slice(&(gdt as *mut Gdt as u64).to_le_bytes());
    // SAFETY: the new GDT has the same code and data descriptors at the
    // same selectors as the boot GDT, so the loaded CS/DS/SS stay valid; it
    // and the TSS are leaked, so they live as long as the CPU uses them;
    // LTR marks the descriptor busy in this writable heap memory.
    unsafe {
        core::arch::asm!("lgdt [{}]", in(reg) pointer.as_ptr(), options(readonly, nostack));
        core::arch::asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack));
    }
}
