//! One KVM vCPU as a `VcpuBackend`.
//!
//! Registers are synchronised lazily: nothing is read from KVM unless the
//! exit loop asks (HLT reads RFLAGS; a port-I/O round trip reads nothing),
//! and what it changed is written back once, right before the next entry.

use super::cpuid;
use super::iret;
use super::memslots::MemSlots;
use super::run_page::{self, RunPage};
use super::split_irqchip::{self, Irqchip, KernelIrqchip};
use vmm_devices::lapic::{LapicCore, RegisterPage};

/// IA32_TSC_DEADLINE.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
use super::KvmError;
use kvm_bindings::{
    kvm_fpu, kvm_guest_debug, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs, CpuId, Msrs, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_bios::entry::EntryState;
use vmm_core::emulator::{
    CpuState, DescriptorState, DescriptorTable, EmulateError, Segment, SegmentRegister,
};
use vmm_core::host_debug::HostDebug;
use vmm_core::paging::ControlRegisters;
use vmm_core::vcpu::{AccessTarget, DeviceAccess, Event, Exit, ExitError, VcpuBackend};
use vmm_core::vm::Vm;
use vmm_devices::lapic::EoiBroadcast;

/// What a vCPU of a VM with KVM's local APICs (`--irqchip split`) keeps.
#[derive(Clone)]
struct SplitLapic {
    /// KVM's local APIC as it was when the vCPU was created, for a reset.
    power_on: kvm_lapic_state,
    /// Our I/O APIC, which hears of the EOIs of its level-triggered
    /// vectors (KVM_EXIT_IOAPIC_EOI).
    eoi: Option<Arc<dyn EoiBroadcast>>,
    /// The VM's message target (shared by every vCPU of the VM: one route
    /// table, one set of irqfds).
    chip: Arc<KernelIrqchip>,
}

/// Where KVM puts the real-mode TSS it needs on Intel (three pages), and
/// its identity-map page: just below the BIOS, where QEMU puts them too.
const TSS_ADDRESS: usize = 0xfeff_d000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;

/// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt), which
/// `kvm-ioctls` does not wrap (it assumes an in-kernel irqchip).
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;

/// KVM_INTERNAL_ERROR_EMULATION: KVM's instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;

/// Which exit the data of [`VcpuBackend::access_data`] belongs to.
#[derive(Clone, Copy)]
pub(super) struct PendingAccess {
    offset: usize,
    len: usize,
}

/// A KVM virtual CPU and its KVM VM, which it shares with its siblings
/// ([`KvmVcpu::sibling`]).
pub struct KvmVcpu {
    pub(super) vcpu: VcpuFd,
    vm: Arc<VmFd>,
    run: RunPage,
    /// The VM's memory slots, shared by its vCPUs (whichever enters first
    /// after the memory map changed brings them in line).
    slots: Arc<Mutex<MemSlots>>,
    /// The vCPU's index in its VM (KVM's vCPU id; 0 is the bootstrap
    /// processor).
    index: usize,
    pub(super) regs: RefCell<Option<kvm_regs>>,
    pub(super) regs_dirty: bool,
    pub(super) sregs: RefCell<Option<kvm_sregs>>,
    pub(super) sregs_dirty: bool,
    pub(super) fpu: RefCell<Option<kvm_fpu>>,
    pub(super) fpu_dirty: bool,
    /// A lazy register read failed (errno): reported at the next entry.
    sync_error: Cell<Option<(&'static str, i32)>>,
    pub(super) access: Option<PendingAccess>,
    /// An event went in since the last exit.
    pub(super) injected: bool,
    /// RFLAGS or the whole state changed since the last exit, so KVM's
    /// "ready for injection" flag is stale.
    pub(super) stale_interrupt_state: bool,
    power_on: (kvm_regs, kvm_sregs),
    /// Instructions carried out for KVM (see [`super::iret`]).
    assists: u64,
    /// Whether the coalesced-I/O ring is mapped (posted port writes).
    posted: bool,
    /// Port writes delivered from that ring.
    posted_writes: u64,
    /// Set by another thread that wants the exit loop back now (the API):
    /// a kick that finds it set ends the slice ([`KvmVcpu::set_attention`]).
    attention: Option<Arc<AtomicBool>>,
    /// A debug exit (breakpoint, single step) not yet taken by the host.
    debug_stop: Option<DebugStop>,
    /// The host debugs the guest with INT3s it planted (KVM_SET_GUEST_DEBUG
    /// with KVM_GUESTDBG_USE_SW_BP is on).
    guest_debug: bool,
    /// The local APIC is KVM's (`--irqchip split`).
    split: Option<SplitLapic>,
    /// EOIs KVM passed back for our I/O APIC.
    ioapic_eois: u64,
}

/// Where a guest debugged through KVM_SET_GUEST_DEBUG stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugStop {
    /// The exception KVM intercepted: 1 (#DB: a step or a hardware
    /// breakpoint) or 3 (#BP: an INT3 the debugger planted).
    pub exception: u32,
    /// DR6 for a #DB: BS (bit 14) for a step, B0-B3 for the breakpoint hit.
    pub dr6: u64,
    /// The linear address of the instruction it stopped at.
    pub pc: u64,
}

fn ioctl_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl {
        what,
        errno: e.errno(),
    }
}

impl KvmVcpu {
    /// Open `/dev/kvm`, create a VM with one vCPU in its power-on state
    /// (CS:IP = F000:FFF0), give it our CPUID, and map `vm`'s memory.
    pub fn new(vm: &mut Vm) -> Result<Self, KvmError> {
        Self::with_irqchip(vm, Irqchip::User)
    }

