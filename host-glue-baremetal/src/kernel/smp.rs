//! The host machine's other CPUs (application processors, APs): found in
//! the firmware's ACPI MADT (`host_glue_baremetal::acpi`), started with
//! INIT-SIPI-SIPI through a real-mode trampoline that enters long mode on
//! the boot page tables, each with its own stack, its IDT (the shared,
//! read-only one), its local APIC timer and its own virtualization set-up
//! (`backend::enable`: SVM's EFER.SVME and host save area, or VMX's VMXON
//! region with a GDT and TSS of its own). Each then waits for work: a job
//! the bootstrap processor posts in its mailbox (whole VMs to run, see
//! `kmain`), run with that CPU's backend.
//!
//! CPUs are numbered 0 (the bootstrap processor) to [`online`] - 1 in the
//! order they came up; [`current`] finds the caller's number from its
//! stack pointer (each application processor's stack is its own heap
//! block), which costs no local APIC read: under multi-threaded TCG an
//! APIC access takes QEMU's global lock.

use super::backend::{self, Backend};
use super::boot_info::BootInfo;
use super::{apic, host, interrupts, time};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use host_glue_baremetal::cmdline::CpuBackend;
use spin::{Mutex, Once};

/// The most CPUs the host uses (more are left asleep).
pub const MAX_CPUS: usize = 16;

/// Where the trampoline is copied: a page of conventional memory; the
/// start-up IPI's vector is its page number.
const TRAMPOLINE: u64 = 0x8000;

/// Each application processor's stack.
const AP_STACK_BYTES: usize = 256 << 10;

// The trampoline, copied to TRAMPOLINE and entered there in real mode at
// CS:IP = 0x0800:0000. It loads its own GDT (32-bit code 0x08, data 0x10,
// 64-bit code 0x18), enters protected mode, turns on PAE/PGE/PSE and the
// boot page tables (`boot_pml4`, which map the low 64 GiB 1:1 and so this
// page too), EFER.LME and paging, as `boot.rs` does for the bootstrap
// processor, and jumps to `ap_long_mode` in the kernel proper, which loads
// the kernel's GDT, the stack the bootstrap processor left in
// `AP_STACK_TOP` and calls `ap_main`. Addresses inside the trampoline are
// computed from its copy's address, as it runs there, not where it was
// linked.
global_asm!(
    r#"
    .set AP_TRAMPOLINE, 0x8000
    .section .rodata
    .balign 16
    .global ap_trampoline_start
    .global ap_trampoline_end
ap_trampoline_start:
    .code16
    cli
    cld
    xor ax, ax
    mov ds, ax
    /* lgdt [disp16], encoded by hand (the operand is an expression) */
    .byte 0x0f, 0x01, 0x16
    .short AP_TRAMPOLINE + (ap_gdt_ptr - ap_trampoline_start)
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    /* ljmpl 0x08:ap_tramp32 (operand-size prefix: 32-bit offset) */
    .byte 0x66, 0xea
    .long AP_TRAMPOLINE + (ap_tramp32 - ap_trampoline_start)
    .short 0x08

    .code32
ap_tramp32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 0xb0            /* PAE | PGE | PSE */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080     /* EFER */
    rdmsr
    or eax, 0x100           /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001      /* PG | WP | PE */
    mov cr0, eax
    /* ljmp 0x18:ap_tramp64 */
    .byte 0xea
    .long AP_TRAMPOLINE + (ap_tramp64 - ap_trampoline_start)
    .short 0x18

    .code64
ap_tramp64:
    movabs rax, offset ap_long_mode
    jmp rax

    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0x00af9a000000ffff    /* 0x18: 64-bit code */
ap_gdt_ptr:
    .short ap_gdt_ptr - ap_gdt - 1
    .long AP_TRAMPOLINE + (ap_gdt - ap_trampoline_start)
ap_trampoline_end:

    .section .text
ap_long_mode:
    mov rsp, [rip + AP_STACK_TOP]
    lgdt [rip + boot_gdt_ptr]
    /* Reload CS with the kernel's 64-bit code selector. */
    push 0x08
    lea rax, [rip + 1f]
    push rax
    retfq
1:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    xor ebp, ebp
    call ap_main
2:
    cli
    hlt
    jmp 2b
"#
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The stack the next application processor to start takes (its top).
#[no_mangle]
static AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);

