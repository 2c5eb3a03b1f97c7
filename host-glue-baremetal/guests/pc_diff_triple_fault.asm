; Differential: a triple fault resets a PC. With an empty IDT, #UD cannot
; be delivered (#GP), nor can that (#DF), nor that: shutdown, which on a
; PC resets the machine. A CMOS byte (index 38h, kept over a reset) tells
; the second start from the first:
;   triple fault next
;   reset after triple fault
;   triple fault: done
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

MARK equ 0xa5

; AL = CMOS byte 38h.
cmos_read:
    mov al, 0x38
    out 0x70, al
    in al, 0x71
    ret

; CMOS byte 38h = AH.
cmos_write:
    mov al, 0x38
    out 0x70, al
    mov al, ah
    out 0x71, al
    ret

test_main:
    call pm_on
    call cmos_read
    cmp al, MARK
    je .second
    mov ah, MARK
    call cmos_write
    mov esi, LIN(msg_next)
    call say
    lidt [LIN(empty_idt)]
    ud2
.second:
    xor ah, ah
    call cmos_write
    mov esi, LIN(msg_reset)
    call say
    mov esi, LIN(msg_done)
    jmp say

empty_idt:
    dw 0
    dq 0

msg_next:  db "triple fault next", 0
msg_reset: db "reset after triple fault", 0
msg_done:  db "triple fault: done", 0

    IMAGE_END