    /// [`KvmVcpu::new`] with the local APICs where `irqchip` says: with
    /// [`Irqchip::Split`] they are KVM's (see [`super::split_irqchip`]);
    /// the host then hands [`KvmVcpu::kernel_irqchip`] to the PC and the
    /// I/O APIC to [`KvmVcpu::set_ioapic_eoi`].
    pub fn with_irqchip(vm: &mut Vm, irqchip: Irqchip) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::Missing,
            libc::EACCES | libc::EPERM => KvmError::NoPermission,
            errno => KvmError::Ioctl {
                what: "open",
                errno,
            },
        })?;
        if !kvm.check_extension(Cap::ReadonlyMem) {
            return Err(KvmError::MissingCapability("read-only memory slots"));
        }
        if !kvm.check_extension(Cap::ImmediateExit) {
            return Err(KvmError::MissingCapability("immediate exit"));
        }
        // KVM_CREATE_VM can be interrupted by one of our own signals (the
        // preemption timer, a kick) while it waits in the kernel: retry.
        let mut attempts = 0;
        let vm_fd = loop {
            match kvm.create_vm() {
                Err(e) if e.errno() == libc::EINTR && attempts < 100 => attempts += 1,
                other => break other.map_err(ioctl_err("VM creation"))?,
            }
        };
        vm_fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(ioctl_err("TSS address"))?;
        // Only Intel needs (and has) the identity map; AMD refuses it.
        let _ = vm_fd.set_identity_map_address(IDENTITY_MAP_ADDRESS);
        if irqchip == Irqchip::Split {
            split_irqchip::enable(&kvm, &vm_fd)?;
        }
        Self::create(&kvm, Arc::new(vm_fd), Arc::default(), 0, vm, irqchip)
    }

    /// KVM's local APICs as the PC's message target, with
    /// `--irqchip split`; `None` otherwise.
    pub fn kernel_irqchip(&self) -> Option<Arc<KernelIrqchip>> {
        self.split.as_ref().map(|s| s.chip.clone())
    }

    /// Where the EOIs of level-triggered I/O APIC vectors go, with
    /// `--irqchip split` (nothing otherwise: our local APICs tell the
    /// I/O APIC themselves). Siblings created after this share it.
    pub fn set_ioapic_eoi(&mut self, ioapic: Arc<dyn EoiBroadcast>) {
        if let Some(s) = &mut self.split {
            s.eoi = Some(ioapic);
        }
    }

    /// An empty set of KVM-caught doorbells for this vCPU's VM
    /// ([`super::DoorbellFds`]).
    pub fn doorbell_fds(&self) -> super::DoorbellFds {
        super::DoorbellFds::new(self.vm.clone())
    }

    /// Whether the local APIC is KVM's.
    pub fn lapic_in_kernel(&self) -> bool {
        self.split.is_some()
    }

    /// EOIs KVM passed back for our I/O APIC.
    pub fn ioapic_eois(&self) -> u64 {
        self.ioapic_eois
    }

    /// Another vCPU of the same KVM VM, with id `index` (below
    /// `vm.vcpu_count()`; the CPUID it shows gives it that APIC ID), in
    /// its power-on state. The PC keeps it waiting for a start-up IPI.
    pub fn sibling(&self, index: usize, vm: &mut Vm) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(ioctl_err("open"))?;
        let irqchip = if self.split.is_some() {
            Irqchip::Split
        } else {
            Irqchip::User
        };
        let mut me = Self::create(
            &kvm,
            self.vm.clone(),
            self.slots.clone(),
            index,
            vm,
            irqchip,
        )?;
        if let (Some(mine), Some(theirs)) = (&mut me.split, &self.split) {
            mine.eoi = theirs.eoi.clone();
            mine.chip = theirs.chip.clone();
        }
        // The coalesced-I/O ring is the VM's: any vCPU may drain it (each
        // does so under the lock that serialises the devices).
        me.posted = self.posted;
        if let Some(a) = &self.attention {
            me.attention = Some(a.clone());
        }
        Ok(me)
    }

    /// vCPU `index` of the KVM VM `vm_fd`, with our CPUID for that index.
    fn create(
        kvm: &Kvm,
        vm_fd: Arc<VmFd>,
        slots: Arc<Mutex<MemSlots>>,
        index: usize,
        vm: &mut Vm,
        irqchip: Irqchip,
    ) -> Result<Self, KvmError> {
        let vcpu = vm_fd
            .create_vcpu(index as u64)
            .map_err(ioctl_err("vCPU creation"))?;
        let run_len = kvm.get_vcpu_mmap_size().map_err(ioctl_err("mmap size"))?;
        let run = RunPage::new(&vcpu, run_len).map_err(|e| KvmError::Ioctl {
            what: "mapping the run area",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("supported CPUID"))?;
        // The TSC frequency KVM gives this vCPU: the guest's kvmclock.
        let tsc_khz = vcpu.get_tsc_khz().ok().filter(|k| *k > 0);
        let mut entries = cpuid::table(&supported, vm.cpu_model(), tsc_khz);
        cpuid::apply_topology(
            &mut entries,
            vmm_core::vcpu::Topology {
                apic_id: index as u8,
                count: vm.vcpu_count() as u8,
            },
        );
        let table = CpuId::from_entries(&entries).map_err(|_| KvmError::Ioctl {
            what: "CPUID table",
            errno: libc::E2BIG,
        })?;
        vcpu.set_cpuid2(&table).map_err(ioctl_err("SET_CPUID2"))?;
        let mut vcpu = vcpu;
        // Harmless if never used; needed before any port is posted.
        let _ = vcpu.map_coalesced_mmio_ring();
        let regs = vcpu.get_regs().map_err(ioctl_err("GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(ioctl_err("GET_SREGS"))?;
        let split = match irqchip {
            Irqchip::User => None,
            Irqchip::Split => Some(SplitLapic {
                power_on: vcpu.get_lapic().map_err(ioctl_err("GET_LAPIC"))?,
                eoi: None,
                chip: KernelIrqchip::new(vm_fd.clone()),
            }),
        };
        let me = Self {
            vcpu,
            vm: vm_fd,
            run,
            slots,
            index,
            regs: RefCell::new(None),
            regs_dirty: false,
            sregs: RefCell::new(None),
            sregs_dirty: false,
            fpu: RefCell::new(None),
            fpu_dirty: false,
            sync_error: Cell::new(None),
            access: None,
            injected: false,
            stale_interrupt_state: true,
            power_on: (regs, sregs),
            assists: 0,
            posted: false,
            posted_writes: 0,
            attention: None,
            debug_stop: None,
            guest_debug: false,
            split,
            ioapic_eois: 0,
        };
        me.sync_slots(vm)?;
        Ok(me)
    }

    /// End the slice when a kick finds `flag` set: the interrupted KVM_RUN
    /// is reported as [`Exit::Preempted`] instead of an external
    /// interrupt, so the exit loop returns to its caller at once. Another
    /// thread sets the flag and fires the preemption timer
    /// ([`super::PreemptTimer::fire_now`]); the caller clears it.
    pub fn set_attention(&mut self, flag: Arc<AtomicBool>) {
        self.attention = Some(flag);
    }

    /// Debug the guest from the host (KVM_SET_GUEST_DEBUG) as `debug`
    /// says: INT3 reported to the host instead of the guest while the
    /// debugger has planted some, a step, and the debugger's breakpoints
    /// and watchpoints in DR0-DR3 and DR7 (whose guest values KVM keeps
    /// aside meanwhile). `None` gives the guest its own debugging back. A
    /// stop ends the slice; [`KvmVcpu::take_debug_stop`] says where.
    pub fn set_guest_debug(&mut self, debug: Option<&HostDebug>) -> Result<(), KvmError> {
        let mut arg = kvm_guest_debug::default();
        if let Some(d) = debug {
            arg.control = KVM_GUESTDBG_ENABLE;
            if d.software_breakpoints {
                arg.control |= KVM_GUESTDBG_USE_SW_BP;
            }
            if d.step {
                arg.control |= KVM_GUESTDBG_SINGLESTEP;
            }
            if d.has_breakpoints() {
                arg.control |= KVM_GUESTDBG_USE_HW_BP;
                arg.arch.debugreg[..4].copy_from_slice(&d.addresses());
                arg.arch.debugreg[7] = d.dr7();
            }
        }
        // Registers changed through the lazy copies must reach KVM first:
        // the ioctl may read them (RFLAGS.TF for a step).
        self.flush()
            .map_err(|(what, errno)| KvmError::Ioctl { what, errno })?;
        self.vcpu
            .set_guest_debug(&arg)
            .map_err(ioctl_err("SET_GUEST_DEBUG"))?;
        self.guest_debug = debug.is_some_and(|d| d.software_breakpoints);
        Ok(())
    }

    /// Give the guest a #DB that KVM stopped for the host's debugging but
    /// that the host did not cause (the guest's own RFLAGS.TF: while the
    /// host has breakpoints in the debug registers, KVM intercepts every
    /// #DB): DR6 as KVM reported it, and the exception at the next entry.
    pub fn give_debug_trap(&mut self, dr6: u64) -> Result<(), KvmError> {
        let mut regs = self
            .vcpu
            .get_debug_regs()
            .map_err(ioctl_err("GET_DEBUGREGS"))?;
        regs.dr6 = dr6;
        self.vcpu
            .set_debug_regs(&regs)
            .map_err(ioctl_err("SET_DEBUGREGS"))?;
        if self.inject_exception(1, None) {
            Ok(())
        } else {
            Err(KvmError::Ioctl {
                what: "SET_VCPU_EVENTS (#DB)",
                errno: libc::EBUSY,
            })
        }
    }

    /// Where the guest stopped for the debugger, once: the last run's
    /// debug exit, if it had one.
    pub fn take_debug_stop(&mut self) -> Option<DebugStop> {
        self.debug_stop.take()
    }

    /// Start in `entry` instead of the reset vector (direct kernel boot):
    /// registers, control registers, segments and descriptor tables.
    pub fn set_entry_state(&mut self, entry: &EntryState) {
        let mut regs = self.regs();
        let mut sregs = self.sregs();
        regs.rip = entry.rip;
        regs.rsp = entry.rsp;
        regs.rflags = entry.rflags;
        regs.rax = entry.rax;
        regs.rbx = entry.rbx;
        regs.rsi = entry.rsi;
        sregs.cr0 = entry.cr0;
        sregs.cr3 = entry.cr3;
        sregs.cr4 = entry.cr4;
        sregs.efer = entry.efer;
        sregs.cs = kvm_segment_of(&entry.cs);
        let data = kvm_segment_of(&entry.data);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = entry.gdt.base;
        sregs.gdt.limit = entry.gdt.limit;
        sregs.idt.base = entry.idt.base;
        sregs.idt.limit = entry.idt.limit;
        *self.regs.get_mut() = Some(regs);
        *self.sregs.get_mut() = Some(sregs);
        self.regs_dirty = true;
        self.sregs_dirty = true;
        self.stale_interrupt_state = true;
    }

    /// How many instructions KVM could not emulate and the backend carried
    /// out instead.
    pub fn assists(&self) -> u64 {
        self.assists
    }

    /// Let KVM buffer guest writes to ports `first..first + count` instead
    /// of returning to user space for each (KVM's coalesced PIO, a ring
    /// page of about 170 entries shared by the VM's vCPUs): they are
    /// delivered to the devices, in order, before the next exit of any
    /// vCPU is handled (and before a snapshot or a state move, which
    /// begin with an exit). Reads still exit.
    ///
    /// Only for ports whose writes the guest cannot tell were late:
    /// - everything it can read back goes through an exit (a read of the
    ///   device, or of any other device that the write might affect,
    ///   exits, and the ring is drained first), so it always reads the
    ///   state after all its earlier writes;
    /// - an interrupt such a write raises (the UART's THRE) is raised
    ///   when the write is delivered, at the next exit, and our
    ///   interrupts go in only at entries after an exit, so with our
    ///   local APICs (`--irqchip user`) it comes no later than it could
    ///   have. A guest that writes and then HLTs exits on the HLT; one
    ///   that writes and then EOIs exits on the EOI. With KVM's local
    ///   APICs (`--irqchip split`) neither HLT nor an edge EOI exits, so
    ///   the interrupt waits for the next exit of any kind: at the latest
    ///   the end of the exit loop's slice (20 ms) or the next device
    ///   timer, both of which kick the vCPU out. That is a slower line,
    ///   not a lost interrupt: a UART may take that long on a slow link;
    /// - host output (the console) appears at the next exit too, within
    ///   the same bound, which only a host that ends its slices holds
    ///   (the single-threaded loop; `vmm` posts COM1 only there);
    /// - nothing starves: a guest that only writes posted ports fills
    ///   the ring, and KVM then hands the write that found it full to
    ///   user space as an ordinary exit, which drains the ring.
    pub fn post_port_writes(&mut self, first: u16, count: u16) -> Result<(), KvmError> {
        if self.vcpu.map_coalesced_mmio_ring().is_err() {
            return Err(KvmError::MissingCapability("coalesced port I/O"));
        }
        self.vm
            .register_coalesced_mmio(
                kvm_ioctls::IoEventAddress::Pio(u64::from(first)),
                u32::from(count),
            )
            .map_err(ioctl_err("KVM_REGISTER_COALESCED_MMIO"))?;
        self.posted = true;
        Ok(())
    }

    /// Port writes delivered from KVM's buffer (see
    /// [`KvmVcpu::post_port_writes`]).
    pub fn posted_writes(&self) -> u64 {
        self.posted_writes
    }

    /// Hand the buffered port writes to the devices, oldest first.
    fn deliver_posted(&mut self, vm: &mut Vm) {
        if !self.posted {
            return;
        }
        while let Ok(Some(w)) = self.vcpu.coalesced_mmio_read() {
            // Only port ranges are ever registered, so every entry is a
            // port write (the union saying so needs no reading).
            let len = (w.len as usize).min(w.data.len());
            if let (Ok(port), Some(data)) = (u16::try_from(w.phys_addr), w.data.get(..len)) {
                vm.port_write(port, data);
                self.posted_writes += 1;
            }
        }
    }

    /// The memory slots in place (for tests and diagnostics).
    pub fn slots(&self) -> Vec<super::Slot> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.slots().copied().collect()
    }

    /// Let a kick (the kick signal, which this thread's
    /// [`super::PreemptTimer`] sends) reach this vCPU from now on, even
    /// before its first entry. Call on the thread that runs it.
    pub fn aim_kicks(&self) {
        super::kick::aim_at(self.run.immediate_exit());
    }

    /// This vCPU's index in its VM.
    pub fn index(&self) -> usize {
        self.index
    }

    /// One MSR as KVM holds it (0 if KVM will not say).
    fn kvm_msr(&self, index: u32) -> u64 {
        let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }]) else {
            return 0;
        };
        match self.vcpu.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice().first().map_or(0, |e| e.data),
            _ => 0,
        }
    }

    /// The guest's kvmclock MSRs, which KVM serves itself (the guest's
    /// writes never reach the exit loop): (MSR_KVM_WALL_CLOCK_NEW,
    /// MSR_KVM_SYSTEM_TIME_NEW). A snapshot keeps them in the vCPU's MSR
    /// file.
    pub fn kvmclock_msrs(&self) -> (u64, u64) {
        (
            self.kvm_msr(vmm_core::vcpu::MSR_KVM_WALL_CLOCK_NEW),
            self.kvm_msr(vmm_core::vcpu::MSR_KVM_SYSTEM_TIME_NEW),
        )
    }

    /// After a restore: hand the guest's kvmclock MSRs back to KVM, which
    /// writes the wall clock and this vCPU's time information into guest
    /// RAM where they point (0: the guest never set one; left alone).
    pub fn set_kvmclock_msrs(&mut self, wall: u64, system: u64) -> Result<(), KvmError> {
        for (index, value) in [
            (vmm_core::vcpu::MSR_KVM_WALL_CLOCK_NEW, wall),
            (vmm_core::vcpu::MSR_KVM_SYSTEM_TIME_NEW, system),
        ] {
            if value == 0 {
                continue;
            }
            let msrs = Msrs::from_entries(&[kvm_msr_entry {
                index,
                data: value,
                ..Default::default()
            }])
            .map_err(|_| KvmError::Ioctl {
                what: "SET_MSRS (kvmclock)",
                errno: libc::E2BIG,
            })?;
            match self.vcpu.set_msrs(&msrs) {
                Ok(1) => {}
                Ok(_) => {
                    return Err(KvmError::Ioctl {
                        what: "SET_MSRS (kvmclock)",
                        errno: libc::EINVAL,
                    })
                }
                Err(e) => return Err(ioctl_err("SET_MSRS (kvmclock)")(e)),
            }
        }
        Ok(())
    }

    /// Under `--irqchip split`, before a snapshot: KVM's local APIC of
    /// this vCPU (KVM_GET_LAPIC, IA32_APIC_BASE, IA32_TSC_DEADLINE as
    /// host time) into `core`, the PC's model of it, which the snapshot
    /// saves. Nothing with our own local APICs.
    pub fn lapic_to(&self, core: &LapicCore, now: u64) -> Result<(), KvmError> {
        if self.split.is_none() {
            return Ok(());
        }
        let state = self.vcpu.get_lapic().map_err(ioctl_err("GET_LAPIC"))?;
        let mut page = RegisterPage::default();
        for (b, r) in page.0.iter_mut().zip(state.regs.iter()) {
            *b = *r as u8;
        }
        let apic_base = self.sregs().apic_base;
        let deadline_tsc = self.kvm_msr(MSR_TSC_DEADLINE);
        let deadline_ns = (deadline_tsc != 0).then(|| {
            let tsc = self.kvm_msr(vmm_core::vcpu::MSR_TSC);
            let ahead = deadline_tsc.saturating_sub(tsc);
            now.saturating_add(self.tsc_to_ns(ahead))
        });
        let mp = self
            .vcpu
            .get_mp_state()
            .map_err(ioctl_err("GET_MP_STATE"))?;
        let waits = matches!(
            mp.mp_state,
            kvm_bindings::KVM_MP_STATE_UNINITIALIZED | kvm_bindings::KVM_MP_STATE_INIT_RECEIVED
        );
        core.load_register_page(&page, apic_base, deadline_ns, waits, now);
        Ok(())
    }

    /// Under `--irqchip split`, after a restore: `core` (restored from the
    /// snapshot) into KVM's local APIC of this vCPU (KVM_SET_LAPIC over
    /// the page KVM made at creation, then IA32_TSC_DEADLINE). The
    /// restored IA32_APIC_BASE went in with the special registers first.
    pub fn lapic_from(&mut self, core: &LapicCore, now: u64) -> Result<(), KvmError> {
        let Some(split) = &self.split else {
            return Ok(());
        };
        let mut page = RegisterPage::default();
        for (b, r) in page.0.iter_mut().zip(split.power_on.regs.iter()) {
            *b = *r as u8;
        }
        let (_, deadline_ns, waits) = core.store_register_page(&mut page, now);
        let mut state = split.power_on;
        for (r, b) in state.regs.iter_mut().zip(page.0.iter()) {
            *r = *b as _;
        }
        self.vcpu
            .set_lapic(&state)
            .map_err(ioctl_err("SET_LAPIC"))?;
        // A CPU that had started runs on (a halt it was in ends, as a
        // spurious wake-up); one that waited for its start-up IPI waits.
        let mp_state = kvm_bindings::kvm_mp_state {
            mp_state: if waits {
                kvm_bindings::KVM_MP_STATE_UNINITIALIZED
            } else {
                kvm_bindings::KVM_MP_STATE_RUNNABLE
            },
        };
        self.vcpu
            .set_mp_state(mp_state)
            .map_err(ioctl_err("SET_MP_STATE"))?;
        if let Some(at) = deadline_ns {
            let tsc = self.kvm_msr(vmm_core::vcpu::MSR_TSC);
            let value = tsc
                .saturating_add(self.ns_to_tsc(at.saturating_sub(now)))
                .max(1);
            let msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: MSR_TSC_DEADLINE,
                data: value,
                ..Default::default()
            }])
            .map_err(|_| KvmError::Ioctl {
                what: "SET_MSRS (TSC deadline)",
                errno: libc::E2BIG,
            })?;
            self.vcpu
                .set_msrs(&msrs)
                .map_err(ioctl_err("SET_MSRS (TSC deadline)"))?;
        }
        Ok(())
    }

    /// KVM's TSC frequency for this vCPU in kHz (1 GHz when it will not
    /// say).
    fn tsc_khz(&self) -> u64 {
        self.vcpu
            .get_tsc_khz()
            .ok()
            .filter(|k| *k > 0)
            .map_or(1_000_000, u64::from)
    }

    fn tsc_to_ns(&self, ticks: u64) -> u64 {
        let ns = u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz());
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    fn ns_to_tsc(&self, ns: u64) -> u64 {
        let ticks = u128::from(ns) * u128::from(self.tsc_khz()) / 1_000_000;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// After a restore: set the VM's kvmclock (KVM_SET_CLOCK) to this
    /// vCPU's guest TSC in nanoseconds. A fresh KVM VM's clock starts at
    /// zero, about when its vCPUs' TSCs do, so kvmclock and the TSC agree
    /// as they did in the saved VM and the restored guest's clock goes on
    /// with its TSC instead of starting over. Nothing when KVM does not
    /// say the TSC frequency (no kvmclock was offered then).
    pub fn set_vm_clock_from_tsc(&self) -> Result<(), KvmError> {
        let Some(khz) = self.vcpu.get_tsc_khz().ok().filter(|k| *k > 0) else {
            return Ok(());
        };
        let tsc = self.kvm_msr(vmm_core::vcpu::MSR_TSC);
        let ns = u128::from(tsc) * 1_000_000 / u128::from(khz);
        let clock = kvm_bindings::kvm_clock_data {
            clock: u64::try_from(ns).unwrap_or(u64::MAX),
            ..Default::default()
        };
        self.vm.set_clock(&clock).map_err(ioctl_err("SET_CLOCK"))
    }

    /// Bring the VM's memory slots in line with `vm`'s memory map.
    fn sync_slots(&self, vm: &mut Vm) -> Result<(), KvmError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.sync(&self.vm, vm.memory_mut())
    }

    fn regs(&self) -> kvm_regs {
        if let Some(r) = *self.regs.borrow() {
            return r;
        }
        match self.vcpu.get_regs() {
            Ok(r) => {
                *self.regs.borrow_mut() = Some(r);
                r
            }
            Err(e) => {
                self.sync_error.set(Some(("GET_REGS", e.errno())));
                kvm_regs::default()
            }
        }
    }

    fn regs_mut(&mut self) -> &mut kvm_regs {
        let r = self.regs();
        self.regs_dirty = true;
        self.regs.get_mut().insert(r)
    }

    pub(super) fn sregs(&self) -> kvm_sregs {
        if let Some(s) = *self.sregs.borrow() {
            return s;
        }
        match self.vcpu.get_sregs() {
            Ok(s) => {
                *self.sregs.borrow_mut() = Some(s);
                s
            }
            Err(e) => {
                self.sync_error.set(Some(("GET_SREGS", e.errno())));
                kvm_sregs::default()
            }
        }
    }

    pub(super) fn fpu(&self) -> kvm_fpu {
        if let Some(f) = *self.fpu.borrow() {
            return f;
        }
        match self.vcpu.get_fpu() {
            Ok(f) => {
                *self.fpu.borrow_mut() = Some(f);
                f
            }
            Err(e) => {
                self.sync_error.set(Some(("GET_FPU", e.errno())));
                kvm_fpu::default()
            }
        }
    }

    /// Write back what the exit loop changed.
    pub(super) fn flush(&mut self) -> Result<(), (&'static str, i32)> {
        if self.regs_dirty {
            if let Some(r) = *self.regs.get_mut() {
                self.vcpu
                    .set_regs(&r)
                    .map_err(|e| ("SET_REGS", e.errno()))?;
            }
            self.regs_dirty = false;
        }
        if self.sregs_dirty {
            if let Some(s) = *self.sregs.get_mut() {
                self.vcpu
                    .set_sregs(&s)
                    .map_err(|e| ("SET_SREGS", e.errno()))?;
            }
            self.sregs_dirty = false;
        }
        if self.fpu_dirty {
            if let Some(f) = *self.fpu.get_mut() {
                self.vcpu.set_fpu(&f).map_err(|e| ("SET_FPU", e.errno()))?;
            }
            self.fpu_dirty = false;
        }
        Ok(())
    }

    pub(super) fn forget_registers(&mut self) {
        *self.regs.get_mut() = None;
        *self.sregs.get_mut() = None;
        *self.fpu.get_mut() = None;
    }

    /// One KVM_RUN, its exit copied out of the borrow.
    fn enter(&mut self) -> Raw {
        self.access = None;
        super::kick::aim_at(self.run.immediate_exit());
        let result = self.vcpu.run();
        // A kick that came in or after this run has done its work: the
        // exit loop polls its timers before the next entry.
        self.run.set_u8(run_page::IMMEDIATE_EXIT, 0);
        let raw = match result {
            Ok(VcpuExit::IoOut(port, _)) => Raw::Io { port, write: true },
            Ok(VcpuExit::IoIn(port, _)) => Raw::Io { port, write: false },
            Ok(VcpuExit::MmioRead(gpa, d)) => Raw::Mmio {
                gpa,
                len: d.len(),
                write: false,
            },
            Ok(VcpuExit::MmioWrite(gpa, d)) => Raw::Mmio {
                gpa,
                len: d.len(),
                write: true,
            },
            Ok(VcpuExit::Hlt) => Raw::Hlt,
            Ok(VcpuExit::IoapicEoi(vector)) => Raw::IoapicEoi(vector),
            Ok(VcpuExit::IrqWindowOpen) => Raw::Window,
            Ok(VcpuExit::Shutdown) => Raw::Shutdown,
            Ok(VcpuExit::Intr) => Raw::Interrupted,
            Ok(VcpuExit::Debug(arch)) => Raw::Debug(DebugStop {
                exception: arch.exception,
                dr6: arch.dr6,
                pc: arch.pc,
            }),
            Ok(VcpuExit::FailEntry(reason, _)) => Raw::FailEntry(reason),
            Ok(VcpuExit::InternalError) => Raw::Internal,
            Ok(other) => Raw::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Raw::Interrupted,
            Err(e) => Raw::Failed(e.errno()),
        };
        self.forget_registers();
        self.injected = false;
        self.stale_interrupt_state = false;
        raw
    }

    /// Carry out an instruction KVM could not emulate, if it is one the
    /// backend knows (protected-mode IRET, through the library's
    /// emulator); `true` if the guest can go on (the IRET retired, or
    /// raised an exception now injected).
    fn assist(&mut self, vm: &mut Vm) -> bool {
        match iret::emulate(self, vm.memory_mut()) {
            Ok(()) => {
                self.assists += 1;
                true
            }
            Err(EmulateError::Exception(e)) => {
                self.assists += 1;
                self.inject_exception(e.vector(), e.error_code())
            }
            Err(why) => {
                log::debug!("KVM emulation failure not assisted: {why}");
                false
            }
        }
    }

    /// Complete a pending port or MMIO exit without running the guest
    /// (KVM_RUN with immediate_exit), so that state can be replaced.
    pub(super) fn complete_pending_io(&mut self) {
        self.vcpu.set_kvm_immediate_exit(1);
        let _ = self.vcpu.run();
        self.vcpu.set_kvm_immediate_exit(0);
        self.access = None;
    }

    fn error(what: &'static str, errno: i32) -> Exit {
        Exit::Error(ExitError::EntryFailed {
            detail: format!("KVM {what}: {}", std::io::Error::from_raw_os_error(errno)),
        })
    }

    fn inject_exception(&mut self, vector: u8, code: Option<u32>) -> bool {
        let Ok(mut events) = self.vcpu.get_vcpu_events() else {
            return false;
        };
        if events.exception.injected != 0 || events.exception.pending != 0 {
            return false;
        }
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(code.is_some());
        events.exception.error_code = code.unwrap_or(0);
        self.vcpu.set_vcpu_events(&events).is_ok()
    }
}

