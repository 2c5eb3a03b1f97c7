; The world-switch probe of `cargo xtask bench paging`: in real mode it
; prints "exit_loop: mark N" on COM1 before each of ROUNDS rounds of COUNT
; `out 0x80, al` (an exit whose handling is next to nothing: the POST code
; port, unhooked on the bare-metal host's minimal machine), and once more
; after the last. The bench times the marks as the host prints them and
; takes the host's handling time per port exit from its report, so what
; is left per exit is the world switch pair (VMRUN and #VMEXIT, as QEMU's
; TCG emulates them, with its software TLB flushed at each) and two guest
; instructions. Then it powers off (PM1a_CNT at 0xB004).
bits 16
org 0
%include "out_rounds.inc"

COUNT  equ 20000
ROUNDS equ 5
COM1   equ 0x3f8

start:
    cli
    OUT_ROUNDS
.done:
    mov dx, 0xb004          ; PM1a_CNT
    mov ax, 0x2000          ; SLP_EN, SLP_TYP 0 = S5 on PIIX4
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

; Print the NUL-terminated string at CS:SI on COM1 (leaves DX = COM1).
print:
    mov dx, COM1
.next:
    cs lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    ret

msg_mark:  db "exit_loop: mark ", 0

    times 0xfff0 - ($ - $$) db 0
reset:                      ; F000:FFF0
    jmp start
    times 0x10000 - ($ - $$) db 0
