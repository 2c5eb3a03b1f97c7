; An instruction the emulator does not implement (MASKMOVQ, the MMX
; byte-masked store to DS:DI; MOVQ and the x87 stores are emulated) on an
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
    pcmpeqb mm1, mm1            ; every byte selected
    mov ax, 0xa000
    mov ds, ax
    mov di, 0x10
    maskmovq mm0, mm1
    mov si, not_reached
    jmp .print

message:
    db "masked MMX store to MMIO", 13, 10, 0
not_reached:
    db "the VMM let an unsupported MMIO instruction through", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