/// What an exit was, copied out of the borrow `VcpuFd::run` holds.
pub(super) enum Raw {
    Io { port: u16, write: bool },
    Mmio { gpa: u64, len: usize, write: bool },
    Hlt,
    IoapicEoi(u8),
    Window,
    Shutdown,
    Interrupted,
    Debug(DebugStop),
    FailEntry(u64),
    Internal,
    Other(String),
    Failed(i32),
}

/// A guest run whose exit is not yet handled ([`KvmVcpu::enter_unlocked`]).
pub struct Entered(Raw);

impl KvmVcpu {
    /// Before an entry, with the machine held: the memory slots in line
    /// with `vm`'s map, the registers the exit loop changed written back.
    /// `Err` is the exit to report instead of entering.
    pub fn before_entry(&mut self, vm: &mut Vm) -> Result<(), Exit> {
        if let Err(e) = self.sync_slots(vm) {
            return Err(Exit::Error(ExitError::EntryFailed {
                detail: e.to_string(),
            }));
        }
        if let Some((what, errno)) = self.sync_error.take() {
            return Err(Self::error(what, errno));
        }
        if let Err((what, errno)) = self.flush() {
            return Err(Self::error(what, errno));
        }
        Ok(())
    }

    /// One KVM_RUN, needing nothing of the machine: a host with a thread
    /// per vCPU calls it without holding the machine's lock, between
    /// [`KvmVcpu::before_entry`] and [`KvmVcpu::after_exit`]. A kick
    /// ([`super::PreemptTimer::fire_now`] on this thread's timer) ends it.
    pub fn enter_unlocked(&mut self) -> Entered {
        Entered(self.enter())
    }