/// CPU number by local APIC ID (xAPIC IDs are 8 bits); 0 for the bootstrap
/// processor and any ID not started. Read once, when an AP arrives.
static INDEX_OF_APIC: [AtomicU8; 256] = [const { AtomicU8::new(0) }; 256];

/// The lowest address of each application processor's stack (0 for the
/// bootstrap processor, whose stack is the boot stack).
static STACK_BOTTOM: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// APIC ID by CPU number.
static APIC_OF_INDEX: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// How many CPUs run (the bootstrap processor counts).
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// An application processor's state as it starts.
const DOWN: u8 = 0;
/// It reached `ap_main` (its stack variable may be reused).
const ARRIVED: u8 = 1;
/// Virtualization is on: it waits for work.
const READY: u8 = 2;
/// It could not switch virtualization on: it halts.
const FAILED: u8 = 3;

static STATE: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(DOWN) }; MAX_CPUS];

/// Which backend the application processors switch on (`cpu=`).
static BACKEND_CHOICE: Once<CpuBackend> = Once::new();

/// Set when no more work will come: idle CPUs halt for good.
static RETIRED: AtomicBool = AtomicBool::new(false);

/// Work for one CPU: run with that CPU's virtualization backend.
pub type Job = Box<dyn FnOnce(&Backend) + Send>;

/// Each CPU's mailbox.
static MAILBOX: [Mutex<Option<Job>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];

/// The number of the CPU that calls.
pub fn current() -> usize {
    let online = ONLINE.load(Ordering::Relaxed).min(MAX_CPUS);
    if online == 1 {
        return 0;
    }
    let rsp: u64;
    // SAFETY: reading RSP into a register has no side effects.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    (1..online)
        .find(|&i| {
            let bottom = STACK_BOTTOM[i].load(Ordering::Relaxed);
            bottom != 0 && rsp.wrapping_sub(bottom) < AP_STACK_BYTES as u64
        })
        .unwrap_or(0)
}

/// How many CPUs run.
pub fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// The local APIC ID of CPU `index`.
pub fn apic_id(index: usize) -> u32 {
    APIC_OF_INDEX
        .get(index)
        .map_or(0, |a| a.load(Ordering::Relaxed))
}

/// Why no application processor was started.
#[derive(Debug)]
pub enum SmpError {
    /// The ACPI tables do not list the processors.
    Acpi(host_glue_baremetal::acpi::AcpiError),
    /// The trampoline's page is not free RAM, or boot data lies there.
    TrampolineBusy,
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmpError::Acpi(e) => write!(f, "{e}"),
            SmpError::TrampolineBusy => write!(
                f,
                "the trampoline page {TRAMPOLINE:#x} is not free RAM or holds boot data"
            ),
        }
    }
}

/// Read physical memory below 4 GiB (identity-mapped) for the ACPI parser.
fn read_phys(addr: u64, buf: &mut [u8]) -> bool {
    let Some(end) = addr.checked_add(buf.len() as u64) else {
        return false;
    };
    if addr == 0 || end > 1 << 32 {
        return false;
    }
    // SAFETY: [addr, end) lies below 4 GiB, which the boot page tables map
    // 1:1 with present, readable 2 MiB pages, so the read cannot fault; the
    // callers read the BIOS area and ACPI tables, which are RAM (plain
    // reads, no side effects), and the bytes are copied out, never
    // referenced.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
    true
}

/// Whether the trampoline page is free RAM that holds nothing the kernel
/// still reads (the loader's information, the command line, the modules).
fn trampoline_free(boot: &BootInfo, info: u64) -> bool {
    let page = TRAMPOLINE..TRAMPOLINE + 4096;
    let free = boot
        .free_areas()
        .iter()
        .any(|&(s, e)| s <= page.start && page.end <= e);
    let overlaps = |start: u64, len: u64| start < page.end && page.start < start + len.max(1);
    let busy = overlaps(info, 4096)
        || overlaps(boot.cmdline.as_ptr() as u64, boot.cmdline.len() as u64)
        || boot.modules().any(|m| {
            overlaps(m.bytes.as_ptr() as u64, m.bytes.len() as u64)
                || overlaps(m.name.as_ptr() as u64, m.name.len() as u64)
        });
    free && !busy
}

