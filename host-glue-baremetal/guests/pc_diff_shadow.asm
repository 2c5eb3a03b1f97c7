; Differential: the interrupt shadow of STI. With a self-IPI (vector 41h)
; held while IF is clear, STI opens interrupts after the next instruction:
; a NOP run by the CPU, or one the VMM carries out (OUT, IN, CPUID, RDMSR,
; an MMIO read of the LAPIC). The handler records where it interrupted;
; one line per case:
;   interrupt returns to <label>
; (the label after the instruction in the shadow), then `shadow: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

irq_at equ vars + 128

irq_handler:
    push rax
    mov rax, [rsp + 8]
    mov [irq_at], rax
    mov eax, LAPIC
    mov dword [rax + 0xb0], 0
    pop rax
    iretq

; IF clear, a self-IPI 41h pending, RBX = LAPIC.
arm_ipi:
    cli
    mov qword [irq_at], 0
    mov ebx, LAPIC
    mov dword [rbx + 0x310], 0
    mov dword [rbx + 0x300], 0x4041
    ret

; Print where the interrupt came back to.
report:
    cli
    mov esi, LIN(msg_ret)
    call print
    mov rax, [irq_at]
    push rbx
    mov ebx, LIN(labels)
.next:
    cmp qword [rbx], 0
    je .unknown
    cmp [rbx], rax
    je .found
    add ebx, 32
    jmp .next
.found:
    lea esi, [rbx + 8]
    jmp .say
.unknown:
    mov esi, LIN(msg_unknown)
.say:
    pop rbx
    jmp say

test_main:
    call pm_on
    call pic_off
    call lapic_on
    mov ebx, 0x41
    mov rax, LIN(irq_handler)
    call set_gate

    call arm_ipi
    sti
    nop
sti_nop:
    nop
sti_nop_nop:
    call report

    call arm_ipi
    sti
    out 0x80, al
sti_out:
    nop
sti_out_nop:
    call report

    call arm_ipi
    mov dx, 0x3fd
    sti
    in al, dx
sti_in:
    nop
sti_in_nop:
    call report

    call arm_ipi
    xor eax, eax
    sti
    cpuid
sti_cpuid:
    nop
sti_cpuid_nop:
    call report

    call arm_ipi
    mov ecx, 0x1b
    sti
    rdmsr
sti_rdmsr:
    nop
sti_rdmsr_nop:
    call report

    call arm_ipi
    sti
    mov eax, [rbx + 0x30]
sti_mmio:
    nop
sti_mmio_nop:
    call report

    mov esi, LIN(msg_done)
    jmp say

%macro LABEL 1
    dq LIN(%1)
    db %str(%1), 0
    times 24 - %strlen(%str(%1)) - 1 db 0
%endmacro
    align 8
labels:
    LABEL sti_nop
    LABEL sti_nop_nop
    LABEL sti_out
    LABEL sti_out_nop
    LABEL sti_in
    LABEL sti_in_nop
    LABEL sti_cpuid
    LABEL sti_cpuid_nop
    LABEL sti_rdmsr
    LABEL sti_rdmsr_nop
    LABEL sti_mmio
    LABEL sti_mmio_nop
    dq 0

msg_ret:     db "interrupt returns to ", 0
msg_unknown: db "?", 0
msg_done:    db "shadow: done", 0

    IMAGE_END