    /// After an exit, with the machine held again: the port writes KVM
    /// buffered go to the devices, and the exit becomes the exit loop's.
    /// An instruction the backend carried out for KVM (see
    /// `super::iret`) is reported as an external interrupt: nothing to
    /// do but enter again.
    pub fn after_exit(&mut self, vm: &mut Vm, entered: Entered) -> Exit {
        let raw = entered.0;
        // Buffered writes are older than this exit: devices see them first.
        self.deliver_posted(vm);
        if self.assistable(&raw) && self.assist(vm) {
            return Exit::ExternalInterrupt;
        }
        self.exit_of(vm, raw)
    }

    /// Whether `raw` is an instruction KVM could not emulate.
    fn assistable(&self, raw: &Raw) -> bool {
        matches!(raw, Raw::Internal)
            && self.run.u32_at(run_page::INTERNAL_SUBERROR) == INTERNAL_ERROR_EMULATION
    }

    /// The exit loop's view of `raw`.
    fn exit_of(&mut self, vm: &mut Vm, raw: Raw) -> Exit {
        match raw {
            Raw::Io { port, write } => {
                let io = run_page::parse_io_exit(self.run.bytes());
                let (size, count) = (io.size, io.count);
                // Data outside the area: no buffer, the exit loop refuses.
                let data = io.data.unwrap_or(usize::MAX..usize::MAX);
                self.access = Some(PendingAccess {
                    offset: data.start,
                    len: data.len(),
                });
                Exit::DeviceAccess(DeviceAccess {
                    target: AccessTarget::Port(port),
                    size,
                    count,
                    write,
                })
            }
            Raw::Mmio { gpa, len, write } => {
                self.access = Some(PendingAccess {
                    offset: run_page::MMIO_DATA,
                    len,
                });
                Exit::DeviceAccess(DeviceAccess {
                    target: AccessTarget::Memory(gpa),
                    size: len as u8,
                    count: 1,
                    write,
                })
            }
            // KVM has already stepped over the HLT.
            Raw::Hlt => {
                let cs = self.segment(Segment::Cs);
                log::trace!(
                    "HLT at {:#x}:{:#x} (CS base {:#x}), CR0 {:#x}, RFLAGS {:#x}",
                    cs.selector,
                    self.rip(),
                    cs.base,
                    self.control().cr0,
                    self.rflags()
                );
                Exit::Hlt {
                    next_rip: self.rip(),
                }
            }
            Raw::Window => Exit::InterruptWindow,
            Raw::IoapicEoi(vector) => {
                // KVM's local APIC ended a level-triggered vector of our
                // I/O APIC's: remote IRR clears, and an input still
                // asserted delivers again. Nothing else to do.
                self.ioapic_eois += 1;
                if let Some(eoi) = self.split.as_ref().and_then(|s| s.eoi.as_ref()) {
                    eoi.end_of_interrupt(vector);
                }
                Exit::ExternalInterrupt
            }
            Raw::Shutdown => Exit::Shutdown,
            Raw::Interrupted
                if self
                    .attention
                    .as_ref()
                    .is_some_and(|a| a.load(Ordering::Acquire)) =>
            {
                Exit::Preempted
            }
            Raw::Interrupted => Exit::ExternalInterrupt,
            Raw::Debug(stop) => {
                // The debugger's breakpoint or step: the slice ends, and
                // the host hands the stop to its debugger.
                self.debug_stop = Some(stop);
                Exit::Preempted
            }
            Raw::FailEntry(reason) => Exit::Error(ExitError::EntryFailed {
                detail: format!("KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}"),
            }),
            Raw::Internal => {
                let sub = self.run.u32_at(run_page::INTERNAL_SUBERROR);
                let cs = self.segment(Segment::Cs);
                let at = cs.base.wrapping_add(self.rip());
                let mut bytes = [0u8; 15];
                let read = vm.memory().read(at, &mut bytes);
                if self.guest_debug && sub == 1 && read.is_ok() && bytes[0] == 0xcc {
                    // A KVM that cannot intercept #BP (a paravirtual one)
                    // fails to emulate the debugger's INT3 instead: it is
                    // the breakpoint all the same, and RIP is on it.
                    self.debug_stop = Some(DebugStop {
                        exception: 3,
                        dr6: 0,
                        pc: at,
                    });
                    return Exit::Preempted;
                }
                let code = match read {
                    Ok(()) => bytes
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    Err(e) => e.to_string(),
                };
                Exit::Error(ExitError::Unhandled {
                    code: 17,
                    detail: format!(
                        "KVM internal error {sub} ({}) at {:#x}:{:#x}, code bytes {code}",
                        match sub {
                            1 => "instruction emulation failed",
                            2 => "exception while delivering an event",
                            3 => "delivery event",
                            _ => "other",
                        },
                        cs.selector,
                        self.rip()
                    ),
                })
            }
            Raw::Other(what) => Exit::Error(ExitError::Unhandled {
                code: u64::from(self.run.u32_at(run_page::EXIT_REASON)),
                detail: what,
            }),
            Raw::Failed(errno) => Self::error("KVM_RUN", errno),
        }
    }
}

