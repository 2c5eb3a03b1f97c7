; The integer instructions the emulator gained, on an address with no
; memory behind it (the VGA hole), in real mode: every read gives all ones
; and every write is dropped, and each instruction retires with what
; hardware computes from all ones. Then x87, SSE and MMX loads from the
; hole, which read all ones without the emulator. Prints one line: "integer forms on
; MMIO: ok", or the letter of the first check that failed.
bits 16
org 0

%macro check 2                  ; condition, letter: fail unless condition
    j%+1 %%ok
    mov al, %2
    jmp fail
%%ok:
%endmacro

start:
    jmp 0xf000:main
main:
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    mov ax, 0xa000
    mov es, ax
    ; DIV by all ones: 7 / 0xffffffff = 0 remainder 7.
    mov eax, 7
    xor edx, edx
    div dword [es:0x10]
    test eax, eax
    check z, 'a'
    cmp edx, 7
    check e, 'b'
    ; MUL: 3 * 0xffff = 0x2fffd, CF and OF set.
    mov ax, 3
    mul word [es:0x10]
    check c, 'c'
    cmp ax, 0xfffd
    check e, 'd'
    cmp dx, 2
    check e, 'e'
    ; IMUL: -1 * 5 = -5.
    imul bx, [es:0x10], 5
    cmp bx, -5
    check e, 'f'
    ; CMOVcc reads the source whatever the condition.
    xor cx, cx
    cmp cx, cx
    cmove cx, [es:0x10]
    cmp cx, 0xffff
    check e, 'g'
    ; BSF and BSR: bit 0 and bit 15.
    bsf cx, [es:0x10]
    check nz, 'h'
    test cx, cx
    check z, 'i'
    bsr cx, [es:0x10]
    cmp cx, 15
    check e, 'j'
    ; XADD, CMPXCHG, SHLD, BTS write nothing and read all ones.
    mov ax, 1
    xadd [es:0x10], ax
    cmp ax, 0xffff
    check e, 'k'
    xor ax, ax
    cmpxchg [es:0x10], cx
    check nz, 'l'
    cmp ax, 0xffff
    check e, 'm'
    shld [es:0x10], ax, 4
    bts word [es:0x10], 3
    check c, 'n'
    ; SMSW to the hole retires.
    smsw [es:0x20]
    ; MOV FS from the hole: FS = 0xffff in real mode.
    mov fs, [es:0x10]
    mov ax, fs
    cmp ax, 0xffff
    check e, 'o'
    ; A quotient that does not fit raises #DE from the emulator:
    ; 0xffff0000 / 0xffff = 0x10000. The handler (IVT entry 0) counts it
    ; and skips the 5-byte DIV.
    mov word [0], de_handler
    mov word [2], cs
    mov word [0x502], 0
    mov dx, 0xffff
    xor ax, ax
    div word [es:0x10]
    cmp word [0x502], 1
    check e, 'p'
    ; x87, SSE and MMX loads, which the emulator does not model, read the
    ; hole's all-ones too (the VMM maps open bus to a page of all-ones).
    fninit
    fild word [es:0x10]         ; -1
    fistp word [0x504]
    cmp word [0x504], -1
    check e, 'q'
    mov eax, cr4
    or eax, 1 << 9              ; OSFXSR
    mov cr4, eax
    mov eax, cr0
    and eax, ~((1 << 2) | (1 << 3)) ; EM, TS
    or eax, 1 << 1              ; MP
    mov cr0, eax
    mov eax, 1
    movd xmm0, eax
    paddd xmm0, [es:0x10]       ; 1 + 0xffffffff in every lane
    movd eax, xmm0
    test eax, eax
    check z, 'r'
    movq mm0, [es:0x18]
    movd eax, mm0
    emms
    cmp eax, -1
    check e, 's'
    mov si, ok
    jmp print

de_handler:
    inc word [0x502]
    push bp
    mov bp, sp
    add word [bp + 2], 5        ; past "div word [es:0x10]" (26 f7 36 10 00)
    pop bp
    iret

fail:
    mov bl, al
    mov dx, 0x3f8
    mov si, failed
.next:
    cs lodsb
    test al, al
    jz .letter
    out dx, al
    jmp .next
.letter:
    mov al, bl
    out dx, al
    mov al, 13
    out dx, al
    mov al, 10
    out dx, al
    jmp off

print:
    mov dx, 0x3f8
.next:
    cs lodsb
    test al, al
    jz off
    out dx, al
    jmp .next
off:
    mov dx, 0xb004              ; PM1a_CNT: SLP_EN, S5
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

ok:
    db "integer forms on MMIO: ok", 13, 10, 0
failed:
    db "integer forms on MMIO: FAIL ", 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
