; Differential: single-step (RFLAGS.TF) over instructions a VMM may carry
; out itself: IN, OUT, CPUID, RDMSR/WRMSR (APIC_BASE, EFER), OUT right after
; MOV SS (which holds the trap of its own step), MMIO reads of
; the VGA hole and of the LAPIC, STI;HLT with a self-IPI pending (taken
; where it comes; when before the HLT, its handler resumes past the HLT),
; and STI;HLT woken later by the LAPIC timer. (Not REP string I/O: QEMU's
; TCG traps once more than hardware, at the iteration that finds RCX 0.) The #DB handler logs where each
; trap arrived (the label after the instruction) and DR6, the interrupt
; handlers where they interrupted; then it prints the log in order:
;   #DB after <label> dr6 <hex>
;   interrupt <vector>h returns to <label>
; and `single step: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"
%include "diff_labels.inc"

nlog   equ vars + 128       ; entries in the log
logbuf equ 0x22000          ; 16 bytes an entry: RIP, DR6

db_handler:
    push rax
    push rbx
    mov rbx, dr6
    mov rax, [rsp + 16]
    call log_entry
    mov eax, 0xffff0ff0
    mov dr6, rax
    mov rax, [rsp + 16]
    cmp rax, LIN(stop_stepping)
    jb .keep
    and qword [rsp + 32], ~0x100
.keep:
    pop rbx
    pop rax
    iretq

; Log an entry: RIP RAX, value RBX (DR6, or the vector of an interrupt).
log_entry:
    push rcx
    mov rcx, [nlog]
    cmp rcx, 200
    jae .full
    shl rcx, 4
    mov [logbuf + rcx], rax
    mov [logbuf + rcx + 8], rbx
    inc qword [nlog]
.full:
    pop rcx
    ret

irq_handler:
    push rax
    push rbx
    mov rax, [rsp + 16]
    mov ebx, 0x41
    call log_entry
    pop rbx
    ; Taken before the HLT ran (the #DB after STI opened the shadow):
    ; resume past it, or nothing would wake it.
    cmp rax, LIN(a_sti)
    jne .eoi
    mov qword [rsp + 8], LIN(a_hlt)
.eoi:
    mov eax, LAPIC
    mov dword [rax + 0xb0], 0
    pop rax
    iretq

; The timer: before the HLT ran (the host ran another VM for longer than
; the timer's 10 ms), it is armed again and not logged.
timer_handler:
    push rax
    push rbx
    mov rax, [rsp + 16]
    cmp rax, LIN(b_sti)
    jne .log
    mov ebx, LAPIC
    mov dword [rbx + 0x380], 10_000_000
    jmp .logged
.log:
    mov ebx, 0x42
    call log_entry
.logged:
    pop rbx
    mov eax, LAPIC
    mov dword [rax + 0xb0], 0
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
    mov ebx, 0x41
    mov rax, LIN(irq_handler)
    call set_gate
    mov ebx, 0x42
    mov rax, LIN(timer_handler)
    call set_gate
    mov eax, 0xffff0ff0
    mov dr6, rax
    cli
    ; A self-IPI, vector 41h, held while IF is clear.
    mov ebx, LAPIC
    mov dword [rbx + 0x310], 0
    mov dword [rbx + 0x300], 0x4041
    mov rsi, LIN(out_bytes)
    pushfq
    or qword [rsp], 0x100
    popfq
a_popf:
    nop
a_nop:
    mov dx, 0x3fd
a_mov_dx:
    in al, dx
a_in:
    out 0x80, al
a_out:
    xor eax, eax
a_xor:
    cpuid
a_cpuid:
    mov ecx, 0x1b
a_mov_ecx:
    rdmsr
a_rdmsr_apic_base:
    mov ecx, 0xc000_0080
a_mov_ecx2:
    rdmsr
a_rdmsr_efer:
    wrmsr
a_wrmsr_efer:
    mov ax, ss
a_mov_ax_ss:
    mov ss, ax
a_mov_ss:
    out 0x80, al
a_out_after_mov_ss:
    mov ebx, 0xa0000
a_mov_ebx:
    mov eax, [rbx]
a_vga_read:
    mov ebx, LAPIC
a_mov_ebx2:
    mov eax, [rbx + 0x30]
a_lapic_read:
    sti
a_sti:
    hlt
a_hlt:
    nop
a_last:
    pushfq
a_pushf:
    and qword [rsp], ~0x100
a_and:
    popfq
a_popf_off:
    cli
    ; STI;HLT again, now woken by the LAPIC timer (one-shot, vector 42h,
    ; 10 ms at the 1 GHz bus both count at) long after the HLT began.
    mov ebx, LAPIC
    mov dword [rbx + 0x3e0], 0xb
    mov dword [rbx + 0x320], 0x42
    mov dword [rbx + 0x380], 10_000_000
    pushfq
    or qword [rsp], 0x100
    popfq
b_popf:
    sti
b_sti:
    hlt
b_hlt:
stop_stepping:
    nop
b_last:
    cli
    ; The log.
    xor ecx, ecx
.print:
    cmp rcx, [nlog]
    jae .printed
    mov rbx, rcx
    shl rbx, 4
    cmp qword [logbuf + rbx + 8], 0x100
    jb .interrupt
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
    jmp .entry_done
.interrupt:
    mov esi, LIN(msg_int)
    call print
    mov rax, [logbuf + rbx + 8]
    call print_hex8
    mov esi, LIN(msg_to)
    call print
    mov rax, [logbuf + rbx]
    call name_of
    call say
.entry_done:
    inc ecx
    jmp .print
.printed:
    mov esi, LIN(msg_done)
    jmp say

out_bytes: db 0, 0, 0, 0

    align 8
labels:
    LABEL a_popf
    LABEL a_nop
    LABEL a_mov_dx
    LABEL a_in
    LABEL a_out
    LABEL a_xor
    LABEL a_cpuid
    LABEL a_mov_ecx
    LABEL a_rdmsr_apic_base
    LABEL a_mov_ecx2
    LABEL a_rdmsr_efer
    LABEL a_wrmsr_efer
    LABEL a_mov_ax_ss
    LABEL a_mov_ss
    LABEL a_out_after_mov_ss
    LABEL a_mov_ebx
    LABEL a_vga_read
    LABEL a_mov_ebx2
    LABEL a_lapic_read
    LABEL b_popf
    LABEL b_sti
    LABEL b_hlt
    LABEL b_last
    LABEL a_sti
    LABEL a_hlt
    LABEL a_last
    LABEL a_pushf
    LABEL a_and
    LABEL a_popf_off
    dq 0

msg_db:      db "#DB after ", 0
msg_dr6:     db " dr6 ", 0
msg_int:     db "interrupt ", 0
msg_to:      db "h returns to ", 0
msg_done:    db "single step: done", 0

    IMAGE_END
