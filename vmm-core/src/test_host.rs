//! An in-process host for tests, benchmarks and fuzzers: no hardware, no OS.
//!
//! [`TestHost`] allocates guest memory from the heap, invents host-physical
//! addresses (disjoint for every block, so that DMA checks between VMs mean
//! something), and keeps a manual clock that tests advance explicitly, so
//! timer behaviour is deterministic. [`TestIrqLine`] records what a device
//! does with its interrupt line. [`TestVmBuilder`] builds a PC-shaped VM in
//! one expression. [`ReplayVcpu`] and [`ScriptedVcpu`] are vCPU backends
//! that report scripted exits.

use crate::device::{ClaimError, Device, DeviceId};
use crate::emulator::{
    Breakpoints, CpuState, DescriptorTable, RegisterFile, SegmentRegister, RFLAGS_IF,
};
use crate::host::{Host, HostError, HostMemory, HostPhysAddr};
use crate::irq::IrqLine;
use crate::memory::{GuestMemory, MemoryError};
use crate::paging::ControlRegisters;
use crate::vcpu::{
    check_debug_registers, check_event_state, check_system_registers, check_xsave_image, ArchState,
    ArchStateError, DebugRegisters, DeviceAccess, Event, EventState, Exit, StateLimits,
    SystemRegisters, VcpuBackend, XsaveImage, XSAVE_LEGACY_SIZE, XSAVE_MIN_SIZE,
};
use crate::vm::{Vm, VmId};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Where the next invented host-physical block starts (4 GiB up, so that it
/// never looks like a small guest address by accident).
static NEXT_FAKE_PHYS: AtomicU64 = AtomicU64::new(0x1_0000_0000);

/// Host memory backed by a heap vector, with an invented host-physical base.
pub struct VecMemory {
    bytes: Vec<u8>,
    phys_base: u64,
}

impl VecMemory {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        // Keep blocks 2 MiB apart and aligned, like a real page allocator.
        let span = ((len as u64) + 0x1f_ffff) & !0x1f_ffff;
        let phys_base = NEXT_FAKE_PHYS.fetch_add(span.max(0x20_0000), Ordering::Relaxed);
        Self {
            bytes: vec![0; len],
            phys_base,
        }
    }

    /// A block holding a copy of `data`.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut m = Self::new(data.len());
        m.bytes.copy_from_slice(data);
        m
    }
}

impl HostMemory for VecMemory {
    fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        (offset < self.bytes.len()).then(|| HostPhysAddr(self.phys_base + offset as u64))
    }
}

/// The in-process host.
#[derive(Default)]
pub struct TestHost {
    now_ns: AtomicU64,
    allocated: AtomicU64,
    limit: Option<u64>,
    tsc_khz: Option<u32>,
}

impl TestHost {
    /// A host with unlimited memory and the clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A host that says its TSC runs at `khz` (so guests are offered
    /// kvmclock).
    pub fn with_tsc_khz(khz: u32) -> Self {
        Self {
            tsc_khz: Some(khz),
            ..Self::default()
        }
    }

    /// A host that refuses allocations beyond `bytes` in total.
    pub fn with_memory_limit(bytes: u64) -> Self {
        Self {
            limit: Some(bytes),
            ..Self::default()
        }
    }

    /// Move the clock forward.
    pub fn advance_ns(&self, ns: u64) {
        self.now_ns.fetch_add(ns, Ordering::SeqCst);
    }

    /// Set the clock (never backwards).
    pub fn set_now_ns(&self, ns: u64) {
        self.now_ns.fetch_max(ns, Ordering::SeqCst);
    }

    /// Bytes allocated so far.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }
}

impl Host for TestHost {
    fn alloc_memory(&self, len: usize, align: usize) -> Result<Box<dyn HostMemory>, HostError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(HostError::BadRequest { len, align });
        }
        let total = self.allocated.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if self.limit.is_some_and(|l| total > l) {
            self.allocated.fetch_sub(len as u64, Ordering::Relaxed);
            return Err(HostError::OutOfMemory { len, align });
        }
        Ok(Box::new(VecMemory::new(len)))
    }

    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }

    fn idle(&self, deadline_ns: Option<u64>) {
        // Nothing else runs here: jump the clock to the deadline.
        if let Some(d) = deadline_ns {
            self.set_now_ns(d);
        }
    }

    fn tsc_khz(&self) -> Option<u32> {
        self.tsc_khz
    }
}

