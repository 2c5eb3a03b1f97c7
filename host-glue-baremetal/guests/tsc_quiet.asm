; A well-behaved CPU-bound VM for the PIT-storm test: counts how many
; rounds of a fixed loop (1,000 decrements) it gets through in 1,000 ms of
; guest time (TSC, at the frequency the VMM's CPUID leaf 0x40000010
; gives), with no exits of its own, interrupts open. Prints
;   quiet: <n> rounds in 1000 ms
; and powers off.
%define PM1_CNT 0xb004
%include "hostile.inc"

test_main:
    ; Interrupts open, although this VM has no interrupt source: nothing
    ; changes for the guest, but Bochs (2.7) does not leave a VMX guest
    ; with RFLAGS.IF clear for an external interrupt, although
    ; external-interrupt exiting is on (the SDM says IF plays no part
    ; then), so with IF clear the host's timer never took the CPU back
    ; under Bochs and the test measured 100%, no sharing at all.
    sti
    call tsc_per_ms
    imul rax, rax, 1000
    mov r14, rax
    call rdtsc64
    mov r15, rax
    xor r12d, r12d
.round:
    mov ecx, 1000
.inner:
    dec ecx
    jnz .inner
    inc r12
    call rdtsc64
    sub rax, r15
    cmp rax, r14
    jb .round
    mov esi, LIN(msg_quiet)
    call print
    mov rax, r12
    call print_dec
    mov esi, LIN(msg_rounds)
    jmp print

msg_quiet:  db "quiet: ", 0
msg_rounds: db " rounds in 1000 ms", 13, 10, 0

    IMAGE_END
