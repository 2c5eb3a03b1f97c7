; IPIs between the CPUs of a PC with 4 vCPUs (the host's `cpus=4`;
; pc_*): the bootstrap processor starts the application processors
; (INIT, start-up, start-up) and has every kind of IPI sent, by itself or
; by an application processor (a mailbox per CPU, rung with a fixed IPI
; on vector 30h), and counts where each arrived, per CPU:
; fixed, lowest priority (the CPU with the lower TPR takes it), NMI, SMI
; (nothing), INIT level de-assert (nothing); physical destinations,
; broadcast (FFh), the self, all-including-self and all-excluding-self
; shorthands, logical destinations in the flat and the cluster model.
; One line per case with the count on CPUs 0-3:
;   smp ipi <case>: <n0> <n1> <n2> <n3>
; Then INIT to one CPU and start-ups to it and to a running CPU (only the
; waiting one starts again), INIT to all but self and two start-ups
; (each starts once more):
;   smp ipi starts <case>: <n0> <n1> <n2> <n3>
; and a last line with how many interrupts came on vectors never sent:
;   smp ipi: done, stray vectors 0
; then an ACPI power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "pc_smp.inc"

DOORBELL equ 0x30

; Fixed (or %5's mode bits in the low word) IPI cases: sender, ICR low,
; ICR high, the vector to count (2: NMI), arrivals to wait for, name.
%macro CASE 6
    dd %2, %3
    db %1, %4, %5
    db %6, 0
%endmacro
; A local APIC register write on CPU %1: register %2, value %3.
%macro REG 3
    dd %3, (%2 << 8) | 1
    db %1, 0, 0
    db 0
%endmacro

IPI_FIXED  equ 1 << 14                  ; level assert, fixed
IPI_LOWEST equ (1 << 14) | (1 << 8)
IPI_SMI    equ (1 << 14) | (2 << 8)
IPI_NMI    equ (1 << 14) | (4 << 8)
LOGIC  equ 1 << 11
SELF   equ 1 << 18
ALL    equ 2 << 18
OTHERS equ 3 << 18
%define DEST(x) ((x) << 24)

flat_cases:
    CASE 0, IPI_FIXED | 0x40, DEST(2), 0x40, 1, "fixed physical 0 to 2"
    CASE 1, IPI_FIXED | 0x41, DEST(3), 0x41, 1, "fixed physical 1 to 3"
    CASE 3, IPI_FIXED | 0x42, DEST(0), 0x42, 1, "fixed physical 3 to 0"
    CASE 2, IPI_FIXED | 0x43, DEST(0xff), 0x43, 4, "fixed physical broadcast from 2"
    CASE 0, IPI_FIXED | LOGIC | 0x44, DEST(0x0a), 0x44, 2, "fixed logical flat 0a from 0"
    CASE 3, IPI_FIXED | LOGIC | 0x45, DEST(0xff), 0x45, 4, "fixed logical flat broadcast from 3"
    CASE 1, IPI_FIXED | SELF | 0x46, 0, 0x46, 1, "fixed self from 1"
    CASE 2, IPI_FIXED | ALL | 0x47, 0, 0x47, 4, "fixed all including self from 2"
    CASE 3, IPI_FIXED | OTHERS | 0x48, 0, 0x48, 3, "fixed all excluding self from 3"
    CASE 2, IPI_LOWEST | 0x49, DEST(1), 0x49, 1, "lowest priority physical 2 to 1"
    REG 2, 0x80, 0x20
    CASE 0, IPI_LOWEST | LOGIC | 0x4a, DEST(0x0c), 0x4a, 1, "lowest priority logical flat 0c from 0, tpr 20 on 2"
    REG 2, 0x80, 0
    REG 3, 0x80, 0x20
    CASE 1, IPI_LOWEST | LOGIC | 0x4b, DEST(0x0c), 0x4b, 1, "lowest priority logical flat 0c from 1, tpr 20 on 3"
    REG 3, 0x80, 0
    CASE 0, IPI_NMI, DEST(1), 2, 1, "nmi physical 0 to 1"
    CASE 2, IPI_NMI | OTHERS, 0, 2, 3, "nmi all excluding self from 2"
    CASE 3, IPI_NMI | LOGIC, DEST(0x09), 2, 2, "nmi logical flat 09 from 3"
    CASE 1, IPI_NMI | ALL, 0, 2, 4, "nmi all including self from 1"
    CASE 0, IPI_SMI | 0x4c, DEST(3), 0x4c, 0, "smi physical 0 to 3"
    CASE 1, (1 << 15) | (5 << 8) | OTHERS | 0x4d, 0, 0x4d, 0, "init level de-assert all excluding self from 1"
    dd 0, 0

cluster_cases:
    ; Every APIC in the cluster model: clusters 0 (CPUs 0, 1) and 1
    ; (CPUs 2, 3), bits 1 and 2 in each.
    REG 0, 0xe0, 0x0fff_ffff
    REG 0, 0xd0, DEST(0x01)
    REG 1, 0xe0, 0x0fff_ffff
    REG 1, 0xd0, DEST(0x02)
    REG 2, 0xe0, 0x0fff_ffff
    REG 2, 0xd0, DEST(0x11)
    REG 3, 0xe0, 0x0fff_ffff
    REG 3, 0xd0, DEST(0x12)
    CASE 0, IPI_FIXED | LOGIC | 0x50, DEST(0x12), 0x50, 1, "fixed logical cluster 12 from 0"
    CASE 2, IPI_FIXED | LOGIC | 0x51, DEST(0x03), 0x51, 2, "fixed logical cluster 03 from 2"
    CASE 3, IPI_FIXED | LOGIC | 0x52, DEST(0xf1), 0x52, 2, "fixed logical cluster f1 from 3"
    CASE 1, IPI_FIXED | LOGIC | 0x53, DEST(0xff), 0x53, 4, "fixed logical cluster broadcast from 1"
    CASE 3, IPI_NMI | LOGIC, DEST(0x11), 2, 1, "nmi logical cluster 11 from 3"
    REG 3, 0x80, 0x20
    CASE 0, IPI_LOWEST | LOGIC | 0x54, DEST(0x13), 0x54, 1, "lowest priority logical cluster 13 from 0, tpr 20 on 3"
    REG 3, 0x80, 0
    dd 0, 0

after_cases:
    CASE 0, IPI_FIXED | OTHERS | 0x55, 0, 0x55, 3, "fixed all excluding self from 0 after the restart"
    CASE 2, IPI_FIXED | 0x56, DEST(0xff), 0x56, 4, "fixed physical broadcast from 2 after the restart"
    dd 0, 0

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
    cmp qword [ncpus], 4
    jne .wrong

    mov esi, LIN(flat_cases)
    call run_cases

    ; INIT from 1 to 3: 3 waits for a start-up. One to 2, which runs,
    ; changes nothing; two to 3 start it once.
    mov r12d, 1
    mov rbx, (DEST(3) << 32) | (1 << 14) | (5 << 8)
    call command
    mov eax, 20
    call wait_ms
    mov ebx, LAPIC
    mov dword [rbx + 0x310], DEST(2)
    mov dword [rbx + 0x300], (1 << 14) | (6 << 8) | AP_VECTOR
    mov dword [rbx + 0x310], DEST(3)
    mov dword [rbx + 0x300], (1 << 14) | (6 << 8) | AP_VECTOR
    mov eax, 1
    call wait_ms
    mov dword [rbx + 0x300], (1 << 14) | (6 << 8) | AP_VECTOR
    mov eax, 4
    call wait_starts
    mov esi, LIN(msg_init_one)
    call print_starts

    mov esi, LIN(cluster_cases)
    call run_cases

    ; INIT to all but self, two start-ups: every AP starts once more (in
    ; the flat model again: INIT reset its APIC).
    mov ebx, LAPIC
    mov dword [rbx + 0x310], 0
    mov dword [rbx + 0x300], (1 << 14) | (5 << 8) | OTHERS
    mov eax, 20
    call wait_ms
    mov dword [rbx + 0x300], (1 << 14) | (6 << 8) | OTHERS | AP_VECTOR
    mov eax, 1
    call wait_ms
    mov dword [rbx + 0x300], (1 << 14) | (6 << 8) | OTHERS | AP_VECTOR
    mov eax, 7
    call wait_starts
    mov esi, LIN(msg_init_all)
    call print_starts
    ; The bootstrap processor back in the flat model too.
    mov dword [rbx + 0xe0], 0xffff_ffff
    mov dword [rbx + 0xd0], DEST(0x01)

    mov esi, LIN(after_cases)
    call run_cases

    ; Interrupts on vectors nobody sent: every vector but IPI_NMI, the
    ; doorbell, the cases' 40h-5Fh and the spurious FFh, on every CPU.
    xor eax, eax
    xor ecx, ecx
.stray:
    mov edx, ecx
    and edx, 0xff
    cmp edx, 2
    je .skip
    cmp edx, DOORBELL
    je .skip
    cmp edx, 0xff
    je .skip
    cmp edx, 0x40
    jb .add
    cmp edx, 0x60
    jb .skip
.add:
    add rax, [CPU_COUNTS + rcx * 8]
.skip:
    inc ecx
    cmp ecx, 4 * 256
    jb .stray
    push rax
    mov esi, LIN(msg_done)
    call print
    pop rax
    call print_dec
    mov esi, LIN(crlf)
    jmp print
.wrong:
    mov esi, LIN(msg_wrong)
    jmp print

; Wait until the application processors' starts add up to RAX (or a
; second passes), then 20 ms for more.
wait_starts:
    mov r13, rax
    mov eax, 1000
    call deadline_in