impl VcpuBackend for KvmVcpu {
    fn run(&mut self, vm: &mut Vm) -> Exit {
        let raw = loop {
            if let Err(exit) = self.before_entry(vm) {
                return exit;
            }
            let raw = self.enter();
            // Buffered writes are older than this exit: devices see them first.
            self.deliver_posted(vm);
            if self.assistable(&raw) && self.assist(vm) {
                if self.split.is_some() {
                    // The exit loop must see the round: it re-arms the
                    // preemption timer for the device timers, which a
                    // guest halted inside KVM (our local APICs are not
                    // there to report its HLT) needs to wake up.
                    return Exit::ExternalInterrupt;
                }
                continue;
            }
            break raw;
        };
        self.exit_of(vm, raw)
    }

    fn access_data(&mut self) -> &mut [u8] {
        match self.access {
            Some(a) => self.run.range_mut(a.offset, a.len).unwrap_or(&mut []),
            None => &mut [],
        }
    }

    fn inject(&mut self, event: Event) -> bool {
        if self.injected {
            return false;
        }
        let ok = match event {
            Event::Interrupt(vector) => {
                let irq = u32::from(vector);
                // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt` (a
                // u32) from the pointer, which points at `irq` for the
                // duration of the call; the fd is this vCPU's.
                let rc = unsafe {
                    libc::ioctl(self.vcpu.as_raw_fd(), KVM_INTERRUPT, &irq as *const u32)
                };
                rc == 0
            }
            Event::Nmi => self.vcpu.nmi().is_ok(),
            Event::Exception(e) => self.inject_exception(e.vector(), e.error_code()),
        };
        if ok {
            self.injected = true;
        }
        ok
    }

