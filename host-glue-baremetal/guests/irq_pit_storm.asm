; A PIT storm (irq_*: the host gives it an 8259 pair and an 8254): PIT
; channel 0 at its fastest rate (mode 2, count 2: about 600 kHz) into
; IRQ 0, taken and EOIed, while the program also spins on port reads of
; the PIT counter, for 2.5 s of guest time (TSC). Runs next to tsc_quiet,
; whose throughput must not collapse. Prints "pit storm: <n> ticks taken"
; and powers off.
%define PM1_CNT 0xb004
%include "hostile.inc"

test_main:
    mov byte [has_pic], 1
    ; 8259 master: vectors 20h-27h, only IRQ 0; slave masked.
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xa1, al
    mov al, 0x01
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    mov al, 0x34
    out 0x43, al
    mov al, 2
    out 0x40, al
    xor al, al
    out 0x40, al
    call tsc_per_ms
    imul rax, rax, 2500
    mov r14, rax
    call rdtsc64
    mov r15, rax
    sti
.storm:
    in al, 0x40
    in al, 0x40
    call rdtsc64
    sub rax, r15
    cmp rax, r14
    jb .storm
    cli
    mov esi, LIN(msg_ticks)
    call print
    mov rax, [counts + 0x20 * 8]
    call print_dec
    mov esi, LIN(msg_taken)
    jmp print

msg_ticks: db "pit storm: ", 0
msg_taken: db " ticks taken", 13, 10, 0

    IMAGE_END
