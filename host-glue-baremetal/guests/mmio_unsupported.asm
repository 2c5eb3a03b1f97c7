; An instruction the emulator does not carry out on memory a store cannot
; change: FBSTP (the x87 packed-BCD store) into the firmware ROM. The
; emulator completes FBSTP only into unassigned memory, where its effects
; on the x87 state are all that is left; into ROM it would need the BCD
; digits, which it does not produce. The VM must stop with a reason that
; names the bytes, the mode and the address. (Loads from unassigned
; memory read all-ones without the emulator: see mmio_integer.asm.)
bits 16
org 0

start:
    jmp 0xf000:main
main:
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    mov dx, 0x3f8
    mov si, message
.print:
    cs lodsb
    test al, al
    jz .touch
    out dx, al
    jmp .print
.touch:
    mov ax, 0xf000
    mov es, ax
    fbstp [es:0x10]
    mov si, not_reached
    jmp .print

message:
    db "x87 BCD store to ROM", 13, 10, 0
not_reached:
    db "the VMM let an unsupported MMIO instruction through", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
