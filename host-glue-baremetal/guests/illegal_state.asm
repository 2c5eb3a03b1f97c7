; Guest-controlled state must never make VM entry fail. In 32-bit
; protected mode with paging on (no PAE), the guest tries writes that
; hardware refuses with #GP, each of which (carried out naively by a VMM)
; would leave a VMCB/VMCS that VMRUN or VM entry rejects:
;  1. WRMSR EFER.LME while paging is on without PAE,
;  2. WRMSR EFER with a reserved bit (bit 2),
;  3. WRMSR EFER.SVME (the VMM's own bit),
;  4. MOV CR4 with a reserved bit (bit 31),
; then checks EFER still reads 0 and prints one line:
;   illegal state: 4 of 4 writes refused with #GP, EFER 00000000
; and powers off. A VMM that let one through fails VM entry instead.
; (Illegal CR0 values are the CPU's to refuse under nested paging, the
; VMM's under shadow paging: see the shadow-paging unit tests. QEMU's TCG
; does not refuse CR0.NW without CR0.CD, so they are not tried here.)
bits 16
org 0
%include "pm32_entry.inc"
count    equ 0x500
skip     equ 0x504
idt      equ 0x1000
pd       equ 0x2000

    PM32_ENTRY
    ; #GP gate (vector 13) to gp_handler.
    mov eax, LIN(gp_handler)
    mov word [idt + 13 * 8], ax
    mov word [idt + 13 * 8 + 2], 0x08
    mov word [idt + 13 * 8 + 4], 0x8e00
    shr eax, 16
    mov word [idt + 13 * 8 + 6], ax
    lidt [LIN(idt_ptr)]
    ; 4 MiB pages identity-mapping the first 4 GiB (PSE).
    mov edi, pd
    mov eax, 0x83
    mov ecx, 1024
.fill:
    mov [edi], eax
    add eax, 0x40_0000
    add edi, 4
    loop .fill
    mov eax, cr4
    or eax, 1 << 4          ; PSE
    mov cr4, eax
    mov eax, pd
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    mov dword [count], 0

    ; 1. EFER.LME with paging on and PAE off.
    mov dword [skip], 2
    mov ecx, 0xc000_0080
    xor edx, edx
    mov eax, 1 << 8
    wrmsr
    ; 2. A reserved EFER bit.
    mov dword [skip], 2
    mov eax, 1 << 2
    wrmsr
    ; 3. EFER.SVME.
    mov dword [skip], 2
    mov eax, 1 << 12
    wrmsr
    ; 4. A reserved CR4 bit.
    mov dword [skip], 3
    mov eax, cr4
    or eax, 1 << 31
    mov cr4, eax

    mov ecx, 0xc000_0080
    rdmsr
    mov ebx, eax
    mov esi, LIN(msg_head)
    call print
    mov al, [count]
    add al, '0'
    out dx, al
    mov esi, LIN(msg_mid)
    call print
    mov eax, ebx
    call print_hex32
    mov esi, LIN(crlf)
    call print
    mov dx, 0xb004
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

; #GP: count it and skip the faulting instruction ([skip] bytes).
gp_handler:
    add esp, 4              ; error code
    push eax
    mov eax, [skip]
    add [esp + 4], eax
    pop eax
    inc dword [count]
    iret

print:
    push eax
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop eax
    ret

print_hex32:
    push ecx
    mov ecx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '9' - 1
.out:
    out dx, al
    pop eax
    loop .digit
    pop ecx
    ret

    PM32_GDT
idt_ptr:
    dw 256 * 8 - 1
    dd idt

msg_head:
    db "illegal state: ", 0
msg_mid:
    db " of 4 writes refused with #GP, EFER ", 0
crlf:
    db 13, 10, 0

    RESET_VECTOR
