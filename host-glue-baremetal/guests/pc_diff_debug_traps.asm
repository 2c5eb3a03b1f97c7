; Differential: debug traps on accesses a VMM carries out itself.
;  - a read/write data breakpoint (DR0, 4 bytes) on the LAPIC version
;    register, hit by a read (MMIO, emulated);
;  - a write-only breakpoint (DR1, 1 byte) on the TPR: a read does not
;    hit it, a dword write does;
;  - an I/O breakpoint (DR2, CR4.DE) on port 0x80: OUT 0x80 hits it, OUT
;    0x81 does not; an 8-byte data breakpoint (DR3) on RAM, which the CPU
;    itself checks;
;  - with RFLAGS.TF: MOV SS loading a null selector from the TPR (MMIO),
;    whose single-step trap waits until after the next instruction.
; (Open bus is not compared here: plain QEMU reads unassigned memory as
; zeros, hardware and the VMM as all-ones; mmio_integer.asm checks it.)
; The #DB handler logs where each trap arrived and DR6 (reset to
; 0xffff0ff0 after each); the log is printed as
;   #DB after <label> dr6 <hex>
; then `debug traps: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"
%include "diff_labels.inc"

nlog   equ vars + 128       ; entries in the log
logbuf equ 0x22000          ; 16 bytes an entry: RIP, DR6
ramvar equ 0x23100          ; an 8-byte variable DR3 watches

db_handler:
    push rax
    push rbx
    push rcx
    mov rbx, dr6
    mov rax, [rsp + 24]
    mov rcx, [nlog]
    cmp rcx, 64
    jae .full
    shl rcx, 4
    mov [logbuf + rcx], rax
    mov [logbuf + rcx + 8], rbx
    inc qword [nlog]
.full:
    mov eax, 0xffff0ff0
    mov dr6, rax
    pop rcx
    pop rbx
    pop rax
    iretq

test_main:
    call pm_on
    call pic_off
    call lapic_on
    mov qword [nlog], 0
    mov ebx, 1
    mov rax, LIN(db_handler)
    call set_gate
    mov eax, 0xffff0ff0
    mov dr6, rax
    mov ebx, LAPIC
    mov dword [rbx + 0x80], 0
    ; CR4.DE for I/O breakpoints.
    mov rax, cr4
    or eax, 1 << 3
    mov cr4, rax
    ; DR0: LAPIC version, R/W 11, LEN 11 (4 bytes).
    lea rax, [rbx + 0x30]
    mov dr0, rax
    ; DR1: TPR, R/W 01 (writes), LEN 00 (1 byte).
    lea rax, [rbx + 0x80]
    mov dr1, rax
    ; DR2: port 0x80, R/W 10 (I/O), LEN 00.
    mov eax, 0x80
    mov dr2, rax
    ; DR3: ramvar, R/W 11, LEN 10 (8 bytes).
    mov eax, ramvar
    mov dr3, rax
    ; R/W0=11 LEN0=11, R/W1=01 LEN1=00, R/W2=10 LEN2=00, R/W3=11 LEN3=10
    mov eax, (0b1111 << 16) | (0b0001 << 20) | (0b0010 << 24) | (0b1011 << 28) | 0x5ff
    mov dr7, rax
    mov eax, [rbx + 0x30]
a_version_read:
    mov eax, [rbx + 0x80]
a_tpr_read:
    mov dword [rbx + 0x80], 0
a_tpr_write:
    out 0x80, al
a_out_80:
    out 0x81, al
a_out_81:
    mov dword [ramvar + 4], 1
a_ram_write:
    xor eax, eax
    mov dr7, rax
a_dr7_off:
    ; MOV SS from MMIO under TF: the trap comes after the NOP.
    mov cx, ss
    pushfq
    or qword [rsp], 0x100
    popfq
b_popf:
    mov ss, [rbx + 0x80]
b_mov_ss:
    nop
b_nop:
    mov ss, cx
b_mov_ss_cx:
    nop
b_nop2:
    pushfq
b_pushf:
    and qword [rsp], ~0x100
b_and:
    popfq
b_popf_off:
    ; The log.
    xor ecx, ecx
.print:
    cmp rcx, [nlog]
    jae .printed
    mov rbx, rcx
    shl rbx, 4
    mov esi, LIN(msg_db)
    call print
    mov rax, [logbuf + rbx]
    call name_of
    call print
    mov esi, LIN(msg_dr6)
    call print
    mov rax, [logbuf + rbx + 8]
    call print_hex64
    mov esi, LIN(crlf)
    call print
    inc ecx
    jmp .print
.printed:
    mov esi, LIN(msg_done)
    jmp say

    align 8
labels:
    LABEL a_version_read
    LABEL a_tpr_read
    LABEL a_tpr_write
    LABEL a_out_80
    LABEL a_out_81
    LABEL a_ram_write
    LABEL a_dr7_off
    LABEL b_popf
    LABEL b_mov_ss
    LABEL b_nop
    LABEL b_mov_ss_cx
    LABEL b_nop2
    LABEL b_pushf
    LABEL b_and
    LABEL b_popf_off
    dq 0

msg_db:      db "#DB after ", 0
msg_dr6:     db " dr6 ", 0
msg_done:    db "debug traps: done", 0

    IMAGE_END
