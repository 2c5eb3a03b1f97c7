//! The VMX instructions, control-register and MSR access: the `unsafe`
//! part of the VMX backend. Callable only at ring 0 on a CPU with VMX (the
//! bare-metal host checks CPUID first).

use core::arch::{asm, global_asm};

/// A VMX instruction failed: VMfailInvalid (no current VMCS) or VMfailValid
/// (the VM-instruction error field says why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// CF set: no current VMCS (or VMXON itself failed).
    Invalid,
    /// ZF set: read the VM-instruction error field.
    Valid,
}

fn status(ok: u8, cf: u8) -> Result<(), VmFail> {
    if ok != 0 {
        Ok(())
    } else if cf != 0 {
        Err(VmFail::Invalid)
    } else {
        Err(VmFail::Valid)
    }
}

/// The guest registers the VMCS does not hold (RSP, RIP and RFLAGS are
/// there), and CR2, which VMX does not switch. Field order is fixed: the
/// assembly below uses the offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxGprs {
    /// RAX (offset 0).
    pub rax: u64,
    /// RCX (8).
    pub rcx: u64,
    /// RDX (16).
    pub rdx: u64,
    /// RBX (24).
    pub rbx: u64,
    /// Unused slot where RSP would be (32), so `by_index` is a plain index.
    pub unused_rsp: u64,
    /// RBP (40).
    pub rbp: u64,
    /// RSI (48).
    pub rsi: u64,
    /// RDI (56).
    pub rdi: u64,
    /// R8..R15 (64..120).
    pub r: [u64; 8],
    /// CR2 (128).
    pub cr2: u64,
}

// vmm_vmx_enter(gprs: *mut VmxGprs [rdi], resume: u64 [rsi]) -> u64
//
// Saves the host's callee-saved registers and the gprs pointer on the stack,
// writes HOST_RSP, loads the guest's registers and CR2, and executes
// VMLAUNCH (resume = 0) or VMRESUME. If the instruction fails it returns 1
// (VMfailInvalid) or 2 (VMfailValid) with the host's registers restored.
// A VM exit lands at `vmm_vmx_exit` (HOST_RIP) with RSP = HOST_RSP, stores
// the guest's registers and CR2 and returns 0. RFLAGS after an exit is 0x2:
// interrupts stay disabled until the caller opens them.
global_asm!(
    r#"
    .section .text.vmm_vmx_enter, "ax"
    .global vmm_vmx_enter
    .global vmm_vmx_exit
vmm_vmx_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6c14
    vmwrite rax, rsp
    mov rax, [rdi + 128]
    mov cr2, rax
    test rsi, rsi
    mov rax, [rdi + 0]
    mov rcx, [rdi + 8]
    mov rdx, [rdi + 16]
    mov rbx, [rdi + 24]
    mov rbp, [rdi + 40]
    mov rsi, [rdi + 48]
    mov r8,  [rdi + 64]
    mov r9,  [rdi + 72]
    mov r10, [rdi + 80]
    mov r11, [rdi + 88]
    mov r12, [rdi + 96]
    mov r13, [rdi + 104]
    mov r14, [rdi + 112]
    mov r15, [rdi + 120]
    mov rdi, [rdi + 56]
    jnz 2f
    vmlaunch
    jmp 3f
2:
    vmresume
3:
    mov eax, 1
    jc 4f
    mov eax, 2
4:
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

vmm_vmx_exit:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 0], rax
    mov [rdi + 8], rcx
    mov [rdi + 16], rdx
    mov [rdi + 24], rbx
    mov [rdi + 40], rbp
    mov [rdi + 48], rsi
    mov [rdi + 64], r8
    mov [rdi + 72], r9
    mov [rdi + 80], r10
    mov [rdi + 88], r11
    mov [rdi + 96], r12
    mov [rdi + 104], r13
    mov [rdi + 112], r14
    mov [rdi + 120], r15
    pop rax
    mov [rdi + 56], rax
    mov rax, cr2
    mov [rdi + 128], rax
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    xor eax, eax
    ret
"#
);