    fn interrupts_open(&self) -> bool {
        !self.injected
            && !self.stale_interrupt_state
            && self.run.u8_at(run_page::READY_FOR_INTERRUPT_INJECTION) != 0
    }

    fn backend_msr(&self, msr: u32) -> Option<u64> {
        if msr == vmm_core::vcpu::MSR_EFER {
            return Some(self.sregs().efer);
        }
        if !vmm_core::vcpu::PASS_THROUGH.contains(&msr) {
            return None;
        }
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: msr,
            ..Default::default()
        }])
        .ok()?;
        match self.vcpu.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice().first().map(|e| e.data),
            _ => None,
        }
    }

    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        if msr != vmm_core::vcpu::MSR_EFER {
            if !vmm_core::vcpu::PASS_THROUGH.contains(&msr)
                || !vmm_core::vcpu::pass_through_value_valid(msr, value)
            {
                return false;
            }
            let Ok(msrs) = Msrs::from_entries(&[kvm_msr_entry {
                index: msr,
                data: value,
                ..Default::default()
            }]) else {
                return false;
            };
            return matches!(self.vcpu.set_msrs(&msrs), Ok(1));
        }
        let mut s = self.sregs();
        s.efer = value;
        *self.sregs.get_mut() = Some(s);
        self.sregs_dirty = true;
        true
    }

    /// KVM keeps the offset; it is read and set as the guest's TSC
    /// (KVM_GET/SET_MSRS of IA32_TIME_STAMP_COUNTER) against the host's,
    /// so a snapshot carries the guest's TSC on, and an INIT leaves it.
    fn tsc_offset(&self) -> u64 {
        let mut msrs = match Msrs::from_entries(&[kvm_msr_entry {
            index: vmm_core::vcpu::MSR_TSC,
            ..Default::default()
        }]) {
            Ok(m) => m,
            Err(_) => return 0,
        };
        match self.vcpu.get_msrs(&mut msrs) {
            Ok(1) => msrs
                .as_slice()
                .first()
                .map_or(0, |e| e.data.wrapping_sub(host_tsc())),
            _ => 0,
        }
    }

    fn set_tsc_offset(&mut self, offset: u64) -> bool {
        let Ok(msrs) = Msrs::from_entries(&[kvm_msr_entry {
            index: vmm_core::vcpu::MSR_TSC,
            data: host_tsc().wrapping_add(offset),
            ..Default::default()
        }]) else {
            return false;
        };
        matches!(self.vcpu.set_msrs(&msrs), Ok(1))
    }

    fn reset(&mut self) {
        self.complete_pending_io();
        self.forget_registers();
        *self.regs.get_mut() = Some(self.power_on.0);
        *self.sregs.get_mut() = Some(self.power_on.1);
        self.regs_dirty = true;
        self.sregs_dirty = true;
        if let Ok(mut events) = self.vcpu.get_vcpu_events() {
            events.exception.injected = 0;
            events.exception.pending = 0;
            events.interrupt.injected = 0;
            events.nmi.injected = 0;
            events.nmi.pending = 0;
            let _ = self.vcpu.set_vcpu_events(&events);
        }
        self.run.set_u8(run_page::REQUEST_INTERRUPT_WINDOW, 0);
        self.injected = false;
        self.stale_interrupt_state = true;
        if let Some(split) = &self.split {
            // KVM's local APIC goes back to its power-on state too; an
            // application processor waits for INIT and a start-up IPI
            // again (KVM runs it when one comes), the bootstrap processor
            // runs.
            if let Err(e) = self.vcpu.set_lapic(&split.power_on) {
                log::warn!("KVM reset: SET_LAPIC: errno {}", e.errno());
            }
            let mp_state = kvm_mp_state {
                mp_state: if self.index == 0 {
                    KVM_MP_STATE_RUNNABLE
                } else {
                    KVM_MP_STATE_UNINITIALIZED
                },
            };
            if let Err(e) = self.vcpu.set_mp_state(mp_state) {
                log::warn!("KVM reset: SET_MP_STATE: errno {}", e.errno());
            }
        }
        // The rest of the power-on state: x87 after FNINIT, MXCSR 0x1F80,
        // XCR0 1, debug registers, the pass-through MSRs and the TSC at 0.
        if let Err(e) = super::state::power_on_extras(self) {
            log::warn!("KVM reset: {e}");
        }
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.run
            .set_u8(run_page::REQUEST_INTERRUPT_WINDOW, u8::from(on));
    }
}

