; Hostile application processors on a PC with 5 vCPUs (the host's
; `cpus=5`; pc_*). Once all started, CPU 1 sends INITs to CPU 2 without
; end, CPU 3 sends NMIs to all but itself without end, and CPU 4 spins
; with interrupts closed. The bootstrap processor counts rounds of a
; fixed loop for 1,000 ms of guest time (TSC) with interrupts open, taking
; the NMIs, and prints
;   smp storm: 5 of 5 cpus started
;   smp storm: bsp <n> rounds in 1000 ms, nmis taken <n>
;   smp storm: inits sent <n>, nmis sent <n>, spins <n>
; then an ACPI power-off, with the storms still going.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "pc_smp.inc"

go         equ SMP_VARS + 0x200
inits_sent equ SMP_VARS + 0x240     ; each on its own cache line
nmis_sent  equ SMP_VARS + 0x280
spins      equ SMP_VARS + 0x2c0

test_main:
    call pic_off
    call lapic_on
    call smp_idt_on
    sti
    call start_aps
    push rax
    mov esi, LIN(msg_started)
    call print
    pop rax
    call print_dec
    mov esi, LIN(msg_of)
    call print
    mov rax, [ncpus]
    call print_dec
    mov esi, LIN(msg_cpus)
    call print
    mov qword [go], 1
    ; Rounds of a fixed loop for 1,000 ms.
    mov eax, 1000
    call deadline_in
    xor r8d, r8d
.round:
    mov ecx, 1000
.spin:
    dec ecx
    jnz .spin
    inc r8
    call deadline_passed
    jnc .round
    cli
    mov esi, LIN(msg_rounds)
    call print
    mov rax, r8
    call print_dec
    mov esi, LIN(msg_nmis)
    call print
    mov rax, [CPU_COUNT(0, 2)]
    call print_dec
    mov esi, LIN(msg_inits_sent)
    call print
    mov rax, [inits_sent]
    call print_dec
    mov esi, LIN(msg_nmis_sent)
    call print
    mov rax, [nmis_sent]
    call print_dec
    mov esi, LIN(msg_spins)
    call print
    mov rax, [spins]
    call print_dec
    mov esi, LIN(crlf)
    jmp print

; R15 = this CPU's APIC ID: each does its part once the bootstrap
; processor says go (interrupts closed).
ap_main:
    cmp qword [go], 1
    je .go
    pause
    jmp ap_main
.go:
    mov ebx, LAPIC
    cmp r15d, 1
    je .init_storm
    cmp r15d, 3
    je .nmi_storm
    cmp r15d, 4
    je .closed_spin
    ; The victim sleeps (until the INITs take it).
    sti
.sleep:
    hlt
    jmp .sleep
.init_storm:
    mov dword [rbx + 0x310], 2 << 24
    mov dword [rbx + 0x300], (1 << 14) | (5 << 8)
    lock inc qword [inits_sent]
    jmp .init_storm
.nmi_storm:
    mov dword [rbx + 0x310], 0
    mov dword [rbx + 0x300], (1 << 14) | (4 << 8) | (3 << 18)
    lock inc qword [nmis_sent]
    jmp .nmi_storm
.closed_spin:
    inc qword [spins]               ; no PAUSE either
    jmp .closed_spin

msg_started:    db "smp storm: ", 0
msg_of:         db " of ", 0
msg_cpus:       db " cpus started", 13, 10, 0
msg_rounds:     db "smp storm: bsp ", 0
msg_nmis:       db " rounds in 1000 ms, nmis taken ", 0
msg_inits_sent: db 13, 10, "smp storm: inits sent ", 0
msg_nmis_sent:  db ", nmis sent ", 0
msg_spins:      db ", spins ", 0

    IMAGE_END
