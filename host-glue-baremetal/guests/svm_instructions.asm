; Execute every SVM instruction from 32-bit protected mode at CPL 0, where
; the CPU would really run them (the guest's EFER.SVME is set, as VMRUN
; requires) unless the VMM intercepts them. Each must exit to the VMM and
; come back as #UD inside the guest. An IDT #UD handler counts them and
; skips the 3-byte instruction; the guest prints the count and powers off.
bits 16
org 0

%define LIN(x) (0xf0000 + (x))
count equ 0x500
idt   equ 0x1000

start:
    jmp 0xf000:main
main:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    cs lgdt [gdt_ptr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:LIN(pm32)

bits 32
pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7c00
    ; IDT entry 6 (#UD): interrupt gate to ud_handler.
    mov eax, LIN(ud_handler)
    mov word [idt + 6 * 8], ax
    mov word [idt + 6 * 8 + 2], 0x08
    mov word [idt + 6 * 8 + 4], 0x8e00
    shr eax, 16
    mov word [idt + 6 * 8 + 6], ax
    lidt [LIN(idt_ptr)]
    mov byte [count], 0
    ; VMRUN, VMLOAD and VMSAVE check rAX (a page-aligned physical address)
    ; before the intercept: give them one, so they reach the VMM.
    mov eax, 0x2000

    db 0x0f, 0x01, 0xd8     ; vmrun
    db 0x0f, 0x01, 0xd9     ; vmmcall
    db 0x0f, 0x01, 0xda     ; vmload
    db 0x0f, 0x01, 0xdb     ; vmsave
    db 0x0f, 0x01, 0xdc     ; stgi
    db 0x0f, 0x01, 0xdd     ; clgi
    db 0x0f, 0x01, 0xde     ; skinit
    db 0x0f, 0x01, 0xdf     ; invlpga

    mov dx, 0x3f8
    mov esi, LIN(message)
    call print
    mov al, [count]
    add al, '0'
    out dx, al
    mov esi, LIN(tail)
    call print
    mov dx, 0xb004          ; ACPI PM1a_CNT: SLP_EN, S5
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

print:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp print
.done:
    ret

ud_handler:
    add dword [esp], 3      ; every SVM instruction is 3 bytes long
    inc byte [count]
    iretd

    align 8
gdt:
    dq 0
    dq 0x00cf9b000000ffff   ; 0x08: flat 32-bit code (accessed bit preset:
                            ; the GDT is in ROM, which the CPU cannot write)
    dq 0x00cf93000000ffff   ; 0x10: flat data (accessed)
gdt_ptr:
    dw 23
    dd LIN(gdt)
idt_ptr:
    dw 256 * 8 - 1
    dd idt

message:
    db "SVM instructions raised #UD ", 0
tail:
    db " times in protected mode", 13, 10, 0

bits 16
    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
