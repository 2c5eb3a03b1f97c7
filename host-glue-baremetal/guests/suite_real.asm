; Guest-suite program, real mode (runs natively from F000:FFF0: unrestricted
; guest on VMX, plain SVM). Checks, printing one line each on COM1:
;  - port I/O (OUT to COM1),
;  - string port I/O (REP OUTSB, carried out by the VMM's emulator),
;  - MMIO through the emulator: the VGA hole has no memory and no device,
;    so a write is dropped and a read gives all ones; a write to the ROM is
;    dropped and the byte keeps its value,
;  - interrupts: INT 80h through the IVT, and events the VMM injects: #GP
;    for an unknown MSR (no error code in real mode) and #UD for VMCALL,
;  - CPUID: the hypervisor vendor leaf.
; Then powers off through ACPI (PM1a_CNT at 0xB004).
bits 16
org 0

counters equ 0x500          ; int80, gp, ud counts (bytes)

start:
    jmp 0xf000:main
main:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7c00
    mov word [6 * 4], ud_handler
    mov word [6 * 4 + 2], 0xf000
    mov word [13 * 4], gp_handler
    mov word [13 * 4 + 2], 0xf000
    mov word [0x80 * 4], int80_handler
    mov word [0x80 * 4 + 2], 0xf000
    mov dword [counters], 0

    mov si, msg_port
    call print

    ; REP OUTSB takes DS:SI: point DS at the ROM for the message.
    push ds
    push cs
    pop ds
    mov si, msg_string
    mov cx, msg_string_len
    mov dx, 0x3f8
    cld
    rep outsb
    pop ds

    ; MMIO: the VGA hole at A0000.
    mov ax, 0xa000
    mov es, ax
    mov byte [es:0x10], 0x12
    mov bl, [es:0x10]
    ; ROM: write a byte of this image, read it back.
    mov ax, 0xf000
    mov es, ax
    mov byte [es:rom_probe], 0x55
    mov bh, [es:rom_probe]
    mov si, msg_mmio
    call print
    mov al, bl
    call print_hex
    mov si, msg_rom
    call print
    mov al, bh
    call print_hex
    mov si, crlf
    call print

    ; Interrupts.
    int 0x80
    mov ecx, 0x4000_0fff    ; an MSR nobody has: #GP
    rdmsr
    vmcall                  ; #UD (VMX exits, AMD has no VMCALL)
    mov si, msg_int
    call print
    mov al, [counters]
    call print_hex
    mov si, msg_gp
    call print
    mov al, [counters + 1]
    call print_hex
    mov si, msg_ud
    call print
    mov al, [counters + 2]
    call print_hex
    mov si, crlf
    call print

    ; CPUID: the hypervisor's vendor leaf.
    mov eax, 0x4000_0000
    cpuid
    mov [0x600], ebx
    mov [0x604], ecx
    mov [0x608], edx
    mov byte [0x60c], 0
    mov si, msg_cpuid
    call print
    mov si, 0x600
    call print_ram
    mov si, quote_crlf
    call print

    mov dx, 0xb004          ; PM1a_CNT: SLP_EN, S5
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

; Print the NUL-terminated string at CS:SI.
print:
    push dx
    mov dx, 0x3f8
.next:
    cs lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop dx
    ret

; Print the NUL-terminated string at DS:SI.
print_ram:
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    ret

; Print AL as two hex digits.
print_hex:
    push ax
    push bx
    push dx
    mov dx, 0x3f8
    mov bl, al
    shr al, 4
    call .digit
    mov al, bl
    and al, 0xf
    call .digit
    pop dx
    pop bx
    pop ax
    ret
.digit:
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '9' - 1
.out:
    out dx, al
    ret

int80_handler:
    inc byte [counters]
    iret

; #GP (no error code in real mode): skip the 2-byte RDMSR.
gp_handler:
    push bp
    mov bp, sp
    add word [bp + 2], 2
    pop bp
    inc byte [counters + 1]
    iret

; #UD: skip the 3-byte VMCALL.
ud_handler:
    push bp
    mov bp, sp
    add word [bp + 2], 3
    pop bp
    inc byte [counters + 2]
    iret

rom_probe:
    db 0xa5
msg_port:
    db "real mode: port I/O ok", 13, 10, 0
msg_string:
    db "real mode: string I/O ok", 13, 10
msg_string_len equ $ - msg_string
msg_mmio:
    db "real mode: MMIO hole reads ", 0
msg_rom:
    db ", ROM keeps ", 0
msg_int:
    db "real mode: int 80h ", 0
msg_gp:
    db ", #GP ", 0
msg_ud:
    db ", #UD ", 0
msg_cpuid:
    db "real mode: hypervisor '", 0
quote_crlf:
    db "'"
crlf:
    db 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:                      ; F000:FFF0
    jmp start
    times 0x10000 - ($ - $$) db 0
