; The guest of `cargo xtask bench kvm`: the same binary runs as firmware
; under `vmm run --bios` and under `qemu-system-x86_64 -enable-kvm -bios`.
; In real mode it prints "mark N" on COM1 before each of ROUNDS rounds of
; COUNT `out 0x80, al` (port 0x80, the POST code port, is hooked by both
; VMMs), and once more after the last; the host times the marks as they
; arrive, so start-up costs cancel. Then it powers off (ACPI PM1a_CNT at
; 0x604 for vmm; isa-debug-exit at 0xF4 for QEMU).
bits 16
org 0
%include "com1_print.inc"
%include "out_rounds.inc"

COUNT  equ 20000
ROUNDS equ 10

start:
    jmp 0xf000:main
main:
    cli
    xor ax, ax
    mov ss, ax
    mov sp, 0x7c00
    mov ax, cs
    mov ds, ax
    mov si, msg_ready
    call print
    OUT_ROUNDS
.done:
    mov si, msg_done
    call print
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
    mov al, 0
    out 0xf4, al
.hang:
    hlt
    jmp .hang

    COM1_PRINT              ; print: leaves DX = COM1 (.round relies on it)

msg_ready: db "kvm_out_loop: ready", 13, 10, 0
msg_mark:  db "mark ", 0
msg_done:  db "done", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:                      ; F000:FFF0
    jmp 0xf000:start
    times 0x10000 - ($ - $$) db 0
