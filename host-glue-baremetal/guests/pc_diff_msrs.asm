; Differential: MSRs a generic Linux kernel touches at boot, as the CPU
; model (qemu64) has them: MCG_CAP and MCG_STATUS (machine check), the
; AMD K7 performance counters and their selects (0xc0010000-7: write 0,
; read back), the microcode revision (0x8b), MISC_ENABLE (read, write the
; same value). One line per access (`rdmsr <msr>: <value>` or `#GP`),
; then `msrs: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

test_main:
    call pm_on
    mov ecx, 0x179              ; MCG_CAP
    call show_rdmsr
    mov ecx, 0x17a              ; MCG_STATUS
    call show_rdmsr
    mov ecx, 0xc001_0000
.k7:
    xor eax, eax
    call show_wrmsr
    call show_rdmsr
    inc ecx
    cmp ecx, 0xc001_0008
    jb .k7
    ; Microcode revision: whether it reads, not the value.
    mov ecx, 0x8b
    mov rax, LIN(.after_8b)
    call arm
    rdmsr
.after_8b:
    mov qword [resume], 0
    mov esi, LIN(msg_8b)
    call print
    mov esi, LIN(msg_ok)
    cmp qword [last_vec], 13
    jne .said
    mov esi, LIN(msg_gp)
.said:
    call say
    mov ecx, 0x1a0              ; MISC_ENABLE
    call show_rdmsr
    call show_wrmsr
    mov esi, LIN(msg_done)
    jmp say

msg_8b:   db "rdmsr 0000008b (microcode revision): ", 0
msg_done: db "msrs: done", 0

    IMAGE_END