/// The host's TSC, which KVM offsets for the guest.
fn host_tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter, which every x86-64
    // CPU has; it touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A segment in the VMCB attribute layout, as KVM holds it.
fn kvm_segment_of(s: &vmm_bios::entry::Segment) -> kvm_segment {
    kvm_segment_from(&SegmentRegister::new(
        s.selector,
        s.base,
        s.limit,
        s.attributes,
    ))
}

pub(super) fn segment_of(s: &kvm_segment) -> SegmentRegister {
    let present = s.present != 0 && s.unusable == 0;
    let attributes = u16::from(s.type_ & 0xf)
        | (u16::from(s.s & 1) << 4)
        | (u16::from(s.dpl & 3) << 5)
        | (u16::from(present) << 7)
        | (u16::from(s.avl & 1) << 8)
        | (u16::from(s.l & 1) << 9)
        | (u16::from(s.db & 1) << 10)
        | (u16::from(s.g & 1) << 11);
    SegmentRegister::new(s.selector, s.base, s.limit, attributes)
}

/// KVM's form of a segment register.
pub(super) fn kvm_segment_from(s: &SegmentRegister) -> kvm_segment {
    let a = s.attributes;
    let bit = |n: u16| ((a >> n) & 1) as u8;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        present: bit(7),
        dpl: ((a >> 5) & 3) as u8,
        db: bit(10),
        s: bit(4),
        l: bit(9),
        g: bit(11),
        avl: bit(8),
        unusable: u8::from(bit(7) == 0),
        padding: 0,
    }
}

