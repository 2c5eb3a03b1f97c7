; Differential: faults during the delivery of a fault become a double
; fault (#DF, error code 0). With the #GP gate not present, a #GP raised
; by the CPU (a non-canonical load) and one the VMM's emulator raises (a
; MOVSB from the VGA hole to a non-canonical address) each meet a #NP while being delivered: #DF. A #PF
; whose handler stack (IST2) is not mapped faults again pushing its frame:
; #DF, with CR2 the address of that push. The #DF handler (IST1) resumes
; after the probe; one line per case:
;   <case>: vector <v> error <e> [cr2 <a>]
; then `double fault: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

; The present bit of IDT gate RBX: clear (AL 0) or set (AL 1).
gate_present:
    push rdi
    mov rdi, rbx
    shl rdi, 4
    add rdi, idt
    and byte [rdi + 5], 0x7f
    shl al, 7
    or [rdi + 5], al
    pop rdi
    ret

; Print RSI, then the last exception's vector and error code.
report:
    call print
    mov esi, LIN(msg_vector)
    call print
    mov rax, [last_vec]
    call print_hex8
    mov esi, LIN(msg_error)
    call print
    mov rax, [last_err]
    call print_hex32
    ret

test_main:
    call pm_on
    call pic_off
    call lapic_on

    ; #GP by the CPU, #GP gate not present.
    mov ebx, 13
    xor eax, eax
    call gate_present
    mov rax, LIN(.after_gp)
    call arm
    mov rax, 0x8000_0000_0000_0000
    mov eax, [rax]
.after_gp:
    mov esi, LIN(msg_gp_cpu)
    call report
    mov esi, LIN(crlf)
    call print

    ; #GP by the VMM's emulator (MOVSB from the VGA hole to a
    ; non-canonical RDI), #GP gate not present.
    mov rax, LIN(.after_wrmsr)
    call arm
    mov esi, 0xa0000
    mov rdi, 0x8000_0000_0000_0000
    movsb
.after_wrmsr:
    mov esi, LIN(msg_gp_vmm)
    call report
    mov esi, LIN(crlf)
    call print
    mov ebx, 13
    mov al, 1
    call gate_present

    ; #PF with its IST2 stack not mapped (1 GiB up is not).
    mov qword [tss + 0x2c], 0x4000_1000
    mov byte [idt + 14 * 16 + 4], 2
    mov rax, LIN(.after_pf)
    call arm
    mov rax, 0x4000_0000
    mov eax, [rax]
.after_pf:
    mov esi, LIN(msg_pf)
    call report
    mov esi, LIN(msg_cr2)
    call print
    mov rax, cr2
    call print_hex64
    mov esi, LIN(crlf)
    call print
    mov byte [idt + 14 * 16 + 4], 1

    mov esi, LIN(msg_done)
    jmp say

msg_gp_cpu: db "#GP (cpu) with the #GP gate not present", 0
msg_gp_vmm: db "#GP (movsb from mmio) with the #GP gate not present", 0
msg_pf:     db "#PF with its stack not mapped", 0
msg_vector: db ": vector ", 0
msg_error:  db " error ", 0
msg_cr2:    db " cr2 ", 0
msg_done:   db "double fault: done", 0

    IMAGE_END
