; Differential: IA32_APIC_BASE (0x1b). Read it; disable the xAPIC (EN
; clear), enable it again and read its version register; move it to
; 0xfed0_0000; move it back and read the version again. One line per
; step, then `apic base: done`. (Not compared: what the MMIO page reads
; while the APIC is disabled or moved. QEMU's TCG keeps the APIC at
; 0xfee0_0000 whatever the MSR says, and has its HPET at 0xfed0_0000.)
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

; Print RSI, then the 32-bit word at RBX.
show_mmio:
    call print
    mov eax, [rbx]
    call print_hex32
    mov esi, LIN(crlf)
    jmp print

test_main:
    call pm_on
    mov ecx, 0x1b
    call show_rdmsr
    mov r12, rax
    ; Disabled.
    mov rax, r12
    and eax, ~(1 << 11)
    call show_wrmsr
    call show_rdmsr
    ; Enabled again.
    mov rax, r12
    call show_wrmsr
    call show_rdmsr
    mov ebx, LAPIC + 0x30
    mov esi, LIN(msg_enabled)
    call show_mmio
    ; Moved.
    mov rax, r12
    and eax, 0xfff
    or eax, 0xfed0_0000
    call show_wrmsr
    call show_rdmsr
    ; Back.
    mov rax, r12
    call show_wrmsr
    call show_rdmsr
    mov ebx, LAPIC + 0x30
    mov esi, LIN(msg_back)
    call show_mmio
    mov esi, LIN(msg_done)
    jmp say

msg_enabled:  db "version register at fee00030, apic enabled: ", 0
msg_back:     db "version register at fee00030, apic moved back: ", 0
msg_done:     db "apic base: done", 0

    IMAGE_END
