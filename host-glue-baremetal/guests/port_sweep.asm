; Read and write every I/O port at every size: bytes 00/55/AA/FF, word
; FFFF, dword FFFFFFFF, and IN of each size. (port_sweep_full.asm writes all
; 256 byte values.) The VMM must answer each access as hardware would and
; never fall over. Progress is kept in RAM, so a write that resets the VM
; resumes the sweep after that port. The sweep skips PM1_CNT (0xB004-5),
; which it uses at the end to power off.
bits 16
org 0

progress equ 0x500
magic    equ 0x502

start:
    jmp 0xf000:main
main:
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    cmp word [magic], 0xbeef
    jne .fresh
    mov dx, [progress]      ; resumed after a reset: go on after that port
    inc dx
    jz finished
    jmp sweep
.fresh:
    mov word [magic], 0xbeef
    xor dx, dx

sweep:
    mov [progress], dx
    cmp dx, 0xb004
    je .next
    cmp dx, 0xb005
    je .next
%ifdef FULL
    xor ax, ax
.value:
    out dx, al
    inc al
    jnz .value
%else
    mov al, 0x00
    out dx, al
    mov al, 0x55
    out dx, al
    mov al, 0xaa
    out dx, al
    mov al, 0xff
    out dx, al
%endif
    mov ax, 0xffff
    out dx, ax
    mov eax, 0xffffffff
    out dx, eax
    in al, dx
    in ax, dx
    in eax, dx
.next:
    inc dx
    jnz sweep

finished:
    ; Put COM1 back the way it prints: 8N1, divisor latch off, no loopback.
    mov dx, 0x3fb
    mov al, 3
    out dx, al
    mov dx, 0x3fc
    mov al, 0
    out dx, al
    mov dx, 0x3f8
    mov si, message
.print:
    cs lodsb
    test al, al
    jz .off
    out dx, al
    jmp .print
.off:
    mov dx, 0xb004
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

message:
    db 13, 10, "port sweep done", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
