; Differential: NMI inside NMI. The first NMI (a self-NMI through the
; LAPIC ICR) sends two more self-NMIs from its handler; NMIs are blocked
; until the handler's IRET, so they are held (as one: the NMI latch holds
; one) and the next arrives right after that IRET, before the interrupted
; code goes on. Every step appends a letter to a log, printed at the end:
;   nmi order: E1 S1 X1 E2 X2 M
;   second nmi came before the first one's return address ran: yes
; (E: handler entered, S: its self-NMIs sent, X: IRET, M: main code after
; the first NMI's ICR write went on), then `nmi: done` and a power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

nlog   equ vars + 128       ; bytes in the log
depth  equ vars + 136       ; NMIs taken
rips   equ vars + 144       ; 4 qwords: where NMI 1, 2, 3 interrupted
logbuf equ 0x22000

; AL, then AH (when not 0), then a space go to the log.
logc:
    push rbx
    mov rbx, [nlog]
    mov [logbuf + rbx], al
    inc rbx
    test ah, ah
    jz .sp
    mov [logbuf + rbx], ah
    inc rbx
.sp:
    mov byte [logbuf + rbx], ' '
    inc rbx
    mov [nlog], rbx
    pop rbx
    ret

; A self-NMI: physical destination APIC 0 (this CPU), delivery mode NMI.
self_nmi:
    push rbx
    mov ebx, LAPIC
    mov dword [rbx + 0x310], 0
    mov dword [rbx + 0x300], 0x4400
    pop rbx
    ret

; About 20,000 rounds of nothing, time for an NMI wrongly let through.
linger:
    push rcx
    mov ecx, 20000
.l:
    pause
    loop .l
    pop rcx
    ret

nmi_handler:
    push rax
    inc qword [depth]
    ; Where each NMI interrupted (frame RIP), by depth.
    push rbx
    mov rbx, [depth]
    and ebx, 3
    mov rax, [rsp + 16]
    mov [rips + rbx * 8], rax
    pop rbx
    mov rax, [depth]
    add al, '0'
    mov ah, al
    mov al, 'E'
    call logc
    cmp qword [depth], 1
    jne .out
    call self_nmi
    call self_nmi
    mov al, 'S'
    mov ah, '1'
    call logc
    call linger
.out:
    mov rax, [depth]
    add al, '0'
    mov ah, al
    mov al, 'X'
    call logc
    pop rax
    iretq

test_main:
    call pm_on
    call pic_off
    call lapic_on
    mov qword [nlog], 0
    mov qword [depth], 0
    mov qword [rips + 8], 0
    mov qword [rips + 16], 1
    mov ebx, 2
    mov rax, LIN(nmi_handler)
    call set_gate
    call self_nmi
    call linger
    mov al, 'M'
    xor ah, ah
    call logc
    call linger
    ; The log, as one line.
    mov esi, LIN(msg_order)
    call print
    mov rbx, [nlog]
    mov byte [logbuf + rbx - 1], 0
    mov esi, logbuf
    call say
    ; The held NMI comes right after the first one's IRET, before the
    ; interrupted code runs one more instruction: both interrupted the
    ; same instruction.
    mov esi, LIN(msg_same)
    call print
    mov rax, [rips + 8]
    cmp rax, [rips + 16]
    mov esi, LIN(msg_yes)
    je .same
    mov esi, LIN(msg_no)
.same:
    call say
    mov esi, LIN(msg_done)
    jmp say

msg_order: db "nmi order: ", 0
msg_done:  db "nmi: done", 0
msg_same:  db "second nmi came before the first one's return address ran: ", 0
msg_yes:   db "yes", 0
msg_no:    db "no", 0

    IMAGE_END