/// An interrupt line that records its level and counts rising edges.
#[derive(Default, Debug)]
pub struct TestIrqLine {
    level: AtomicBool,
    rising_edges: AtomicU32,
}

impl TestIrqLine {
    /// A new line, low.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current level.
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// Rising edges so far.
    pub fn rising_edges(&self) -> u32 {
        self.rising_edges.load(Ordering::SeqCst)
    }
}

impl IrqLine for TestIrqLine {
    fn set_level(&self, high: bool) {
        let was = self.level.swap(high, Ordering::SeqCst);
        if high && !was {
            self.rising_edges.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Why a test VM could not be built.
#[derive(Debug)]
pub enum TestVmError {
    /// The host refused memory.
    Host(HostError),
    /// The memory map refused a region.
    Memory(MemoryError),
    /// The device manager refused a claim.
    Claim(ClaimError),
}

impl core::error::Error for TestVmError {}

impl fmt::Display for TestVmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestVmError::Host(e) => write!(f, "{e}"),
            TestVmError::Memory(e) => write!(f, "{e}"),
            TestVmError::Claim(e) => write!(f, "{e}"),
        }
    }
}

impl From<HostError> for TestVmError {
    fn from(e: HostError) -> Self {
        Self::Host(e)
    }
}
impl From<MemoryError> for TestVmError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}
impl From<ClaimError> for TestVmError {
    fn from(e: ClaimError) -> Self {
        Self::Claim(e)
    }
}

/// Builds a VM on a [`TestHost`]: RAM from 0, optional ROM and MMIO holes,
/// devices with their claims.
pub struct TestVmBuilder {
    host: Arc<TestHost>,
    id: VmId,
    ram: u64,
    roms: Vec<(u64, Vec<u8>)>,
    mmio: Vec<(u64, u64)>,
    devices: Vec<PendingDevice>,
}

struct PendingDevice {
    device: Box<dyn Device>,
    ports: Vec<(u16, u16)>,
    mmio: Vec<(u64, u64)>,
}

