; Guest-suite program, 32-bit protected mode (flat segments, no paging).
; Checks, one line each on COM1:
;  - entering protected mode and port I/O from it,
;  - MMIO through the emulator: a dword from the VGA hole and from an
;    unmapped address below 4 GiB read all ones; REP MOVSD copies four
;    dwords from the hole into RAM; a write to the ROM is dropped,
;  - interrupts through a 32-bit IDT: INT 80h, #GP with its error code for
;    an unknown MSR, #UD for VMCALL, both injected by the VMM,
;  - CPUID: the hypervisor bit of leaf 1.
; Then powers off through ACPI.
bits 16
org 0

%define LIN(x) (0xf0000 + (x))
counters equ 0x500          ; int80, gp, ud counts; gp error code at +4
idt      equ 0x1000
buffer   equ 0x2000

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
    mov ebx, 6
    mov eax, LIN(ud_handler)
    call set_gate
    mov ebx, 13
    mov eax, LIN(gp_handler)
    call set_gate
    mov ebx, 0x80
    mov eax, LIN(int80_handler)
    call set_gate
    lidt [LIN(idt_ptr)]
    mov dword [counters], 0
    mov dword [counters + 4], 0xffff

    mov esi, LIN(msg_entered)
    call print

    ; MMIO.
    mov dword [0xa0000], 0x12345678
    mov eax, [0xa0000]
    mov [counters + 8], eax
    mov eax, [0xfed0_0000]
    mov [counters + 12], eax
    mov esi, 0xa0000
    mov edi, buffer
    mov ecx, 4
    cld
    rep movsd
    mov byte [LIN(rom_probe)], 0x55
    mov esi, LIN(msg_mmio)
    call print
    mov eax, [counters + 8]
    call print_hex32
    mov esi, LIN(msg_high)
    call print
    mov eax, [counters + 12]
    call print_hex32
    mov esi, LIN(msg_movs)
    call print
    mov eax, [buffer + 12]
    call print_hex32
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
    mov eax, [counters + 4]
    call print_hex32
    mov esi, LIN(msg_ud)
    call print
    mov al, [counters + 2]
    call print_hex8
    mov esi, LIN(crlf)
    call print

    ; CPUID leaf 1, ECX bit 31.
    mov esi, LIN(msg_cpuid)
    call print
    mov eax, 1
    cpuid
    shr ecx, 31
    mov al, cl
    call print_hex8
    mov esi, LIN(crlf)
    call print

    mov dx, 0xb004
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

; IDT entry EBX: a 32-bit interrupt gate to EAX.
set_gate:
    mov word [idt + ebx * 8], ax
    mov word [idt + ebx * 8 + 2], 0x08
    mov word [idt + ebx * 8 + 4], 0x8e00
    shr eax, 16
    mov word [idt + ebx * 8 + 6], ax
    ret

print:
    push edx
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop edx
    ret

print_hex32:
    push eax
    shr eax, 24
    call print_hex8
    mov eax, [esp]
    shr eax, 16
    call print_hex8
    mov eax, [esp]
    shr eax, 8
    call print_hex8
    pop eax
    call print_hex8
    ret

print_hex8:
    push eax
    push ebx
    push edx
    mov dx, 0x3f8
    mov bl, al
    shr al, 4
    call .digit
    mov al, bl
    and al, 0xf
    call .digit
    pop edx
    pop ebx
    pop eax
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
    iretd

; #GP: record the error code, skip the 2-byte RDMSR.
gp_handler:
    pop dword [counters + 4]
    add dword [esp], 2
    inc byte [counters + 1]
    iretd

; #UD: skip the 3-byte VMCALL.
ud_handler:
    add dword [esp], 3
    inc byte [counters + 2]
    iretd

    align 8
gdt:
    dq 0
    dq 0x00cf9b000000ffff   ; 0x08: 32-bit code, flat (accessed: the CPU never writes the ROM)
    dq 0x00cf93000000ffff   ; 0x10: data, flat, accessed
gdt_ptr:
    dw gdt_ptr - gdt - 1
    dd LIN(gdt)
idt_ptr:
    dw 0x81 * 8 - 1
    dd idt

rom_probe:
    db 0xa5
msg_entered:
    db "protected mode: entered, port I/O ok", 13, 10, 0
msg_mmio:
    db "protected mode: MMIO hole reads ", 0
msg_high:
    db ", unmapped reads ", 0
msg_movs:
    db ", movsd copies ", 0
msg_rom:
    db ", ROM keeps ", 0
msg_int:
    db "protected mode: int 80h ", 0
msg_gp:
    db ", #GP ", 0
msg_gp_code:
    db " code ", 0
msg_ud:
    db ", #UD ", 0
msg_cpuid:
    db "protected mode: CPUID hypervisor bit ", 0
crlf:
    db 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
bits 16
reset:                      ; F000:FFF0, in real mode
    jmp start
    times 0x10000 - ($ - $$) db 0
