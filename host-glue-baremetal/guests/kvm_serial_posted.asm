; The guest of `xtask/tests/kvm_serial_posted.rs`: the COM1 transmit
; holding register written the two ways a guest does, as firmware under
; `vmm run --bios`. In real mode it prints "polled:", then LINES lines the
; way Linux's 8250 console does before its tty is open (an LSR read until
; THRE before every THR write), then "unpolled:", then LINES more lines with
; THR writes only (nothing but posted writes: KVM's ring fills and the
; write that finds it full exits as usual), then THRE interrupts that
; posted writes raise (irq_phase: ROUNDS dots, "irq: ok"), then "done", and
; powers off through ACPI (PM1a_CNT at 0x604). Line L (from 0) of each block is
; LEN letters, letter J being 'A' + (L + J) mod 26, then CR LF.
bits 16
org 0
%include "com1_print.inc"

LINES  equ 64
ROUNDS equ 16
LEN    equ 62
LSR    equ COM1 + 5

start:
    jmp 0xf000:main
main:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7c00
    mov ax, cs
    mov ds, ax
    mov si, msg_polled
    call print
    mov bp, 1               ; polled
    call block
    mov si, msg_unpolled
    call print
    xor bp, bp              ; unpolled
    call block
    call irq_phase
    mov si, msg_done
    call print
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

; THRE interrupts after posted writes: the local APIC off (so the 8259
; drives INTR), IRQ4 at vector 0x0c, COM1 with OUT2 and the THRE interrupt
; enabled; then ROUNDS times a '.' to THR (posted) and STI; HLT, which only
; that write's THRE interrupt can end (every other IRQ is masked). The
; handler reads IIR (clearing THRE), counts in DI and EOIs. Prints the dots,
; then "irq: ok" if every round (and the THRE that enabling raised) was
; counted, else "irq: lost".
irq_phase:
    mov ecx, 0x1b           ; IA32_APIC_BASE
    rdmsr
    and ax, 0xf7ff          ; global enable off
    wrmsr
    xor ax, ax
    mov es, ax
    mov word [es:0x0c * 4], thre_irq
    mov word [es:0x0c * 4 + 2], 0xf000
    mov al, 0x11            ; ICW1: edge, cascade, ICW4
    out 0x20, al
    mov al, 0x08            ; ICW2: vectors 8-15
    out 0x21, al
    mov al, 0x04            ; ICW3: slave on IRQ2
    out 0x21, al
    mov al, 0x01            ; ICW4: 8086 mode
    out 0x21, al
    mov al, 0xef            ; only IRQ4
    out 0x21, al
    xor di, di
    mov dx, COM1 + 4        ; MCR: OUT2
    mov al, 0x08
    out dx, al
    mov dx, COM1 + 1        ; IER: THRE (raised at once: THR is empty)
    mov al, 0x02
    out dx, al
    sti
    hlt
    cli
    mov cx, ROUNDS
.round:
    mov dx, COM1
    mov al, '.'
    out dx, al
    sti
    hlt
    cli
    loop .round
    mov dx, COM1 + 1        ; IER: nothing
    xor al, al
    out dx, al
    mov si, msg_crlf
    call print
    mov si, msg_irq_ok
    cmp di, ROUNDS + 1
    je .said
    mov si, msg_irq_lost
.said:
    call print
    ret

thre_irq:
    push ax
    push dx
    mov dx, COM1 + 2        ; IIR: reading it clears THRE
    in al, dx
    inc di
    mov al, 0x20            ; EOI
    out 0x20, al
    pop dx
    pop ax
    iret

; LINES lines of the pattern; with BP != 0 each byte waits for THRE first.
block:
    xor bx, bx              ; line
.line:
    xor cx, cx              ; letter
.letter:
    mov ax, bx
    add ax, cx
    mov dl, 26
    div dl                  ; AH = (line + letter) mod 26
    mov al, ah
    add al, 'A'
    call putc
    inc cx
    cmp cx, LEN
    jb .letter
    mov al, 13
    call putc
    mov al, 10
    call putc
    inc bx
    cmp bx, LINES
    jb .line
    ret

; AL to COM1; with BP != 0 after LSR says THRE (clobbers DX, keeps AL).
putc:
    test bp, bp
    jz .send
    mov ah, al
    mov dx, LSR
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov al, ah
.send:
    mov dx, COM1
    out dx, al
    ret

    COM1_PRINT

msg_polled:   db "polled:", 13, 10, 0
msg_unpolled: db "unpolled:", 13, 10, 0
msg_done:     db "done", 13, 10, 0
msg_crlf:     db 13, 10, 0
msg_irq_ok:   db "irq: ok", 13, 10, 0
msg_irq_lost: db "irq: lost", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:                      ; F000:FFF0
    jmp 0xf000:start
    times 0x10000 - ($ - $$) db 0
