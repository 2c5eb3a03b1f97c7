; An ICR storm, on a whole PC (pc_*): with interrupts open the program
; writes the local APIC's ICR 16,384 times, IPIs to itself and others with
; every destination shorthand (none, self, all including self, all
; excluding self), every delivery mode (fixed, lowest priority, SMI,
; reserved, NMI, INIT (as a level de-assert), start-up, ExtINT), every
; vector 0-255, in physical
; and logical destination mode. Vectors 0-15 must never reach the IDT (a
; send-illegal-vector error in ESR instead); the rest are taken and EOIed.
; One line:
;   icr storm: 16384 IPIs sent, interrupts taken <n>, nmis <n>, low vectors 0, esr <hex>
; then an ACPI power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"

sent equ vars + 128

test_main:
    call pic_off
    call lapic_on
    call read_esr
    mov qword [sent], 0
    mov ebx, LAPIC
    sti
    xor r8d, r8d                ; destination mode (bit 11)
.dm:
    xor r9d, r9d                ; shorthand
.shorthand:
    xor r10d, r10d              ; delivery mode
.mode:
    xor r11d, r11d              ; vector
.vector:
    ; Physical: APIC 0 (this CPU); logical: every CPU (flat mask FFh).
    mov eax, 0
    test r8d, r8d
    jz .dest
    mov eax, 0xff00_0000
.dest:
    mov [rbx + 0x310], eax
    mov eax, r11d
    mov ecx, r10d
    shl ecx, 8
    or eax, ecx
    mov ecx, r9d
    shl ecx, 18
    or eax, ecx
    or eax, r8d
    or eax, 1 << 14             ; level: assert
    cmp r10d, 5
    jne .send
    ; INIT as a level de-assert (level 0, level-triggered), which only
    ; resynchronises arbitration IDs: an INIT that reached this CPU would
    ; start it again at the reset vector (pc_diff_init shows that).
    xor eax, (1 << 14) | (1 << 15)
.send:
    mov [rbx + 0x300], eax
    inc qword [sent]
    inc r11d
    cmp r11d, 256
    jb .vector
    inc r10d
    cmp r10d, 8
    jb .mode
    inc r9d
    cmp r9d, 4
    jb .shorthand
    add r8d, 1 << 11
    cmp r8d, 2 << 11
    jb .dm
    ; Let the last ones land.
    call tsc_per_ms
    call spin_ticks
    cli
    call read_esr
    mov [scratch], rax

    mov esi, LIN(msg_sent)
    call print
    mov rax, [sent]
    call print_dec
    mov esi, LIN(msg_taken)
    call print
    xor eax, eax
    mov ecx, 16
.sum:
    add rax, [counts + rcx * 8]
    inc ecx
    cmp ecx, 255                ; FFh is the spurious vector
    jb .sum
    call print_dec
    mov esi, LIN(msg_nmis)
    call print
    mov rax, [counts + 2 * 8]
    call print_dec
    mov esi, LIN(msg_low)
    call print
    xor eax, eax
    xor ecx, ecx
.low:
    cmp ecx, 2
    je .skip
    add rax, [counts + rcx * 8]
.skip:
    inc ecx
    cmp ecx, 16
    jb .low
    call print_dec
    mov esi, LIN(msg_esr)
    call print
    mov rax, [scratch]
    call print_hex8
    mov esi, LIN(crlf)
    jmp print

msg_sent:  db "icr storm: ", 0
msg_taken: db " IPIs sent, interrupts taken ", 0
msg_nmis:  db ", nmis ", 0
msg_low:   db ", low vectors ", 0
msg_esr:   db ", esr ", 0

    IMAGE_END