extern "C" {
    fn vmm_vmx_enter(gprs: *mut VmxGprs, resume: u64) -> u64;
    fn vmm_vmx_exit();
}

/// The address VM exits continue at (HOST_RIP).
pub fn exit_entry_point() -> u64 {
    vmm_vmx_exit as *const () as u64
}

/// Enter the guest of the current VMCS (VMLAUNCH, or VMRESUME if
/// `resume`) and run it until it exits.
///
/// # Safety
///
/// VMX must be on, the VMCS current, its host state that of this CPU with
/// HOST_RIP = [`exit_entry_point`], its EPT, I/O and MSR bitmaps mapping
/// only memory of this VM.
pub unsafe fn enter(gprs: &mut VmxGprs, resume: bool) -> Result<(), VmFail> {
    // SAFETY: the caller guarantees the VMCS; the assembly restores every
    // callee-saved register and the stack on both the failure and the exit
    // path.
    match unsafe { vmm_vmx_enter(gprs, u64::from(resume)) } {
        0 => Ok(()),
        1 => Err(VmFail::Invalid),
        _ => Err(VmFail::Valid),
    }
}

/// VMXON with the region at `pa`.
///
/// # Safety
///
/// CR4.VMXE set, CR0/CR4 within the fixed bits, IA32_FEATURE_CONTROL
/// allowing VMXON, `pa` a 4 KiB-aligned region holding the revision ID that
/// stays allocated while VMX is on.
pub unsafe fn vmxon(pa: u64) -> Result<(), VmFail> {
    let (ok, cf): (u8, u8);
    // SAFETY: guaranteed by the caller; VMXON reads the 8-byte operand.
    unsafe {
        asm!("vmxon [{0}]", "seta {1}", "setc {2}", in(reg) &pa, out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf)
}

/// VMCLEAR the VMCS at `pa`.
///
/// # Safety
///
/// VMX on; `pa` a VMCS region owned by the caller.
pub unsafe fn vmclear(pa: u64) -> Result<(), VmFail> {
    let (ok, cf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmclear [{0}]", "seta {1}", "setc {2}", in(reg) &pa, out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf)
}

/// VMPTRLD the VMCS at `pa`.
///
/// # Safety
///
/// VMX on; `pa` a VMCS region owned by the caller with the right revision.
pub unsafe fn vmptrld(pa: u64) -> Result<(), VmFail> {
    let (ok, cf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmptrld [{0}]", "seta {1}", "setc {2}", in(reg) &pa, out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf)
}

/// VMREAD `field` of the current VMCS.
///
/// # Safety
///
/// VMX on (in root operation).
pub unsafe fn vmread(field: u32) -> Result<u64, VmFail> {
    let (value, ok, cf): (u64, u8, u8);
    // SAFETY: guaranteed by the caller; VMREAD only reads the current VMCS.
    unsafe {
        asm!("vmread {0}, {1}", "seta {2}", "setc {3}", out(reg) value, in(reg) u64::from(field), out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf).map(|()| value)
}

/// VMWRITE `value` to `field` of the current VMCS.
///
/// # Safety
///
/// VMX on; the value must not give the guest access to memory or devices
/// outside its VM (callers write only fields this backend computes).
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmFail> {
    let (ok, cf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmwrite {0}, {1}", "seta {2}", "setc {3}", in(reg) u64::from(field), in(reg) value, out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf)
}

/// INVEPT of `kind` (1 single-context, 2 all-context) for `eptp`.
///
/// # Safety
///
/// VMX on and INVEPT of that kind supported.
pub unsafe fn invept(kind: u64, eptp: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (ok, cf): (u8, u8);
    // SAFETY: guaranteed by the caller; the descriptor is 16 readable bytes.
    unsafe {
        asm!("invept {0}, [{1}]", "seta {2}", "setc {3}", in(reg) kind, in(reg) &descriptor, out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf)
}

/// INVVPID of `kind` (1 single-context, 2 all-context) for `vpid`.
///
/// # Safety
///
/// VMX on and INVVPID of that kind supported.
pub unsafe fn invvpid(kind: u64, vpid: u16) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [u64::from(vpid), 0];
    let (ok, cf): (u8, u8);
    // SAFETY: guaranteed by the caller; the descriptor is 16 readable bytes.
    unsafe {
        asm!("invvpid {0}, [{1}]", "seta {2}", "setc {3}", in(reg) kind, in(reg) &descriptor, out(reg_byte) ok, out(reg_byte) cf, options(nostack))
    };
    status(ok, cf)
}

/// Read an MSR.
///
/// # Safety
///
/// Ring 0 only; `msr` must exist on this CPU.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees ring 0 and an existing MSR.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Write an MSR.
///
/// # Safety
///
/// Ring 0 only; the value must not break the host (callers here only lock
/// IA32_FEATURE_CONTROL with VMXON allowed).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees ring 0 and a harmless value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

/// The host's control registers and descriptor-table state, as the VMCS
/// host-state area needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CS, SS, DS, ES, FS, GS, TR selectors.
    pub selectors: [u16; 7],
    /// GDTR base.
    pub gdtr_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// TR base (from the TSS descriptor in the GDT).
    pub tr_base: u64,
}

/// Read the host state of this CPU.
pub fn host_state() -> HostState {
    let (cr0, cr3, cr4): (u64, u64, u64);
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: reading control registers, selectors and descriptor-table
    // registers has no side effect; SGDT/SIDT store 10 bytes into locals.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack));
        asm!("mov {0:x}, ss", out(reg) ss, options(nomem, nostack));
        asm!("mov {0:x}, ds", out(reg) ds, options(nomem, nostack));
        asm!("mov {0:x}, es", out(reg) es, options(nomem, nostack));
        asm!("mov {0:x}, fs", out(reg) fs, options(nomem, nostack));
        asm!("mov {0:x}, gs", out(reg) gs, options(nomem, nostack));
        asm!("str {0:x}", out(reg) tr, options(nomem, nostack));
        asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack));
        asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack));
    }
    let base = |d: &[u8; 10]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[2..10]);
        u64::from_le_bytes(b)
    };
    let gdtr_base = base(&gdtr);
    let gdtr_limit = u16::from_le_bytes([gdtr[0], gdtr[1]]);
    // The TSS descriptor (16 bytes in long mode) at TR's index.
    let index = u64::from(tr & !7);
    let tr_base = if tr != 0 && index + 15 <= u64::from(gdtr_limit) {
        let mut d = [0u8; 16];
        // SAFETY: the descriptor lies within the GDT's limit, and the GDT
        // is mapped (the CPU uses it).
        unsafe {
            core::ptr::copy_nonoverlapping((gdtr_base + index) as *const u8, d.as_mut_ptr(), 16)
        };
        u64::from(d[2])
            | (u64::from(d[3]) << 8)
            | (u64::from(d[4]) << 16)
            | (u64::from(d[7]) << 24)
            | (u64::from(u32::from_le_bytes([d[8], d[9], d[10], d[11]])) << 32)
    } else {
        0
    };
    HostState {
        cr0,
        cr3,
        cr4,
        selectors: [cs, ss, ds, es, fs, gs, tr],
        gdtr_base,
        idtr_base: base(&idtr),
        tr_base,
    }
}

/// Set bits in CR0 and CR4 (VMX's fixed-1 bits before VMXON).
///
/// # Safety
///
/// Ring 0; the bits must be ones the host can run with (NE, VMXE).
pub unsafe fn set_cr0_cr4_bits(cr0_bits: u64, cr4_bits: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            "mov {t}, cr0", "or {t}, {a}", "mov cr0, {t}",
            "mov {t}, cr4", "or {t}, {b}", "mov cr4, {t}",
            t = out(reg) _, a = in(reg) cr0_bits, b = in(reg) cr4_bits,
            options(nostack)
        )
    };
}

/// Let a pending physical interrupt be taken by the host's IDT (after a VM
/// exit interrupts are disabled; `sti` opens them after one instruction).
pub fn take_pending_interrupts() {
    // SAFETY: the host's IDT handles every vector it has unmasked (as for
    // SVM's VMRUN); interrupts are disabled again before returning.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
}
