; A real-mode firmware image for `vmm`'s disk durability test (run as
; `vmm run --bios disk_flush.bin --disk IMAGE`, without SeaBIOS): it turns
; on the PIIX3 IDE function's legacy ports (PCI 00:01.1: I/O space in the
; command register, decode enable in IDETIM), writes sectors 16-19 of the
; primary master by PIO (sector n filled with the bytes 'W', '0'+n-16),
; issues FLUSH CACHE, prints "flushed" on COM1 once the flush has
; completed without error (or "disk error" and the status), and then spins
; with interrupts off until the host kills it.
bits 16
org 0
%include "com1_print.inc"

ATA      equ 0x1f0
PCI_ADDR equ 0xcf8
PCI_DATA equ 0xcfc
; Bus 0, device 1, function 1.
IDE_FN   equ 0x80000000 | (1 << 11) | (1 << 8)

start:
    cli
    mov ax, cs
    mov ds, ax
    ; PCI command register: I/O space.
    mov dx, PCI_ADDR
    mov eax, IDE_FN | 0x04
    out dx, eax
    mov dx, PCI_DATA
    mov ax, 0x0001
    out dx, ax
    ; IDETIM of the primary channel: decode enable.
    mov dx, PCI_ADDR
    mov eax, IDE_FN | 0x40
    out dx, eax
    mov dx, PCI_DATA
    mov ax, 0x8000
    out dx, ax

    ; WRITE SECTORS: LBA 16, 4 sectors, the master.
    mov dx, ATA + 6
    mov al, 0xe0
    out dx, al
    mov dx, ATA + 2
    mov al, 4
    out dx, al
    mov dx, ATA + 3
    mov al, 16
    out dx, al
    mov dx, ATA + 4
    xor al, al
    out dx, al
    mov dx, ATA + 5
    out dx, al
    mov dx, ATA + 7
    mov al, 0x30
    out dx, al
    mov bl, '0'
.sector:
    call wait_drq
    jc fail
    mov ah, bl              ; second byte of each word
    mov al, 'W'
    mov cx, 256
    mov dx, ATA
.word:
    out dx, ax
    loop .word
    inc bl
    cmp bl, '4'
    jne .sector
    call wait_ready
    jc fail

    ; FLUSH CACHE.
    mov dx, ATA + 7
    mov al, 0xe7
    out dx, al
    call wait_ready
    jc fail
    mov si, msg_flushed
    call print
    jmp spin

fail:
    mov si, msg_error
    call print
spin:
    pause
    jmp spin

; Wait for BSY to clear; CF set if ERR or DF.
wait_ready:
    mov dx, ATA + 7
.poll:
    in al, dx
    test al, 0x80
    jnz .poll
    test al, 0x21
    jnz .bad
    clc
    ret
.bad:
    stc
    ret

; Wait for DRQ; CF set if the command ended (ERR, DF or no DRQ) instead.
wait_drq:
    call wait_ready
    jc .out
    test al, 0x08
    jnz .out                ; CF is clear
    stc
.out:
    ret

    COM1_PRINT

msg_flushed: db "flushed", 13, 10, 0
msg_error:   db "disk error", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:                      ; F000:FFF0
    jmp 0xf000:start
    times 0x10000 - ($ - $$) db 0