impl TestVmBuilder {
    /// A VM `id` on `host` with no RAM yet.
    pub fn new(host: Arc<TestHost>, id: u32) -> Self {
        Self {
            host,
            id: VmId(id),
            ram: 0,
            roms: Vec::new(),
            mmio: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// `bytes` of RAM at guest-physical 0.
    pub fn ram(mut self, bytes: u64) -> Self {
        self.ram = bytes;
        self
    }

    /// A ROM holding `image` at `gpa`.
    pub fn rom(mut self, gpa: u64, image: &[u8]) -> Self {
        self.roms.push((gpa, image.to_vec()));
        self
    }

    /// An MMIO hole.
    pub fn mmio_hole(mut self, gpa: u64, len: u64) -> Self {
        self.mmio.push((gpa, len));
        self
    }

    /// A device claiming the given `(first, count)` port ranges and
    /// `(gpa, len)` MMIO ranges. Device ids follow the order of calls,
    /// starting at 0.
    pub fn device(
        mut self,
        device: impl Device,
        ports: &[(u16, u16)],
        mmio: &[(u64, u64)],
    ) -> Self {
        self.devices.push(PendingDevice {
            device: Box::new(device),
            ports: ports.to_vec(),
            mmio: mmio.to_vec(),
        });
        self
    }

    /// Build the VM.
    pub fn build(self) -> Result<Vm, TestVmError> {
        let mut memory = GuestMemory::new();
        if self.ram > 0 {
            let len = usize::try_from(self.ram).map_err(|_| HostError::OutOfMemory {
                len: usize::MAX,
                align: 4096,
            })?;
            memory.add_ram(0, self.host.alloc_memory(len, 4096)?)?;
        }
        for (gpa, image) in &self.roms {
            let mut block = self.host.alloc_memory(image.len().max(1), 4096)?;
            block.as_mut_slice()[..image.len()].copy_from_slice(image);
            memory.add_rom(*gpa, block)?;
        }
        for (gpa, len) in &self.mmio {
            memory.add_mmio(*gpa, *len)?;
        }
        let mut vm = Vm::new(self.id, self.host, memory);
        for pending in self.devices {
            let id: DeviceId = vm.add_device(pending.device)?;
            for (first, count) in pending.ports {
                vm.claim_ports(id, first, count)?;
            }
            for (gpa, len) in pending.mmio {
                vm.claim_mmio(id, gpa, len)?;
            }
        }
        Ok(vm)
    }
}

/// Writes the required methods of [`CpuState`] (general-purpose registers,
/// RIP, RFLAGS, segments, control registers, XMM) for a test vCPU that keeps
/// its registers in a field: a [`RegisterFile`], or another test vCPU it
/// wraps. Each method reads or writes that field through its own
/// [`CpuState`]. Use it inside the `impl CpuState` block, naming the field
/// (`regs`, or `0` for a tuple struct):
///
/// ```
/// use vmm_core::emulator::{CpuState, RegisterFile};
///
/// struct Probe {
///     regs: RegisterFile,
///     shadows: u32,
/// }
///
/// impl CpuState for Probe {
///     vmm_core::test_host::delegate_cpu_state!(regs);
///     // Anything else the test needs is written as usual.
///     fn set_mov_ss_shadow(&mut self) {
///         self.shadows += 1;
///     }
/// }
///
/// let mut probe = Probe { regs: RegisterFile::real_mode(), shadows: 0 };
/// probe.set_gpr(0, 7);
/// assert_eq!(probe.regs.gprs[0], 7);
/// // The provided methods keep the trait's defaults, not the register
/// // file's: this vCPU offers no YMM state although the file has it.
/// assert_eq!(probe.ymm_upper(0), None);
/// ```
///
/// Only the required methods are written: the provided ones (CPL, PKRU,
/// YMM, x87, descriptor tables, the caches, ...) keep [`CpuState`]'s
/// defaults unless the block overrides them, so what the emulator may do
/// on such a vCPU is the test's choice, not the field's.
pub use crate::__delegate_cpu_state as delegate_cpu_state;

#[doc(hidden)]
#[macro_export]
macro_rules! __delegate_cpu_state {
    ($field:tt) => {
        fn gpr(&self, index: usize) -> u64 {
            $crate::emulator::CpuState::gpr(&self.$field, index)
        }
        fn set_gpr(&mut self, index: usize, value: u64) {
            $crate::emulator::CpuState::set_gpr(&mut self.$field, index, value)
        }
        fn rip(&self) -> u64 {
            $crate::emulator::CpuState::rip(&self.$field)
        }
        fn set_rip(&mut self, value: u64) {
            $crate::emulator::CpuState::set_rip(&mut self.$field, value)
        }
        fn rflags(&self) -> u64 {
            $crate::emulator::CpuState::rflags(&self.$field)
        }
        fn set_rflags(&mut self, value: u64) {
            $crate::emulator::CpuState::set_rflags(&mut self.$field, value)
        }
        fn segment(&self, segment: $crate::emulator::Segment) -> $crate::emulator::SegmentRegister {
            $crate::emulator::CpuState::segment(&self.$field, segment)
        }
        fn control(&self) -> $crate::paging::ControlRegisters {
            $crate::emulator::CpuState::control(&self.$field)
        }
        fn xmm(&self, index: usize) -> u128 {
            $crate::emulator::CpuState::xmm(&self.$field, index)
        }
        fn set_xmm(&mut self, index: usize, value: u128) {
            $crate::emulator::CpuState::set_xmm(&mut self.$field, index, value)
        }
    };
}

/// The [`VcpuBackend`] methods of a test vCPU that has nothing behind the
/// registers: no backend MSRs (the guest gets #GP for them), a reset that
/// changes nothing, and no interrupt-window exits.
macro_rules! no_backend_state {
    () => {
        fn backend_msr(&self, _msr: u32) -> Option<u64> {
            None
        }
        fn set_backend_msr(&mut self, _msr: u32, _value: u64) -> bool {
            false
        }
        fn reset(&mut self) {}
        fn request_interrupt_window(&mut self, _on: bool) {}
    };
}

/// A vCPU backend for tests and fuzzers that replays device-access exits
/// (`Exit::DeviceAccess`, as KVM reports them) with their data buffers, in
/// order, then reports `Exit::Preempted`. What the exit loop left in each
/// access's buffer is kept in [`ReplayVcpu::completed`]. It takes no
/// interrupts and has no backend MSRs.
pub struct ReplayVcpu {
    /// The registers the exit loop and the emulator see.
    pub regs: RegisterFile,
    /// The rest of the architectural state ([`ArchState`]).
    pub arch: TestArchState,
    script: VecDeque<(DeviceAccess, Vec<u8>)>,
    buffer: Vec<u8>,
    /// The buffer of every access the loop completed, in order.
    pub completed: Vec<Vec<u8>>,
}

impl ReplayVcpu {
    /// A vCPU with `regs` that will report the accesses of `script`.
    pub fn new(
        regs: RegisterFile,
        script: impl IntoIterator<Item = (DeviceAccess, Vec<u8>)>,
    ) -> Self {
        Self {
            regs,
            arch: TestArchState::default(),
            script: script.into_iter().collect(),
            buffer: Vec::new(),
            completed: Vec::new(),
        }
    }
}

impl CpuState for ReplayVcpu {
    delegate_cpu_state!(regs);
}

impl VcpuBackend for ReplayVcpu {
    fn run(&mut self, _vm: &mut Vm) -> Exit {
        // The previous access is complete: keep what the loop put there.
        if !self.buffer.is_empty() {
            self.completed.push(core::mem::take(&mut self.buffer));
        }
        match self.script.pop_front() {
            Some((access, data)) => {
                self.buffer = data;
                Exit::DeviceAccess(access)
            }
            None => Exit::Preempted,
        }
    }
    fn access_data(&mut self) -> &mut [u8] {
        &mut self.buffer
    }
    fn inject(&mut self, _event: Event) -> bool {
        true
    }
    fn interrupts_open(&self) -> bool {
        false
    }
    no_backend_state!();
    fn tsc_offset(&self) -> u64 {
        self.arch.tsc_offset
    }
    fn set_tsc_offset(&mut self, offset: u64) -> bool {
        self.arch.tsc_offset = offset;
        true
    }
}

/// A vCPU backend for tests and fuzzers that reports a script of exits, in
/// order, then [`Exit::Shutdown`], and lets the exit loop run on in the
/// emulator after an I/O exit (`vcpu::run_on`). It keeps what the loop
/// asks of it: the events injected (always accepted) and the debug traps
/// raised; it takes an interrupt while RFLAGS.IF is set, has no backend
/// MSRs and reports the [`Breakpoints`] the test sets.
pub struct ScriptedVcpu {
    /// The registers the exit loop and the emulator see.
    pub regs: RegisterFile,
    exits: VecDeque<Exit>,
    /// Every event injected, in order.
    pub injected: Vec<Event>,
    /// The DR6 bits of every debug trap raised, in order.
    pub traps: Vec<u64>,
    /// The guest's breakpoints, as [`VcpuBackend::breakpoints`] reports
    /// them (none at first).
    pub breakpoints: Breakpoints,
}

impl ScriptedVcpu {
    /// A vCPU with `regs` that will report `exits`.
    pub fn new(regs: RegisterFile, exits: impl IntoIterator<Item = Exit>) -> Self {
        Self {
            regs,
            exits: exits.into_iter().collect(),
            injected: Vec::new(),
            traps: Vec::new(),
            breakpoints: Breakpoints::NONE,
        }
    }
}

impl CpuState for ScriptedVcpu {
    delegate_cpu_state!(regs);
}

impl VcpuBackend for ScriptedVcpu {
    fn run(&mut self, _vm: &mut Vm) -> Exit {
        self.exits.pop_front().unwrap_or(Exit::Shutdown)
    }
    fn inject(&mut self, event: Event) -> bool {
        self.injected.push(event);
        true
    }
    fn interrupts_open(&self) -> bool {
        self.regs.rflags & RFLAGS_IF != 0
    }
    no_backend_state!();
    fn debug_trap(&mut self, dr6: u64) {
        self.traps.push(dr6);
    }
    fn breakpoints(&self) -> Breakpoints {
        self.breakpoints
    }
    fn may_run_on(&self) -> bool {
        true
    }
}

/// What [`ReplayVcpu`] holds beyond its [`RegisterFile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestArchState {
    /// LDTR.
    pub ldtr: SegmentRegister,
    /// TR.
    pub tr: SegmentRegister,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR2.
    pub cr2: u64,
    /// CR8.
    pub cr8: u64,
    /// The debug registers.
    pub debug: DebugRegisters,
    /// The event state.
    pub events: EventState,
    /// The XSAVE area (x87, SSE and AVX in the standard layout); XMM and
    /// YMM live in the register file and are copied in and out.
    pub xsave: Vec<u8>,
    /// What the vCPU adds to the host's TSC (the vCPU offsets its TSC as
    /// SVM and VMX do, so a snapshot's offset restores exactly).
    pub tsc_offset: u64,
}

/// End of the AVX component (offset 576, 256 bytes) in [`TestArchState`]'s
/// area.
const TEST_XSAVE_SIZE: usize = XSAVE_MIN_SIZE + 256;

impl Default for TestArchState {
    /// The power-on values: LDTR and TR as after RESET, FCW 0x37F, MXCSR
    /// 0x1F80.
    fn default() -> Self {
        let mut xsave = vec![0; TEST_XSAVE_SIZE];
        xsave[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        xsave[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        Self {
            ldtr: SegmentRegister::new(0, 0, 0xffff, 0x82),
            tr: SegmentRegister::new(0, 0, 0xffff, 0x8b),
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            cr2: 0,
            cr8: 0,
            debug: DebugRegisters::default(),
            events: EventState::default(),
            xsave,
            tsc_offset: 0,
        }
    }
}

impl ReplayVcpu {
    /// What the test vCPU offers: CR4 up to PKE, every EFER bit, 48-bit
    /// physical addresses.
    fn limits() -> StateLimits {
        StateLimits::new(0x7f_ffff, !0, 48)
    }
}

impl ArchState for ReplayVcpu {
    fn system_registers(&self) -> SystemRegisters {
        SystemRegisters {
            segments: self.regs.segments,
            ldtr: self.arch.ldtr,
            tr: self.arch.tr,
            gdtr: self.regs.gdtr,
            idtr: self.arch.idtr,
            cr0: self.regs.control.cr0,
            cr2: self.arch.cr2,
            cr3: self.regs.control.cr3,
            cr4: self.regs.control.cr4,
            cr8: self.arch.cr8,
            efer: self.regs.control.efer,
        }
    }

    fn set_system_registers(&mut self, r: &SystemRegisters) -> Result<(), ArchStateError> {
        check_system_registers(r, &Self::limits())?;
        self.regs.segments = r.segments;
        self.arch.ldtr = r.ldtr;
        self.arch.tr = r.tr;
        self.regs.gdtr = r.gdtr;
        self.arch.idtr = r.idtr;
        self.regs.control = ControlRegisters {
            cr0: r.cr0,
            cr3: r.cr3,
            cr4: r.cr4,
            efer: r.efer,
        };
        self.arch.cr2 = r.cr2;
        self.arch.cr8 = r.cr8;
        Ok(())
    }

    fn debug_registers(&self) -> DebugRegisters {
        self.arch.debug
    }

    fn set_debug_registers(&mut self, d: &DebugRegisters) -> Result<(), ArchStateError> {
        check_debug_registers(d)?;
        self.arch.debug = *d;
        Ok(())
    }

    fn event_state(&self) -> EventState {
        self.arch.events
    }

    fn set_event_state(&mut self, e: &EventState) -> Result<(), ArchStateError> {
        check_event_state(e, self.regs.rflags, self.regs.control.cr0)?;
        self.arch.events = *e;
        Ok(())
    }

    fn xsave_image(&self) -> XsaveImage {
        let mut area = self.arch.xsave.clone();
        for i in 0..16 {
            area[160 + 16 * i..176 + 16 * i].copy_from_slice(&self.regs.xmm[i].to_le_bytes());
            area[XSAVE_MIN_SIZE + 16 * i..XSAVE_MIN_SIZE + 16 + 16 * i]
                .copy_from_slice(&self.regs.ymm_upper[i].to_le_bytes());
        }
        let bv = XSAVE_LEGACY_SIZE..XSAVE_LEGACY_SIZE + 8;
        let mut b = [0u8; 8];
        b.copy_from_slice(&area[bv.clone()]);
        area[bv].copy_from_slice(&(u64::from_le_bytes(b) | 0b110).to_le_bytes());
        XsaveImage {
            xcr0: self.regs.xcr0 | 1,
            area,
        }
    }

    fn set_xsave_image(&mut self, x: &XsaveImage) -> Result<(), ArchStateError> {
        let valid = |v: u64| v & 1 != 0 && v & !7 == 0 && (v & 4 == 0 || v & 2 != 0);
        check_xsave_image(x, valid, 7, |i| {
            if i == 2 {
                TEST_XSAVE_SIZE
            } else {
                usize::MAX
            }
        })?;
        let mut area = vec![0; TEST_XSAVE_SIZE];
        let n = x.area.len().min(TEST_XSAVE_SIZE);
        area[..n].copy_from_slice(&x.area[..n]);
        let bv = x.xstate_bv();
        for i in 0..16 {
            let at = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&area[o..o + 16]);
                u128::from_le_bytes(b)
            };
            self.regs.xmm[i] = if bv & 2 != 0 { at(160 + 16 * i) } else { 0 };
            self.regs.ymm_upper[i] = if bv & 4 != 0 {
                at(XSAVE_MIN_SIZE + 16 * i)
            } else {
                0
            };
        }
        self.arch.xsave = area;
        self.regs.xcr0 = x.xcr0;
        Ok(())
    }
}