/// Start up to `max` CPUs in all (the bootstrap processor included), each
/// switching on `choice`; returns how many run. `info` is the loader's
/// information block (kept clear of the trampoline).
pub fn start_aps(
    max: usize,
    choice: CpuBackend,
    boot: &BootInfo,
    info: u64,
) -> Result<usize, SmpError> {
    let me = apic::id();
    APIC_OF_INDEX[0].store(me, Ordering::Relaxed);
    let ids = host_glue_baremetal::acpi::enabled_apic_ids(&read_phys).map_err(SmpError::Acpi)?;
    let max = max.min(MAX_CPUS);
    if max <= 1 || ids.len() <= 1 {
        return Ok(1);
    }
    if !trampoline_free(boot, info) {
        return Err(SmpError::TrampolineBusy);
    }
    BACKEND_CHOICE.call_once(|| choice);
    // Both are labels of the assembly above, in this order in one
    // section; only their addresses are taken.
    let (start, end) = (
        core::ptr::addr_of!(ap_trampoline_start),
        core::ptr::addr_of!(ap_trampoline_end),
    );
    let len = end as usize - start as usize;
    // SAFETY: the trampoline page is free RAM by the loader's memory map,
    // below the kernel (loaded at 1 MiB) and the heap, and holds none of
    // the loader's data the kernel still reads (`trampoline_free`); it is
    // identity-mapped and writable, and the copy (under 4 KiB) stays in it.
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len.min(4096)) };
    for &id in ids.iter().filter(|&&id| id != me && id < 256) {
        let index = ONLINE.load(Ordering::Relaxed);
        if index >= max {
            break;
        }
        let stack: &'static mut [u8] =
            Box::leak(alloc::vec![0u8; AP_STACK_BYTES].into_boxed_slice());
        let top = (stack.as_mut_ptr() as u64 + AP_STACK_BYTES as u64) & !0xf;
        STACK_BOTTOM[index].store(stack.as_ptr() as u64, Ordering::Relaxed);
        AP_STACK_TOP.store(top, Ordering::Release);
        INDEX_OF_APIC[id as usize].store(index as u8, Ordering::Relaxed);
        APIC_OF_INDEX[index].store(id, Ordering::Relaxed);
        // ONLINE counts it now so that `current` looks its number up.
        ONLINE.store(index + 1, Ordering::Release);
        STATE[index].store(DOWN, Ordering::Release);
        if !wake(id, index) {
            log::warn!("host CPU with APIC id {id} did not start");
            INDEX_OF_APIC[id as usize].store(0, Ordering::Relaxed);
            ONLINE.store(index, Ordering::Release);
            continue;
        }
        // Wait until it has switched virtualization on (or failed).
        let until = time::now_ns() + 2_000_000_000;
        while STATE[index].load(Ordering::Acquire) == ARRIVED && time::now_ns() < until {
            core::hint::spin_loop();
        }
        if STATE[index].load(Ordering::Acquire) != READY {
            log::warn!("host CPU {index} (APIC id {id}) came up without virtualization");
            ONLINE.store(index, Ordering::Release);
            INDEX_OF_APIC[id as usize].store(0, Ordering::Relaxed);
        }
    }
    Ok(online())
}

/// INIT, then up to two start-up IPIs, until CPU `index` reports in.
fn wake(id: u32, index: usize) -> bool {
    let wait = |ns: u64| {
        let until = time::now_ns() + ns;
        while time::now_ns() < until {
            if STATE[index].load(Ordering::Acquire) != DOWN {
                return true;
            }
            core::hint::spin_loop();
        }
        STATE[index].load(Ordering::Acquire) != DOWN
    };
    if apic::send_start_ipi(id, None).is_err() {
        return false;
    }
    wait(10_000_000);
    for _ in 0..2 {
        if apic::send_start_ipi(id, Some((TRAMPOLINE >> 12) as u8)).is_err() {
            return false;
        }
        if wait(200_000_000) {
            return true;
        }
    }
    false
}

