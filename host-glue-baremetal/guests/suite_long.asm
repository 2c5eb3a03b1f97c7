; Guest-suite program, 64-bit long mode. From real mode it builds page
; tables identity-mapping the first 1 GiB with 2 MiB pages and the 2 MiB
; at 0xFEC00000, enables PAE, sets EFER.LME (WRMSR, emulated by the VMM),
; turns on paging (the VMM sets EFER.LMA) and jumps to a 64-bit segment.
; Checks, one line each on COM1:
;  - long mode entered: EFER (RDMSR) reads with LME and LMA set,
;  - MMIO through the emulator with the guest's page tables: a qword from
;    the VGA hole and from 0xFEC00000 read all ones; a write to the ROM is
;    dropped,
;  - interrupts through a 64-bit IDT: INT 80h, #GP with error code for an
;    unknown MSR, #UD for VMCALL,
;  - CPUID: the hypervisor vendor leaf.
; Then powers off through ACPI.
bits 16
org 0

%define LIN(x) (0xf0000 + (x))
counters equ 0x500          ; int80, gp, ud counts; gp error code at +8
idt      equ 0x1000         ; 256 16-byte gates
pml4     equ 0x10000
pdpt     equ 0x11000
pd_low   equ 0x12000
pd_high  equ 0x13000

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
    ; Clear the four tables.
    mov edi, pml4
    mov ecx, 4 * 4096 / 4
    xor eax, eax
    cld
    rep stosd
    mov dword [pml4], pdpt | 3
    mov dword [pdpt], pd_low | 3
    mov dword [pdpt + 3 * 8], pd_high | 3
    ; 512 x 2 MiB for the first 1 GiB.
    mov edi, pd_low
    mov eax, 0x83           ; P | RW | PS
    mov ecx, 512
.fill:
    mov [edi], eax
    add eax, 0x20_0000
    add edi, 8
    loop .fill
    ; 0xFEC00000: entry 0x1f6 of the PD for 3-4 GiB.
    mov dword [pd_high + 0x1f6 * 8], 0xfec0_0000 | 0x83
    mov eax, cr4
    or eax, 1 << 5          ; PAE
    mov cr4, eax
    mov eax, pml4
    mov cr3, eax
    mov ecx, 0xc000_0080    ; EFER.LME
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31         ; PG: long mode becomes active
    mov cr0, eax
    jmp 0x18:LIN(lm64)

bits 64
lm64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, 0x7c00
    mov ebx, 6
    mov rax, LIN(ud_handler)
    call set_gate
    mov ebx, 13
    mov rax, LIN(gp_handler)
    call set_gate
    mov ebx, 0x80
    mov rax, LIN(int80_handler)
    call set_gate
    lidt [LIN(idt_ptr)]
    mov qword [counters], 0
    mov qword [counters + 8], 0xffff

    mov ecx, 0xc000_0080
    rdmsr
    shr eax, 8
    and eax, 0b101          ; LME (bit 0 now), LMA (bit 2 now)
    mov esi, LIN(msg_entered)
    call print
    call print_hex8
    mov esi, LIN(crlf)
    call print

    ; MMIO through the page tables.
    mov qword [0xa0000], 0x1234
    mov rax, [0xa0000]
    mov [counters + 16], rax
    mov rbx, 0xfec0_0000    ; above 2 GiB: not a disp32
    mov rax, [rbx]
    mov [counters + 24], rax
    mov byte [LIN(rom_probe)], 0x55
    mov esi, LIN(msg_mmio)
    call print
    mov rax, [counters + 16]
    call print_hex64
    mov esi, LIN(msg_high)
    call print
    mov rax, [counters + 24]
    call print_hex64
    mov esi, LIN(msg_rom)
    call print
    mov al, [LIN(rom_probe)]
    call print_hex8
    mov esi, LIN(crlf)
    call print

    ; Interrupts.
    int 0x80
    mov ecx, 0x4000_0fff
    rdmsr
    vmcall
    mov esi, LIN(msg_int)
    call print
    mov al, [counters]
    call print_hex8
    mov esi, LIN(msg_gp)
    call print
    mov al, [counters + 1]
    call print_hex8
    mov esi, LIN(msg_gp_code)
    call print
    mov rax, [counters + 8]
    call print_hex64
    mov esi, LIN(msg_ud)
    call print
    mov al, [counters + 2]
    call print_hex8
    mov esi, LIN(crlf)
    call print

    mov eax, 0x4000_0000
    cpuid
    mov [0x600], ebx
    mov [0x604], ecx
    mov [0x608], edx
    mov byte [0x60c], 0
    mov esi, LIN(msg_cpuid)
    call print
    mov esi, 0x600
    call print
    mov esi, LIN(quote_crlf)
    call print

    mov dx, 0xb004
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

; IDT entry RBX: a 64-bit interrupt gate to RAX.
set_gate:
    shl rbx, 4
    mov word [idt + rbx], ax
    mov word [idt + rbx + 2], 0x18
    mov word [idt + rbx + 4], 0x8e00
    shr rax, 16
    mov word [idt + rbx + 6], ax
    shr rax, 16
    mov dword [idt + rbx + 8], eax
    mov dword [idt + rbx + 12], 0
    ret

print:
    push rdx
    push rax
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop rax
    pop rdx
    ret

print_hex64:
    push rax
    shr rax, 32
    call print_hex32
    pop rax
print_hex32:
    push rax
    shr eax, 24
    call print_hex8
    mov rax, [rsp]
    shr eax, 16
    call print_hex8
    mov rax, [rsp]
    shr eax, 8
    call print_hex8
    pop rax
    call print_hex8
    ret

print_hex8:
    push rax
    push rbx
    push rdx
    mov dx, 0x3f8
    mov bl, al
    shr al, 4
    call .digit
    mov al, bl
    call .digit
    pop rdx
    pop rbx
    pop rax
    ret
.digit:
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '9' - 1
.out:
    out dx, al
    ret

int80_handler:
    inc byte [counters]
    iretq

; #GP: record the error code, skip the 2-byte RDMSR.
gp_handler:
    pop qword [counters + 8]
    add qword [rsp], 2
    inc byte [counters + 1]
    iretq

; #UD: skip the 3-byte VMCALL.
ud_handler:
    add qword [rsp], 3
    inc byte [counters + 2]
    iretq

    align 8
gdt:
    dq 0
    dq 0x00cf9b000000ffff   ; 0x08: 32-bit code, flat (accessed: the CPU never writes the ROM)
    dq 0x00cf93000000ffff   ; 0x10: data, flat, accessed
    dq 0x00af9b000000ffff   ; 0x18: 64-bit code, accessed
gdt_ptr:
    dw gdt_ptr - gdt - 1
    dd LIN(gdt)
idt_ptr:
    dw 256 * 16 - 1
    dq idt

rom_probe:
    db 0xa5
msg_entered:
    db "long mode: entered, EFER.LMA/LME ", 0
msg_mmio:
    db "long mode: MMIO hole reads ", 0
msg_high:
    db ", unmapped reads ", 0
msg_rom:
    db ", ROM keeps ", 0
msg_int:
    db "long mode: int 80h ", 0
msg_gp:
    db ", #GP ", 0
msg_gp_code:
    db " code ", 0
msg_ud:
    db ", #UD ", 0
msg_cpuid:
    db "long mode: hypervisor '", 0
quote_crlf:
    db "'"
crlf:
    db 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
bits 16
reset:                      ; F000:FFF0, in real mode
    jmp start
    times 0x10000 - ($ - $$) db 0