impl DescriptorState for KvmVcpu {
    fn gdtr(&self) -> DescriptorTable {
        let s = self.sregs();
        DescriptorTable {
            base: s.gdt.base,
            limit: s.gdt.limit,
        }
    }

    fn set_segment(&mut self, segment: Segment, value: SegmentRegister) {
        let mut s = self.sregs();
        let k = kvm_segment_from(&value);
        match segment {
            Segment::Es => s.es = k,
            Segment::Cs => s.cs = k,
            Segment::Ss => s.ss = k,
            Segment::Ds => s.ds = k,
            Segment::Fs => s.fs = k,
            Segment::Gs => s.gs = k,
        }
        *self.sregs.get_mut() = Some(s);
        self.sregs_dirty = true;
    }
}

impl CpuState for KvmVcpu {
    fn gpr(&self, index: usize) -> u64 {
        let r = self.regs();
        match index {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => r.rsp,
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            15 => r.r15,
            _ => 0,
        }
    }

    fn set_gpr(&mut self, index: usize, value: u64) {
        let r = self.regs_mut();
        let slot = match index {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => &mut r.rsp,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            15 => &mut r.r15,
            _ => return,
        };
        *slot = value;
    }

    fn rip(&self) -> u64 {
        self.regs().rip
    }

    fn set_rip(&mut self, value: u64) {
        self.regs_mut().rip = value;
    }

    fn rflags(&self) -> u64 {
        self.regs().rflags
    }

    fn set_rflags(&mut self, value: u64) {
        self.regs_mut().rflags = value;
        self.stale_interrupt_state = true;
    }

    fn segment(&self, segment: Segment) -> SegmentRegister {
        let s = self.sregs();
        segment_of(match segment {
            Segment::Es => &s.es,
            Segment::Cs => &s.cs,
            Segment::Ss => &s.ss,
            Segment::Ds => &s.ds,
            Segment::Fs => &s.fs,
            Segment::Gs => &s.gs,
        })
    }

    fn control(&self) -> ControlRegisters {
        let s = self.sregs();
        ControlRegisters {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        }
    }

    fn xmm(&self, index: usize) -> u128 {
        self.fpu()
            .xmm
            .get(index)
            .map_or(0, |b| u128::from_le_bytes(*b))
    }

    fn set_xmm(&mut self, index: usize, value: u128) {
        let mut f = self.fpu();
        if let Some(x) = f.xmm.get_mut(index) {
            *x = value.to_le_bytes();
            *self.fpu.get_mut() = Some(f);
            self.fpu_dirty = true;
        }
    }

    fn descriptor_state(&mut self) -> Option<&mut dyn DescriptorState> {
        Some(self)
    }
}
