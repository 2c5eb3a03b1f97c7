; Four CPUs of a PC (the host's `cpus=4`; pc_*) busy in their registers,
; for snapshots of a machine whose vCPUs are in the middle of their work
; (tests/kvm_smp.rs). Each CPU runs a xorshift64 chain
; (x ^= x << 13; x ^= x >> 7; x ^= x << 17) of 2^CHAIN_LOG2 steps held in
; registers only, so a register lost or changed on the way shows in its
; result. Halfway through, each holds its chain for HOLD_MS (the
; bootstrap processor spins on the TSC, the others spin until it
; releases them), so a snapshot taken meanwhile finds every CPU busy
; with its work in its registers, however fast the host runs the chains:
;  1. the bootstrap processor alone, from seed 1, while the application
;     processors still wait for their start-up IPI; it prints
;       smp busy: bsp alone, aps waiting
;     first and
;       smp busy: bsp 0 <result>
;     after;
;  2. it starts the others (INIT, start-up, start-up) and prints
;       smp busy: 4 of 4 cpus started, aps busy
;     and each application processor N runs its chain from seed N + 1;
;     the bootstrap processor releases them HOLD_MS later and waits for
;     them (interrupts open);
;  3. it prints each one's result, how often each started (once) and
;       smp busy: cpu N <result>
;       smp busy: starts 1 1 1 1
;       smp busy: done
;     then an ACPI power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "pc_smp.inc"

CHAIN_LOG2 equ 16
HOLD_MS equ 3000
results equ SMP_VARS + 0x200        ; qword per APIC ID
finished equ SMP_VARS + 0x280       ; application processors done
release equ SMP_VARS + 0x2c0        ; the application processors go on

test_main:
    call pic_off
    call lapic_on
    call smp_idt_on
    mov qword [finished], 0
    mov qword [release], 0
    mov esi, LIN(msg_alone)
    call print
    mov eax, 1
    call half_chain
    push rax
    mov eax, HOLD_MS
    call wait_ms
    pop rax
    call half_chain
    push rax
    mov esi, LIN(msg_bsp)
    call print
    pop rax
    call print_dec
    mov esi, LIN(crlf)
    call print
    sti
    call start_aps
    cmp rax, 4
    jne .few
    mov esi, LIN(msg_started)
    call print
    mov eax, HOLD_MS
    call wait_ms
    mov qword [release], 1
    ; Wait (up to 10 minutes) for the three.
    mov eax, 600_000
    call deadline_in
.wait:
    cmp qword [finished], 3
    je .report
    call deadline_passed
    jnc .wait
    mov esi, LIN(msg_late)
    jmp print
.report:
    mov ebx, 1
.cpu:
    mov esi, LIN(msg_cpu)
    call print
    mov rax, rbx
    call print_dec
    mov esi, LIN(msg_space)
    call print
    mov rax, [results + rbx * 8]
    call print_dec
    mov esi, LIN(crlf)
    call print
    inc ebx
    cmp ebx, 4
    jb .cpu
    mov esi, LIN(msg_starts)
    call print
    xor ebx, ebx
.start:
    mov esi, LIN(msg_space)
    call print
    mov rax, [starts + rbx * 8]
    call print_dec
    inc ebx
    cmp ebx, 4
    jb .start
    mov esi, LIN(crlf)
    call print
    mov esi, LIN(msg_done)
    jmp print
.few:
    mov esi, LIN(msg_few)
    jmp print

; An application processor: its chain from seed APIC ID + 1, held
; halfway until the bootstrap processor releases it.
ap_main:
    lea rax, [r15 + 1]
    call half_chain
.hold:
    pause
    cmp qword [release], 0
    je .hold
    call half_chain
    mov [results + r15 * 8], rax
    lock inc qword [finished]
    ret

; RAX = the xorshift64 chain of 2^(CHAIN_LOG2 - 1) steps from seed RAX.
half_chain:
    push rcx
    push rdx
    mov ecx, 1 << (CHAIN_LOG2 - 1)
.step:
    mov rdx, rax
    shl rdx, 13
    xor rax, rdx
    mov rdx, rax
    shr rdx, 7
    xor rax, rdx
    mov rdx, rax
    shl rdx, 17
    xor rax, rdx
    dec ecx
    jnz .step
    pop rdx
    pop rcx
    ret

msg_alone:   db "smp busy: bsp alone, aps waiting", 13, 10, 0
msg_bsp:     db "smp busy: bsp 0 ", 0
msg_started: db "smp busy: 4 of 4 cpus started, aps busy", 13, 10, 0
msg_cpu:     db "smp busy: cpu ", 0
msg_space:   db " ", 0
msg_starts:  db "smp busy: starts", 0
msg_done:    db "smp busy: done", 13, 10, 0
msg_late:    db "smp busy: the application processors did not finish", 13, 10, 0
msg_few:     db "smp busy: this program wants 4 CPUs", 13, 10, 0

IMAGE_END