.wait:
    mov rax, [starts + 8]
    add rax, [starts + 16]
    add rax, [starts + 24]
    cmp rax, r13
    jae .settle
    call deadline_passed
    jnc .wait
.settle:
    mov eax, 20
    jmp wait_ms

; Print "smp ipi starts <RSI>: " and each CPU's starts.
print_starts:
    push rsi
    mov esi, LIN(msg_starts)
    call print
    pop rsi
    call print
    mov esi, LIN(msg_colon)
    call print
    xor ecx, ecx
.cpu:
    mov al, ' '
    mov dx, 0x3f8
    out dx, al
    mov rax, [starts + rcx * 8]
    call print_dec
    inc ecx
    cmp ecx, 4
    jb .cpu
    mov esi, LIN(crlf)
    jmp print

; Run the cases at RSI until the terminator.
run_cases:
    mov eax, [rsi]
    mov edx, [rsi + 4]
    mov ebx, edx
    shl rbx, 32
    or rbx, rax
    test rbx, rbx
    jz .end
    movzx r12d, byte [rsi + 8]      ; sender
    movzx r13d, byte [rsi + 9]      ; vector counted
    movzx r14d, byte [rsi + 10]     ; arrivals expected
    add rsi, 11
    test edx, 1
    jz .ipi
    call command                    ; a register write: nothing to count
    inc rsi                         ; its empty name
    jmp run_cases
