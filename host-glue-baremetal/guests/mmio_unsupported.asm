; An instruction the emulator does not implement (FBSTP, the x87 packed
; BCD store; FST and FIST are emulated) on an
; address with no memory behind it (the VGA hole): the VM must stop with a
; reason that names the bytes, the mode and the address. (Loads from
; there read all-ones without the emulator: see mmio_integer.asm.)
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
    mov ax, 0xa000
    mov es, ax
    fbstp [es:0x10]
    mov si, not_reached
    jmp .print

message:
    db "x87 BCD store to MMIO", 13, 10, 0
not_reached:
    db "the VMM let an unsupported MMIO instruction through", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
