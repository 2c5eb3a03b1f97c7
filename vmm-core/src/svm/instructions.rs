//! The SVM instructions and MSRs: the only code in vmm-core that needs
//! `unsafe`, because it hands physical addresses to the CPU. Callable only
//! at ring 0 on a CPU with SVM (the bare-metal host checks first).

use core::arch::global_asm;

/// The guest registers VMRUN does not save in the VMCB (RAX and RSP are
/// there). Field order is fixed: the assembly below uses the offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestGprs {
    /// RBX (offset 0).
    pub rbx: u64,
    /// RCX (8).
    pub rcx: u64,
    /// RDX (16).
    pub rdx: u64,
    /// RSI (24).
    pub rsi: u64,
    /// RDI (32).
    pub rdi: u64,
    /// RBP (40).
    pub rbp: u64,
    /// R8..R15 (48..104).
    pub r: [u64; 8],
}

// vmm_svm_vmrun(vmcb_pa: u64 [rdi], gprs: *mut GuestGprs [rsi])
//
// Saves the host's callee-saved registers, loads the guest's, runs the guest
// with VMLOAD/VMRUN/VMSAVE under CLGI, stores the guest's registers back and
// returns. RAX and RSP of the guest live in the VMCB; the host's RSP comes
// back from the host save area.
//
// Physical interrupts: the host's IF is set at VMRUN (with GIF clear, so
// nothing is taken before the guest runs). With V_INTR_MASKING that IF lets
// a physical interrupt end the guest's run (INTR intercept); after the exit,
// STGI lets the host take it through its IDT, then IF is cleared again.
global_asm!(
    r#"
    .section .text.vmm_svm_vmrun, "ax"
    .global vmm_svm_vmrun
vmm_svm_vmrun:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rsi
    push rdi
    mov rax, rdi
    mov rbx, [rsi + 0]
    mov rcx, [rsi + 8]
    mov rdx, [rsi + 16]
    mov rdi, [rsi + 32]
    mov rbp, [rsi + 40]
    mov r8,  [rsi + 48]
    mov r9,  [rsi + 56]
    mov r10, [rsi + 64]
    mov r11, [rsi + 72]
    mov r12, [rsi + 80]
    mov r13, [rsi + 88]
    mov r14, [rsi + 96]
    mov r15, [rsi + 104]
    mov rsi, [rsi + 24]
    clgi
    sti
    vmload rax
    vmrun rax
    vmsave rax
    push rsi
    mov rsi, [rsp + 16]
    mov [rsi + 0], rbx
    mov [rsi + 8], rcx
    mov [rsi + 16], rdx
    mov [rsi + 32], rdi
    mov [rsi + 40], rbp
    mov [rsi + 48], r8
    mov [rsi + 56], r9
    mov [rsi + 64], r10
    mov [rsi + 72], r11
    mov [rsi + 80], r12
    mov [rsi + 88], r13
    mov [rsi + 96], r14
    mov [rsi + 104], r15
    pop rax
    mov [rsi + 24], rax
    stgi
    cli
    add rsp, 16
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#
);

extern "C" {
    fn vmm_svm_vmrun(vmcb_pa: u64, gprs: *mut GuestGprs);
}

/// Run the guest described by the VMCB at `vmcb_pa` until it exits.
///
/// # Safety
///
/// SVM must be enabled on this CPU (EFER.SVME, VM_HSAVE_PA), `vmcb_pa` must
/// be the host-physical address of a 4 KiB-aligned VMCB owned by the caller
/// whose nested page tables, I/O and MSR permission maps map only memory of
/// this VM. Interrupts are enabled around the guest's run and taken by the
/// host after it, so the host's IDT must handle every interrupt the host has
/// unmasked; they are disabled again on return.
pub unsafe fn vmrun(vmcb_pa: u64, gprs: &mut GuestGprs) {
    // SAFETY: the caller guarantees the VMCB and SVM state; the assembly
    // restores every callee-saved register and the stack before returning.
    unsafe { vmm_svm_vmrun(vmcb_pa, gprs) }
}

/// Read an MSR.
///
/// # Safety
///
/// Ring 0 only; `msr` must exist on this CPU.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees ring 0 and an existing MSR; RDMSR
    // touches no memory.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Write an MSR.
///
/// # Safety
///
/// Ring 0 only; writing `value` to `msr` must not break the host (the
/// callers here only set EFER.SVME and VM_HSAVE_PA).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees ring 0 and a harmless value.
    unsafe {
        core::arch::asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack)
        )
    };
}
