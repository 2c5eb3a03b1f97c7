; Differential: an NMI wakes HLT, with IF clear and with IF set. The PIT
; (channel 0, about 1 kHz) reaches the CPU through IOAPIC pin 2 routed in
; NMI mode; the NMI handler records where it interrupted and masks the
; pin once an NMI came after the HLT. One line per case:
;   nmi woke hlt (if clear): returns to <label>
;   nmi woke hlt (if set): returns to <label>
; then `nmi hlt: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

nmi_at equ vars + 128

; An NMI that came before the HLT ran (the host ran another VM between
; the unmasking and the HLT) leaves the pin open for the next one.
nmi_handler:
    push rax
    push rbx
    mov rax, [rsp + 16]
    mov [nmi_at], rax
    cmp rax, LIN(after_hlt_if_clear)
    je .mask
    cmp rax, LIN(after_hlt_if_set)
    jne .out
.mask:
    mov ebx, IOAPIC
    mov dword [rbx], 0x14
    mov dword [rbx + 0x10], 0x10000
.out:
    pop rbx
    pop rax
    iretq

; IOAPIC pin 2 (the PIT) in NMI mode, unmasked.
pin_nmi:
    mov qword [nmi_at], 0
    mov ebx, IOAPIC
    mov dword [rbx], 0x15
    mov dword [rbx + 0x10], 0
    mov dword [rbx], 0x14
    mov dword [rbx + 0x10], 4 << 8
    ret

; Print RSI and the label at [nmi_at].
report:
    call print
    mov rax, [nmi_at]
    mov esi, LIN(msg_unknown)
    cmp rax, LIN(after_hlt_if_clear)
    jne .b
    mov esi, LIN(msg_after_hlt_if_clear)
.b:
    cmp rax, LIN(after_hlt_if_set)
    jne .say
    mov esi, LIN(msg_after_hlt_if_set)
.say:
    jmp say

test_main:
    call pm_on
    call pic_off
    call lapic_on
    mov ebx, 2
    mov rax, LIN(nmi_handler)
    call set_gate
    ; PIT channel 0, mode 2, 1193 counts: about 1 kHz.
    mov al, 0x34
    out 0x43, al
    mov ax, 1193
    out 0x40, al
    mov al, ah
    out 0x40, al

    cli
    call pin_nmi
    hlt
after_hlt_if_clear:
    mov esi, LIN(msg_if_clear)
    call report

    call pin_nmi
    sti
    hlt
after_hlt_if_set:
    cli
    mov esi, LIN(msg_if_set)
    call report
    mov esi, LIN(msg_done)
    jmp say

msg_if_clear: db "nmi woke hlt (if clear): returns to ", 0
msg_if_set:   db "nmi woke hlt (if set): returns to ", 0
msg_after_hlt_if_clear: db "after_hlt_if_clear", 0
msg_after_hlt_if_set:   db "after_hlt_if_set", 0
msg_unknown:  db "?", 0
msg_done:     db "nmi hlt: done", 0

    IMAGE_END
