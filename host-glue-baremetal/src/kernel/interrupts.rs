//! The host's IDT: every CPU exception prints the registers and a
//! frame-pointer backtrace on the console and ends the run as a failure;
//! the host timer (vector 0x20) and another host CPU's kick (0xf0) are
//! counted and acknowledged. Guests'
//! interrupts are virtual and never come through here.

use super::qemu::{self, ExitCode};
use core::arch::global_asm;
use spin::Once;

// One stub per exception vector: push a zero where the CPU pushes no error
// code, push the vector, save the registers, call `exception_entry`.
global_asm!(
    r#"
    .section .text
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
isr_\n:
    push 0
    push \n
    jmp isr_common
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
isr_\n:
    push \n
    jmp isr_common
    .endr

    // The host timer (vector 0x20): save the caller-saved registers, count
    // and acknowledge, return. Spurious APIC interrupts (0xff) need no EOI.
    .global isr_timer
isr_timer:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call host_timer_interrupt
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
    // A kick from another host CPU (apic::KICK_VECTOR): the same, with
    // its own counter.
    .global isr_kick
isr_kick:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    call host_kick_interrupt
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq
    .global isr_spurious
isr_spurious:
    iretq

isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    call exception_entry
    ud2

    .section .rodata
    .balign 8
    .global isr_table
isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
"#
);

/// The registers as `isr_common` leaves them on the stack.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

extern "C" {
    static isr_table: [u64; 32];
    fn isr_timer();
    fn isr_kick();
    fn isr_spurious();
}

#[derive(Clone, Copy, Default)]
#[repr(C, packed)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

static IDT: Once<[IdtEntry; 256]> = Once::new();

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved 31",
];

/// Load the IDT.
pub fn init() {
    let idt = IDT.call_once(|| {
        let gate = |handler: u64| IdtEntry {
            offset_low: handler as u16,
            selector: 0x08,
            ist: 0,
            attributes: 0x8e, // present, ring 0, interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
        let mut idt = [IdtEntry::default(); 256];
        for (i, entry) in idt.iter_mut().take(32).enumerate() {
            // SAFETY: `isr_table` is a read-only table of 32 addresses
            // emitted by the assembly above; reading it is always valid.
            *entry = gate(unsafe { isr_table[i] });
        }
        idt[usize::from(super::apic::TIMER_VECTOR)] = gate(isr_timer as *const () as u64);
        idt[usize::from(super::apic::KICK_VECTOR)] = gate(isr_kick as *const () as u64);
        idt[usize::from(super::apic::SPURIOUS_VECTOR)] = gate(isr_spurious as *const () as u64);
        // The 8259s as a passed-through device's interrupts reach the host
        // (see `passthrough`): the master's lines (masked; a spurious IRQ 7
        // needs no EOI) and the slave's, where the card's line is.
        let pic = usize::from(super::passthrough::PIC_BASE);
        for entry in &mut idt[pic..pic + 8] {
            *entry = gate(isr_spurious as *const () as u64);
        }
        for entry in &mut idt[pic + 8..pic + 16] {
            *entry = gate(super::passthrough::irq_entry());
        }
        idt
    });
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: the IDT is a `'static` table of valid gates whose handlers are
    // the stubs above; `lidt` only reads the 10-byte pointer.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack)) };
}

/// Print the return addresses of up to 16 frames, following saved frame
/// pointers while they stay inside the identity-mapped low 4 GiB.
pub fn print_backtrace(mut rbp: u64) {
    crate::kprintln!("backtrace (resolve with `addr2line -e <kernel> ADDR`):");
    for depth in 0..16 {
        if rbp == 0 || !rbp.is_multiple_of(8) || rbp >= 0xffff_fff0 {
            break;
        }
        // SAFETY: `rbp` is 8-aligned and below 4 GiB, which the boot page
        // tables map (identity, present, readable); reading two words there
        // cannot fault and has no side effect.
        let (next, ret) = unsafe {
            let p = rbp as *const u64;
            (p.read_volatile(), p.add(1).read_volatile())
        };
        if ret == 0 {
            break;
        }
        crate::kprintln!("  #{depth:<2} {ret:#018x}");
        rbp = next;
    }
}

#[no_mangle]
extern "C" fn exception_entry(frame: &TrapFrame) -> ! {
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("?");
    // SAFETY: reading CR2 has no side effects.
    let cr2 = unsafe { x86::controlregs::cr2() };
    crate::kprintln!(
        "\nhost exception {} (vector {}, error {:#x}) at rip {:#x}\n\
         rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n\
         r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n\
         r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n\
         cs {:#x} ss {:#x} rflags {:#x} cr2 {:#x}",
        name,
        frame.vector,
        frame.error,
        frame.rip,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.rsp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        frame.cs,
        frame.ss,
        frame.rflags,
        cr2
    );
    crate::kprintln!("  #0  {:#018x} (faulting instruction)", frame.rip);
    print_backtrace(frame.rbp);
    qemu::exit(ExitCode::Failure)
}
