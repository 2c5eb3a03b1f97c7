; Differential: an INIT IPI to all CPUs including itself puts the bootstrap
; processor back at the reset vector: RAM and the platform (a CMOS byte,
; index 39h, tells the second start) are kept, the local APIC is in its
; INIT state (TPR 0, software disabled) with its ID kept, and
; IA32_APIC_BASE is kept. A level de-assert INIT before it does nothing.
;   INIT next
;   start after INIT
;   tpr 00000000, svr 000000ff, id 00000000
;   rdmsr 0000001b: 00000000fee00900
;   init: done
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

MARK equ 0x5a

; AL = CMOS byte 39h.
cmos_read:
    mov al, 0x39
    out 0x70, al
    in al, 0x71
    ret

; CMOS byte 39h = AH.
cmos_write:
    mov al, 0x39
    out 0x70, al
    mov al, ah
    out 0x71, al
    ret

; Print RSI, then the 32-bit word at RBX.
show_mmio:
    call print
    mov eax, [rbx]
    jmp print_hex32

test_main:
    call pm_on
    call cmos_read
    cmp al, MARK
    je .second
    mov ah, MARK
    call cmos_write
    call lapic_on
    mov ebx, LAPIC
    mov dword [rbx + 0x80], 0x20        ; TPR
    ; INIT level de-assert (level 0, level-triggered), all including self:
    ; resynchronises arbitration IDs only.
    mov dword [rbx + 0x310], 0
    mov dword [rbx + 0x300], 0x0008_8500
    mov esi, LIN(msg_next)
    call say
    ; INIT, level assert, all including self.
    mov dword [rbx + 0x300], 0x0008_4500
.wait:
    hlt
    jmp .wait
.second:
    xor ah, ah
    call cmos_write
    mov esi, LIN(msg_second)
    call say
    mov ebx, LAPIC + 0x80
    mov esi, LIN(msg_tpr)
    call show_mmio
    mov ebx, LAPIC + 0xf0
    mov esi, LIN(msg_svr)
    call show_mmio
    mov ebx, LAPIC + 0x20
    mov esi, LIN(msg_id)
    call show_mmio
    mov esi, LIN(crlf)
    call print
    mov ecx, 0x1b
    call show_rdmsr
    mov esi, LIN(msg_done)
    jmp say

msg_next:   db "INIT next", 0
msg_second: db "start after INIT", 0
msg_tpr:    db "tpr ", 0
msg_svr:    db ", svr ", 0
msg_id:     db ", id ", 0
msg_done:   db "init: done", 0

    IMAGE_END
