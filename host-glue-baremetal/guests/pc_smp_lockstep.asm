; Two CPUs of a PC (the host's `cpus=2`; pc_*) in lock step on shared
; memory. The bootstrap processor starts the other, then both run:
;  1. LOCK XADD ping-pong: CPU c waits until `turn` is 2i + c, checks that
;     the other's log entry for the step before holds what it wrote, writes
;     its own and adds 1 to `turn` with LOCK XADD (whose old value must be
;     2i + c), 200 rounds each;
;  2. CMPXCHG ping-pong: CPU c swaps `token` from 2i + c to 2i + c + 1
;     with LOCK CMPXCHG, retrying while the other holds it, 200 rounds;
;  3. 100,000 LOCK ADDs each to one `sum`.
; The bootstrap processor waits (up to 30 s) for the other to finish and
; prints
;   smp lockstep: xadd turn 400, mismatches 0 0
;   smp lockstep: cmpxchg token 400
;   smp lockstep: sum 200000
;   smp lockstep: done
; then an ACPI power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "pc_smp.inc"

ROUNDS  equ 200
ADDS    equ 100_000
MAGIC   equ 0x5a5a_0000
SHARED  equ 0xa0000 - 0x8000        ; below the VGA hole
turn    equ SHARED + 0x00
token   equ SHARED + 0x40           ; each on its own cache line
sum     equ SHARED + 0x80
done    equ SHARED + 0xc0
mismatches equ SHARED + 0x100       ; qword per CPU
steplog equ SHARED + 0x1000         ; qword per step: step ^ MAGIC

test_main:
    call pic_off
    call lapic_on
    call smp_idt_on
    ; Shared words zeroed before the other CPU starts.
    mov edi, SHARED
    mov ecx, 0x8000 / 8
    xor eax, eax
    rep stosq
    sti
    call start_aps
    cmp rax, 2
    jne .alone
    xor r15d, r15d
    call lockstep
    mov eax, 30_000
    call deadline_in
.wait:
    cmp qword [done], 1
    je .report
    call deadline_passed
    jnc .wait
    mov esi, LIN(msg_late)
    call print
.report:
    mov esi, LIN(msg_xadd)
    call print
    mov rax, [turn]
    call print_dec
    mov esi, LIN(msg_mismatch)
    call print
    mov rax, [mismatches]
    call print_dec
    mov esi, LIN(msg_space)
    call print
    mov rax, [mismatches + 8]
    call print_dec
    mov esi, LIN(msg_cmpxchg)
    call print
    mov rax, [token]
    call print_dec
    mov esi, LIN(msg_sum)
    call print
    mov rax, [sum]
    call print_dec
    mov esi, LIN(msg_done)
    jmp print
.alone:
    mov esi, LIN(msg_alone)
    jmp print

; The other CPU: the same steps, then `done`.
ap_main:
    sti
    call lockstep
    mov qword [done], 1
    ret

; The three phases as CPU R15 (0 or 1).
lockstep:
    ; 1. LOCK XADD ping-pong.
    xor r8d, r8d                    ; round
.xadd_round:
    lea r9, [r8 * 2 + r15]          ; this CPU's step
.xadd_wait:
    pause
    cmp [turn], r9
    jne .xadd_wait
    ; The other CPU's write before its step (none before step 0).
    test r9, r9
    jz .xadd_own
    mov rax, [steplog + r9 * 8 - 8]
    lea rdx, [r9 - 1]
    xor rdx, MAGIC
    cmp rax, rdx
    je .xadd_own
    inc qword [mismatches + r15 * 8]
.xadd_own:
    mov rax, r9
    xor rax, MAGIC
    mov [steplog + r9 * 8], rax
    mov eax, 1
    lock xadd [turn], rax
    cmp rax, r9
    je .xadd_next
    inc qword [mismatches + r15 * 8]
.xadd_next:
    inc r8
    cmp r8, ROUNDS
    jb .xadd_round

    ; 2. CMPXCHG ping-pong.
    xor r8d, r8d
.cx_round:
    lea r9, [r8 * 2 + r15]
    lea r10, [r9 + 1]
.cx_try:
    mov rax, r9
    lock cmpxchg [token], r10
    je .cx_next
    pause
    jmp .cx_try
.cx_next:
    inc r8
    cmp r8, ROUNDS
    jb .cx_round

    ; 3. LOCK ADD to one word.
    mov ecx, ADDS
.add:
    lock add qword [sum], 1
    dec ecx
    jnz .add
    ret

msg_xadd:     db "smp lockstep: xadd turn ", 0
msg_mismatch: db ", mismatches ", 0
msg_space:    db " ", 0
msg_cmpxchg:  db 13, 10, "smp lockstep: cmpxchg token ", 0
msg_sum:      db 13, 10, "smp lockstep: sum ", 0
msg_done:     db 13, 10, "smp lockstep: done", 13, 10, 0
msg_late:     db "smp lockstep: the other CPU did not finish in 30 s", 13, 10, 0
msg_alone:    db "smp lockstep: this program wants 2 CPUs", 13, 10, 0

    IMAGE_END
