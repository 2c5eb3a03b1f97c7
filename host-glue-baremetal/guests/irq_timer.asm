; Guest-suite program, hardware interrupts (real mode). The host gives VMs
; whose program is named irq_* an 8259 PIC pair and an 8254 PIT on IRQ 0.
; Programs the PIC (vectors 20h-2Fh, only IRQ 0 unmasked) and PIT channel 0
; at 1 kHz, then checks, printing one line on COM1:
;  - with IF clear the interrupt stays pending (IRR bit 0 set, handler not
;    run),
;  - STI blocks interrupts for one more instruction: the instruction after
;    STI still sees 0 ticks, the one after it sees the interrupt (printed
;    as 01: the VMM waits for the interrupt window and injects then; more
;    ticks may have piled up meanwhile),
;  - HLT with IF set sleeps until the next tick: ten HLTs, ten more ticks.
; Then masks the timer and powers off through ACPI.
bits 16
org 0

ticks equ 0x500

start:
    jmp 0xf000:main
main:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    mov word [0x20 * 4], timer_handler
    mov word [0x20 * 4 + 2], 0xf000
    mov word [ticks], 0

    ; PIC master: ICW1 (edge, cascade, ICW4), ICW2 vector 20h, ICW3 slave
    ; on IRQ 2, ICW4 8086 mode; then mask all but IRQ 0.
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x01
    out 0x21, al
    mov al, 0xfe
    out 0x21, al
    ; Slave: vectors 28h-2Fh, cascade identity 2, all masked.
    mov al, 0x11
    out 0xa0, al
    mov al, 0x28
    out 0xa1, al
    mov al, 0x02
    out 0xa1, al
    mov al, 0x01
    out 0xa1, al
    mov al, 0xff
    out 0xa1, al
    ; PIT channel 0, mode 2 (rate generator), 1193 counts = 1 kHz.
    mov al, 0x34
    out 0x43, al
    mov ax, 1193
    out 0x40, al
    mov al, ah
    out 0x40, al

    ; IF clear: wait until the PIC has IRQ 0 pending (OCW3: read IRR).
.poll:
    mov al, 0x0a
    out 0x20, al
    in al, 0x20
    test al, 1
    jz .poll
    mov cl, [ticks]         ; still 0: not delivered with IF clear
    mov [0x512], cl

    sti
    mov bl, [ticks]         ; in STI's shadow: 0
    mov bh, [ticks]         ; after it: at least 1 (more if ticks piled up)
    cmp bh, 1
    jb .shadow_done
    mov bh, 1
.shadow_done:
    mov [0x510], bx

    ; Ten HLTs, each woken by the next tick.
    mov cx, 10
.sleep:
    hlt
    loop .sleep
    cli
    mov dx, [ticks]
    mov al, 0xff            ; mask the timer
    out 0x21, al

    mov si, msg_pending
    call print
    mov al, [0x512]
    call print_hex
    mov si, msg_shadow
    call print
    mov al, [0x510]
    call print_hex
    mov si, msg_then
    call print
    mov al, [0x511]
    call print_hex
    ; Each HLT ended with a tick; a slow host may let two ticks pass in
    ; one wake-up, so count at least ten.
    mov si, msg_hlt_ok
    sub dx, 1
    cmp dx, 10
    jae .report
    mov si, msg_hlt_short
.report:
    call print

    mov dx, 0xb004
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

print:
    push dx
    mov dx, 0x3f8
.next:
    cs lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop dx
    ret

print_hex:
    push ax
    push bx
    push dx
    mov dx, 0x3f8
    mov bl, al
    shr al, 4
    call .digit
    mov al, bl
    and al, 0xf
    call .digit
    pop dx
    pop bx
    pop ax
    ret
.digit:
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '9' - 1
.out:
    out dx, al
    ret

timer_handler:
    push ax
    inc word [ticks]
    mov al, 0x20            ; non-specific EOI
    out 0x20, al
    pop ax
    iret

msg_pending:
    db "interrupts: IRQ 0 pending with IF clear, ticks ", 0
msg_shadow:
    db "; in the STI shadow ", 0
msg_then:
    db ", after it ", 0
msg_hlt_ok:
    db "; 10 HLTs woke for at least 10 ticks", 13, 10, 0
msg_hlt_short:
    db "; 10 HLTs woke for fewer than 10 ticks", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
