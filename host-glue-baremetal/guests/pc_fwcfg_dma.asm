; fw_cfg DMA (QEMU's interface: a big-endian descriptor whose address goes
; to ports 0x514/0x518) aimed where no device may write, on a whole PC
; (pc_*, 16 MiB of RAM). Each transfer reads the signature item; the
; targets: RAM (must work), the BIOS ROM at 0xE0000 and below 4 GiB, the
; VGA hole, the LAPIC and IOAPIC registers, a range straddling the end of
; RAM, past RAM, above 4 GiB, one that wraps the address space, a length
; running from RAM far past it, and a write request. Every refusal must
; set the error bit (01) in the control word and write nothing: a canary
; qword at each target (RAM bytes set to 5Ah, the ROM's own bytes, the
; APIC registers' values) must read the same after. One line each:
;   fw_cfg dma to <target>: status <hex>, canary kept|CHANGED
; then a descriptor placed in ROM (no status can be written: nothing may
; happen), "fw_cfg: done" and an ACPI power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"

desc equ 0x3000
CTL_READ_SIG equ 0x0000_000a        ; select key 0 (signature), read

; DMA name, address, length, control, canary address
%macro ATTEMPT 5
    jmp %%go
%%name:
    db %1, 0
%%go:
    mov esi, LIN(%%name)
    mov rbx, %2
    mov edx, %3
    mov ecx, %4
    mov r13, %5
    call attempt
%endmacro

test_main:
    mov dword [0x8000], 0
    ATTEMPT "ram", 0x8000, 4, CTL_READ_SIG, 0x9000
    mov esi, LIN(msg_sig_bad)
    cmp dword [0x8000], 'QEMU'
    jne .said
    mov esi, LIN(msg_sig_ok)
.said:
    call print
    ATTEMPT "rom at 0xe0000", 0xe0000, 4, CTL_READ_SIG, 0xe0000
    ATTEMPT "rom below 4 GiB", 0xffff_0000, 4, CTL_READ_SIG, 0xffff_0000
    ATTEMPT "the vga hole", 0xa0000, 4, CTL_READ_SIG, 0xa0000
    ATTEMPT "the lapic id register", LAPIC + 0x20, 4, CTL_READ_SIG, LAPIC + 0x20
    ATTEMPT "the ioapic select register", IOAPIC, 4, CTL_READ_SIG, IOAPIC
    mov rax, 0x5a5a_5a5a_5a5a_5a5a
    mov [0xff_fff8], rax
    ATTEMPT "the end of ram", 0xff_fffe, 4, CTL_READ_SIG, 0xff_fff8
    ATTEMPT "past ram", 0x100_0000, 4, CTL_READ_SIG, 0xff_fff8
    ATTEMPT "above 4 GiB", 0x1_0000_0000, 4, CTL_READ_SIG, 0xff_fff8
    ATTEMPT "a wrapping range", 0xffff_ffff_ffff_fffe, 4, CTL_READ_SIG, 0x8000
    mov rax, 0x5a5a_5a5a_5a5a_5a5a
    mov [0xa000], rax
    ATTEMPT "ram with a 4 GiB length", 0xa000, 0xffff_ffff, CTL_READ_SIG, 0xa000
    ATTEMPT "a write request", 0xa000, 4, 0x0000_0018, 0xa000

    ; A descriptor in ROM: the device cannot even say no.
    mov eax, 0
    mov dx, 0x514
    out dx, eax
    mov eax, 0xe0000
    bswap eax
    mov dx, 0x518
    out dx, eax
    mov esi, LIN(msg_done)
    jmp print

; DMA to RBX, EDX bytes, control ECX; RSI names it; R13 is the canary.
attempt:
    mov r12, [r13]
    bswap ecx
    mov [desc], ecx
    bswap edx
    mov [desc + 4], edx
    mov rax, rbx
    bswap rax
    mov [desc + 8], rax
    mov eax, 0
    mov dx, 0x514
    out dx, eax
    mov eax, desc
    bswap eax
    mov dx, 0x518
    out dx, eax
    push rsi
    mov esi, LIN(msg_head)
    call print
    pop rsi
    call print
    mov esi, LIN(msg_status)
    call print
    mov eax, [desc]
    bswap eax
    call print_hex8
    mov esi, LIN(msg_kept)
    cmp r12, [r13]
    je .say
    mov esi, LIN(msg_changed)
.say:
    jmp print

msg_head:    db "fw_cfg dma to ", 0
msg_status:  db ": status ", 0
msg_kept:    db ", canary kept", 13, 10, 0
msg_changed: db ", canary CHANGED", 13, 10, 0
msg_sig_ok:  db "fw_cfg: ram holds the signature", 13, 10, 0
msg_sig_bad: db "fw_cfg: ram does NOT hold the signature", 13, 10, 0
msg_done:    db "fw_cfg: done", 13, 10, 0

    IMAGE_END
