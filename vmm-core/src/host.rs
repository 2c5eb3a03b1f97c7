//! The host interface: everything `vmm-core` asks of the kernel that embeds it.
//!
//! Palacios asked its host for 27 hooks (`v3_os_hooks`): printing, page and
//! heap allocation, phys<->virt translation, host IRQ hooks, CPU frequency,
//! yield/sleep/wake, six mutex hooks, threads and cross-CPU calls. Most of
//! those are served here by Rust itself:
//!
//! | Palacios hook                  | here                                      |
//! |--------------------------------|-------------------------------------------|
//! | print                          | the `log` facade (host installs a logger) |
//! | malloc/free, vmalloc           | the global allocator (`alloc`)            |
//! | mutex_alloc/lock/unlock/...    | `spin` locks                              |
//! | allocate_pages/free_pages      | [`Host::alloc_memory`], freed on drop     |
//! | paddr_to_vaddr/vaddr_to_paddr  | [`HostMemory`] (slices + `host_phys`)     |
//! | get_cpu_khz, time              | [`Host::now_ns`]                          |
//! | yield_cpu/sleep/wakeup         | [`Host::idle`]                            |
//! | hook_interrupt/ack_irq         | host-side, fed in through `irq::IrqLine`  |
//! | start_kernel_thread/call_on_cpu| host-side: the host runs vCPUs itself     |
//!
//! That leaves three methods on [`Host`] and three on [`HostMemory`].

use alloc::boxed::Box;
use core::fmt;

/// A host-physical address (what the MMU of the host, or a DMA engine, uses).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct HostPhysAddr(pub u64);

/// A block of host memory handed to the VMM by [`Host::alloc_memory`].
///
/// The block is zeroed when allocated, contiguous in the host's address
/// space, and freed when dropped. It is the only way host memory enters
/// `vmm-core`: guest RAM and ROM are blocks, and so are the pages that
/// hardware structures (VMCB, VMCS, nested and shadow page tables) live in.
pub trait HostMemory: Send {
    /// The block's bytes, for reading.
    fn as_slice(&self) -> &[u8];
    /// The block's bytes, for writing.
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// The host-physical address of the byte at `offset`, where the host
    /// exposes physical addresses (a bare-metal kernel, and the test host,
    /// which invents disjoint addresses per block). `None` on hosts where the
    /// VMM never sees physical addresses (Linux user space under KVM) and for
    /// an `offset` outside the block.
    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr>;
}

/// Why the host could not serve a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostError {
    /// Not enough memory for `len` bytes aligned to `align`.
    OutOfMemory {
        /// Bytes requested.
        len: usize,
        /// Alignment requested.
        align: usize,
    },
    /// The alignment is not a power of two, or the length is zero.
    BadRequest {
        /// Bytes requested.
        len: usize,
        /// Alignment requested.
        align: usize,
    },
}

impl core::error::Error for HostError {}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::OutOfMemory { len, align } => {
                write!(f, "host out of memory: {len} bytes aligned to {align:#x}")
            }
            HostError::BadRequest { len, align } => {
                write!(
                    f,
                    "bad host memory request: {len} bytes aligned to {align:#x}"
                )
            }
        }
    }
}

/// What the embedding kernel provides. One instance serves all VMs.
///
/// Implementations: the bare-metal kernel (`host-glue-baremetal`), Linux
/// (`host-glue-linux`) and [`crate::test_host::TestHost`].
pub trait Host: Send + Sync {
    /// Allocate `len` zeroed bytes aligned to `align` (a power of two).
    ///
    /// Called while a VM is being built (guest RAM, ROM images) and by vCPU
    /// backends when they create hardware structures (VMCB/VMCS pages,
    /// nested and shadow page tables, I/O and MSR permission maps); never on
    /// the exit path of a running guest except when shadow paging grows its
    /// cache. Backends that hand addresses to hardware ask for page
    /// alignment (or 2 MiB for large nested mappings) and need
    /// [`HostMemory::host_phys`] to answer.
    fn alloc_memory(&self, len: usize, align: usize) -> Result<Box<dyn HostMemory>, HostError>;

    /// Monotonic time in nanoseconds since an arbitrary origin.
    ///
    /// Called by device models through `DeviceContext::now_ns` when the guest
    /// reads a timer (PIT, RTC, ACPI PM timer, LAPIC) and by the run loop to
    /// find due timers. Must never go backwards.
    fn now_ns(&self) -> u64;

    /// Give the CPU away until `deadline_ns` (a [`Host::now_ns`] value) or
    /// until something happens for this VM, whichever is first; `None` means
    /// "no deadline, just let others run".
    ///
    /// Called by the run loop when a vCPU halts with interrupts enabled and
    /// by a VM that waits for a shared device held by another VM. A host that
    /// time-slices VMs on one CPU may simply return and run the next VM.
    fn idle(&self, deadline_ns: Option<u64>);

    /// The guest about to run must be interrupted (an external-interrupt
    /// exit) no later than `deadline_ns` (a [`Host::now_ns`] value): the next
    /// device timer or the end of the VM's time slice. `None`: no deadline,
    /// but the host should still get the CPU back now and then.
    ///
    /// Called by the run loop before every entry. A host with a periodic
    /// tick fine enough for its guests' timers may ignore it (the default);
    /// a host with a one-shot timer arms it, and then a guest that runs
    /// undisturbed takes no timer exits at all.
    fn preempt_at(&self, deadline_ns: Option<u64>) {
        let _ = deadline_ns;
    }

    /// The frequency of the time-stamp counter guests read (the host's TSC,
    /// which hardware backends let guests read without an exit), in kHz,
    /// if the host knows it and it is constant.
    ///
    /// When known, guests are offered a paravirtual clock (the KVM clock
    /// interface, see [`crate::vcpu::guest_cpuid_for`]) so that firmware
    /// and Linux can use the TSC instead of calibrating it against timers
    /// that exit on every read. The default says "unknown".
    fn tsc_khz(&self) -> Option<u32> {
        None
    }

    /// Whether the host's own code uses x87/SSE/AVX registers (or XCR0
    /// settings of its own) between guest runs. The SVM and VMX backends
    /// then save and restore the host's extended state around every entry
    /// (see [`crate::xstate`]); a host built without floating point or
    /// SIMD (a soft-float kernel) answers `false` and saves those two
    /// XSAVE/XRSTOR per exit. Guests are isolated from each other either
    /// way. The default, `true`, is always safe.
    fn uses_extended_state(&self) -> bool {
        true
    }

    /// The index (below 64) of the physical CPU running the caller, for a
    /// host whose vCPUs do not move between CPUs behind the VMM's back.
    /// With it, and a host that does not use extended state itself, the
    /// SVM and VMX backends skip reloading a vCPU's x87/SSE registers that
    /// are still in that CPU from its last exit. The default, `None`, is
    /// always safe.
    fn current_cpu(&self) -> Option<usize> {
        None
    }
}
