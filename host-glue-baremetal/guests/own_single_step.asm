; A guest that single-steps itself (xtask/tests/kvm_gdb.rs): in flat
; 32-bit protected mode it sets RFLAGS.TF over five instructions, counts
; the #DB traps in its own handler, prints `own #DB traps: N` (5 on any
; x86: NOP, NOP, PUSHFD, AND, and the POPFD that clears TF) on COM1 and
; powers off. Under a debugger with breakpoints in the debug registers
; the count must stay 5: the guest's #DBs are its own.
%include "pm32_entry.inc"

COUNT equ 0x500             ; the dword the handler increments

section .text start=0
PM32_ENTRY
    mov dword [COUNT], 0
    lidt [LIN(idt_ptr)]
    pushfd
    or dword [esp], 0x100   ; TF
    popfd
    nop
    nop
    pushfd
    and dword [esp], ~0x100
    popfd
    mov esi, LIN(message)
    mov dx, 0x3f8
.next:
    mov al, [esi]
    test al, al
    jz .count
    out dx, al
    inc esi
    jmp .next
.count:
    mov al, [COUNT]
    add al, '0'
    out dx, al
    mov al, 10
    out dx, al
    mov ax, 0x2000          ; PM1a_CNT: SLP_EN, S5
    mov dx, 0x604           ; vmm's PM block (PIIX4 at 0x600)
    out dx, ax
    mov dx, 0xb004          ; the bare-metal host's
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

debug_trap:
    inc dword [COUNT]
    iretd

message:
    db "own #DB traps: ", 0
    align 8
idt:
    dq 0
    ; Vector 1: a 32-bit interrupt gate to debug_trap (this image's last
    ; 64 KiB are at 0xF0000).
    dw debug_trap - $$, 0x08, 0x8e00, 0x000f
idt_ptr:
    dw 15
    dd LIN(idt)
PM32_GDT
RESET_VECTOR