.ipi:
    ; Each CPU's count before.
    xor ecx, ecx
.snap:
    mov rdi, rcx
    shl rdi, 11
    mov rax, [CPU_COUNTS + rdi + r13 * 8]
    mov [before + rcx * 8], rax
    inc ecx
    cmp ecx, 4
    jb .snap
    call command
    mov eax, 1000
    call deadline_in
.wait:
    call arrivals
    cmp rax, r14
    jae .settle
    call deadline_passed
    jnc .wait
.settle:
    ; Time for anything more to land (a second copy must show).
    mov eax, 20
    call wait_ms
    push rsi
    mov esi, LIN(msg_case)
    call print
    pop rsi
    call print                      ; the name; RSI is past it after
    push rsi
    mov esi, LIN(msg_colon)
    call print
    xor ecx, ecx
.cpu:
    mov al, ' '
    mov dx, 0x3f8
    out dx, al
    mov rdi, rcx
    shl rdi, 11
    mov rax, [CPU_COUNTS + rdi + r13 * 8]
    sub rax, [before + rcx * 8]
    call print_dec
    inc ecx
    cmp ecx, 4
    jb .cpu
    mov esi, LIN(crlf)
    call print
    pop rsi
    jmp run_cases
.end:
    ret

; RAX = the arrivals of vector R13 on CPUs 0-3 since the snapshot.
arrivals:
    push rcx
    push rdi
    xor eax, eax
    xor ecx, ecx
.cpu:
    mov rdi, rcx
    shl rdi, 11
    add rax, [CPU_COUNTS + rdi + r13 * 8]
    sub rax, [before + rcx * 8]
    inc ecx
    cmp ecx, 4
    jb .cpu
    pop rdi
    pop rcx
    ret

; Carry out command RBX on CPU R12: this CPU directly, another through its
; mailbox and the doorbell, waiting (up to a second) until it took it.
command:
    test r12d, r12d
    jnz .remote
    mov rax, rbx
    jmp execute
.remote:
    mov [mailbox + r12 * 8], rbx
    mov edi, LAPIC
    mov eax, r12d
    shl eax, 24
    mov [rdi + 0x310], eax
    mov dword [rdi + 0x300], IPI_FIXED | DOORBELL
    mov eax, 1000
    call deadline_in
.wait:
    cmp qword [mailbox + r12 * 8], 0
    je .done
    call deadline_passed
    jnc .wait
.done:
    ret

; Carry out command RAX here: bit 32 clear, an IPI (ICR high in the upper
; half, ICR low in the lower); set, a write of the lower half to the local
; APIC register at bits 43:36.
execute:
    push rcx
    push rdx
    push rdi
    mov rdx, rax
    shr rdx, 32
    mov edi, LAPIC
    test edx, 1
    jnz .reg
    mov [rdi + 0x310], edx
    mov [rdi + 0x300], eax
    jmp .done
.reg:
    mov ecx, edx
    shr ecx, 8
    and ecx, 0xff0
    mov [rdi + rcx], eax
.done:
    pop rdi
    pop rdx
    pop rcx
    ret

; An application processor (R15 = its APIC ID): sleep until the doorbell,
; carry out what its mailbox holds, empty it, sleep again.
ap_main:
    cli
    mov rax, [mailbox + r15 * 8]
    test rax, rax
    jnz .work
    sti
    hlt
    jmp ap_main
.work:
    call execute
    mov qword [mailbox + r15 * 8], 0
    jmp ap_main

msg_started: db "smp ipi: ", 0
msg_of:      db " of ", 0
msg_cpus:    db " cpus started", 13, 10, 0
msg_case:    db "smp ipi ", 0
msg_starts:  db "smp ipi starts ", 0
msg_colon:   db ":", 0
msg_init_one: db "init 1 to 3, start-up to 2 and 3", 0
msg_init_all: db "init and start-up to all excluding self", 0
msg_done:    db "smp ipi: done, stray vectors ", 0
msg_wrong:   db "smp ipi: this program wants 4 CPUs", 13, 10, 0

    IMAGE_END
