; A 32-bit protected-mode program for the KVM backend's direct-boot test
; (`vmm run --bios kvm_devices.bin`), on the full PC chipset without a BIOS.
; It exercises the three ways a guest reaches the VMM:
;   port I/O  - COM1 output, the 8259 and 8254 set-up, a REP OUTSB (string
;               I/O, which KVM hands over with a count);
;   MMIO      - the IOAPIC version register (index/window at 0xFEC00000)
;               and the local APIC's version, SVR and LINT0 (0xFEE00000);
;   interrupts- the PIT at 1 kHz on IRQ 0 through the 8259 (the local APIC
;               in virtual-wire mode: LINT0 = ExtINT), ten of them counted
;               by an interrupt gate while the CPU halts.
; Then it powers off through the PIIX4 ACPI PM block (PM1a_CNT at 0x604).
bits 16
org 0

%define LIN(x) (0xf0000 + (x))
ticks equ 0x500
idt   equ 0x1000
COM1  equ 0x3f8

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
    mov dx, COM1
    mov esi, LIN(msg_hello)
    call print

    ; MMIO: the IOAPIC version (register 1 through IOREGSEL/IOWIN).
    mov dword [0xfec00000], 1
    mov eax, [0xfec00010]
    mov esi, LIN(msg_ioapic)
    call print_hex_line
    ; MMIO: the local APIC version.
    mov eax, [0xfee00030]
    mov esi, LIN(msg_lapic)
    call print_hex_line
    ; Enable the local APIC (SVR, spurious vector 0xFF) and route the
    ; 8259 through LINT0 as ExtINT; read LINT0 back.
    mov dword [0xfee000f0], 0x1ff
    mov dword [0xfee00350], 0x700
    mov eax, [0xfee00350]
    mov esi, LIN(msg_lint0)
    call print_hex_line

    ; The 8259 pair: vectors 0x20 and 0x28, cascade on IRQ 2, 8086 mode;
    ; only IRQ 0 unmasked.
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al

    ; IDT vector 0x20: interrupt gate to the timer handler.
    mov eax, LIN(timer_handler)
    mov word [idt + 0x20 * 8], ax
    mov word [idt + 0x20 * 8 + 2], 0x08
    mov word [idt + 0x20 * 8 + 4], 0x8e00
    shr eax, 16
    mov word [idt + 0x20 * 8 + 6], ax
    lidt [LIN(idt_ptr)]
    mov dword [ticks], 0

    ; PIT channel 0: mode 2 (rate generator), divisor 1193 = 1 kHz.
    mov al, 0x34
    out 0x43, al
    mov al, 0xa9
    out 0x40, al
    mov al, 0x04
    out 0x40, al

    sti
.wait:
    hlt
    cmp dword [ticks], 10
    jb .wait
    cli
    mov eax, [ticks]
    mov dx, COM1
    mov esi, LIN(msg_ticks)
    call print_hex_line

    ; String I/O: the whole line in one REP OUTSB.
    mov esi, LIN(msg_rep)
    mov ecx, msg_rep_end - msg_rep
    rep outsb

    mov esi, LIN(msg_bye)
    call print
    mov dx, 0x604           ; PM1a_CNT: SLP_EN, SLP_TYP 0 = S5
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

; Counts ticks up to 10, then masks IRQ 0 at the PIC: a VMM may deliver
; two ticks back to back (one it caught up on), so the main loop could
; otherwise see 11 between its HLT and its CLI.
timer_handler:
    push eax
    inc dword [ticks]
    cmp dword [ticks], 10
    jb .eoi
    in al, 0x21
    or al, 0x01
    out 0x21, al
.eoi:
    mov al, 0x20            ; non-specific EOI
    out 0x20, al
    pop eax
    iret

; Print the NUL-terminated string at ESI on port DX.
print:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp print
.done:
    ret

; Print the string at ESI, then EAX as eight hex digits, then CR LF.
print_hex_line:
    push eax
    call print
    pop eax
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
    mov al, 13
    out dx, al
    mov al, 10
    out dx, al
    ret

msg_hello:  db "kvm_devices: 32-bit protected mode", 13, 10, 0
msg_ioapic: db "ioapic version ", 0
msg_lapic:  db "lapic version ", 0
msg_lint0:  db "lapic lint0 ", 0
msg_ticks:  db "timer interrupts ", 0
msg_rep:    db "string i/o: one rep outsb", 13, 10
msg_rep_end:
msg_bye:    db "powering off", 13, 10, 0

align 8
gdt:
    dq 0
    dq 0x00cf9b000000ffff   ; 0x08: flat 32-bit code
    dq 0x00cf93000000ffff   ; 0x10: flat data
gdt_end:
gdt_ptr:
    dw gdt_end - gdt - 1
    dd LIN(gdt)
idt_ptr:
    dw 0x30 * 8 - 1
    dd idt

    times 0xfff0 - ($ - $$) db 0
bits 16
reset:                      ; F000:FFF0
    jmp 0xf000:start
    times 0x10000 - ($ - $$) db 0