/// Give CPU `index` (not 0) `job`; it takes it within a timer period.
pub fn post(index: usize, job: Job) {
    *MAILBOX[index].lock() = Some(job);
}

/// No more jobs will come: idle application processors halt for good.
pub fn retire_idle() {
    RETIRED.store(true, Ordering::Release);
}

/// Wait a moment (until this CPU's timer, at most `apic::MAX_WAIT_NS`),
/// sleeping.
pub fn nap() {
    apic::arm(None);
    // SAFETY: STI takes effect after HLT, so the timer interrupt that ends
    // the wait cannot be taken before it; its handler (the IDT's
    // `isr_timer`) only counts and acknowledges; CLI restores the kernel's
    // interrupts-off state.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// An application processor in long mode, on its own stack.
#[no_mangle]
extern "C" fn ap_main() -> ! {
    let index = usize::from(INDEX_OF_APIC[(apic::id() & 0xff) as usize].load(Ordering::Relaxed));
    STATE[index].store(ARRIVED, Ordering::Release);
    interrupts::init();
    apic::start_ap_timer();
    let choice = BACKEND_CHOICE.get().copied().unwrap_or(CpuBackend::Auto);
    let backend = match backend::enable(choice, &host::BareMetalHost) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("host CPU {index}: {e}");
            STATE[index].store(FAILED, Ordering::Release);
            halt_forever();
        }
    };
    STATE[index].store(READY, Ordering::Release);
    loop {
        // Retirement is read first: a job posted before it is then seen.
        let retired = RETIRED.load(Ordering::Acquire);
        let job = MAILBOX[index].lock().take();
        if let Some(job) = job {
            job(&backend);
            continue;
        }
        if retired {
            halt_forever();
        }
        nap();
    }
}

fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts off HLT stops this CPU (until an NMI or
        // INIT); no memory is touched.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// How many CPUs are in a VM's turn now.
static IN_TURN: AtomicUsize = AtomicUsize::new(0);
/// VM turns taken on all CPUs.
static TURNS: AtomicU64 = AtomicU64::new(0);
/// VM turns taken on each CPU (a turn of a whole VM, or of one vCPU of a
/// PC spread over host CPUs).
static TURNS_BY_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// VM turns that began while another CPU was in one.
static SHARED_TURNS: AtomicU64 = AtomicU64::new(0);

/// Held while a CPU runs a VM's turn: counts the turns that ran alongside
/// another CPU's (the proof that VMs ran at the same time, whatever
/// share of the build machine QEMU's threads got).
pub struct TurnGuard(());

impl TurnGuard {
    /// A turn begins on this CPU.
    pub fn enter() -> Self {
        let others = IN_TURN.fetch_add(1, Ordering::AcqRel);
        TURNS.fetch_add(1, Ordering::Relaxed);
        TURNS_BY_CPU[current()].fetch_add(1, Ordering::Relaxed);
        if others > 0 {
            SHARED_TURNS.fetch_add(1, Ordering::Relaxed);
        }
        TurnGuard(())
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        IN_TURN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// (turns that began while another CPU was in one, all turns).
pub fn turn_counts() -> (u64, u64) {
    (
        SHARED_TURNS.load(Ordering::Relaxed),
        TURNS.load(Ordering::Relaxed),
    )
}

/// VM turns taken on each CPU that runs, by CPU number.
pub fn turns_by_cpu() -> Vec<u64> {
    (0..online())
        .map(|i| TURNS_BY_CPU[i].load(Ordering::Relaxed))
        .collect()
}

/// The CPUs that run, as `N (APIC ids a, b, ...)`, for the log.
pub fn describe() -> alloc::string::String {
    let ids: Vec<alloc::string::String> = (0..online())
        .map(|i| alloc::format!("{}", apic_id(i)))
        .collect();
    alloc::format!("{} (APIC ids {})", online(), ids.join(", "))
}
