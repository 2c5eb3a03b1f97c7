; IOAPIC delivery modes and illegal vectors, on a whole PC (pc_*: PIC,
; PIT, LAPIC, IOAPIC...). The PIT runs at about 12 kHz into IOAPIC pin 2
; (the 8259s are masked). For each delivery mode 0-7 (fixed, lowest
; priority, SMI, reserved, NMI, INIT, reserved, ExtINT) the program routes
; pin 2 with a legal vector (40h + mode) for 4 ms of guest time (or longer,
; up to about 256 ms, until it or an NMI arrives), then with each of the
; vectors 0-15 for 4 ms each, and prints what arrived:
;   ioapic mode <m>: vector 4<m> yes|no, nmi yes|no, vectors 0-15 <mask>, esr <hex>
; where <mask> has a bit for each of vectors 0-15 (but 2, the NMI vector)
; that reached the IDT, and esr ORs the LAPIC's ESR over the low-vector
; windows. Hardware: fixed and lowest priority deliver the legal vector
; and refuse 0-15 with "received illegal vector" (ESR bit 6); NMI
; delivers an NMI whatever the vector; this VMM has no SMM, INIT, or
; ExtINT-through-IOAPIC delivery, so those modes deliver nothing. Then
; "ioapic: done" and an ACPI power-off.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"

window    equ vars + 128    ; TSC ticks per window
low_mask  equ vars + 136
esr_acc   equ vars + 144
mode      equ vars + 152
vector    equ vars + 160    ; the legal vector of route_until_arrival
extra     equ vars + 168    ; windows it may still wait

test_main:
    call pic_off
    call lapic_on
    ; PIT channel 0, mode 2, 100 counts: about 12 kHz.
    mov al, 0x34
    out 0x43, al
    mov al, 100
    out 0x40, al
    xor al, al
    out 0x40, al
    call tsc_per_ms
    shl rax, 2
    mov [window], rax

    mov qword [mode], 0
.mode:
    mov qword [low_mask], 0
    mov qword [esr_acc], 0
    ; The legal vector.
    mov eax, [mode]
    add eax, 0x40
    call route_until_arrival
    mov esi, LIN(msg_mode)
    call print
    mov eax, [mode]
    add al, '0'
    mov dx, 0x3f8
    out dx, al
    mov esi, LIN(msg_vector)
    call print
    mov eax, [mode]
    add eax, 0x40
    call print_hex8
    mov rbx, [mode]
    mov rax, [counts + 0x200 + rbx * 8]
    call yes_no
    mov esi, LIN(msg_nmi)
    call print
    mov rax, [counts + 2 * 8]
    call yes_no
    ; Vectors 0-15.
    xor ebx, ebx
.low:
    push rbx
    call read_esr               ; forget earlier errors
    mov eax, ebx
    call route_window
    call read_esr
    or [esr_acc], eax
    xor ecx, ecx
.scan:
    cmp ecx, 2
    je .next_vec
    cmp qword [counts + rcx * 8], 0
    je .next_vec
    bts qword [low_mask], rcx
.next_vec:
    inc ecx
    cmp ecx, 16
    jb .scan
    pop rbx
    inc ebx
    cmp ebx, 16
    jb .low
    mov esi, LIN(msg_low)
    call print
    mov rax, [low_mask]
    call print_hex16
    mov esi, LIN(msg_esr)
    call print
    mov rax, [esr_acc]
    call print_hex8
    mov esi, LIN(crlf)
    call print
    inc qword [mode]
    cmp qword [mode], 8
    jb .mode
    mov esi, LIN(msg_done)
    call print
    ret

; Like route_window, but when neither vector AL nor an NMI has arrived at
; the end of the window, keep the pin routed for up to 64 more windows
; (about 256 ms), until one does. A host that deschedules the VM for
; longer than a window (a loaded CI machine running TCG) may otherwise
; end the window before the PIT's next edge is delivered, and a mode that
; delivers would read as one that does not. Modes that deliver nothing
; pay the whole wait.
route_until_arrival:
    movzx eax, al
    mov [vector], rax
    call route_open
    mov rax, [window]
    call spin_ticks
    mov qword [extra], 64
.more:
    mov rbx, [vector]
    cmp qword [counts + rbx * 8], 0
    jne .close
    cmp qword [counts + 2 * 8], 0
    jne .close
    dec qword [extra]
    jz .close
    mov rax, [window]
    call spin_ticks
    jmp .more
.close:
    jmp route_close

; Route IOAPIC pin 2 to vector AL in delivery mode [mode] (edge, physical,
; APIC 0) with the counts cleared, let a window of guest time pass with
; interrupts open, mask the pin.
route_window:
    call route_open
    mov rax, [window]
    call spin_ticks
    jmp route_close

; Clear the counts and route IOAPIC pin 2 to vector AL in delivery mode
; [mode] (edge, physical, APIC 0).
route_open:
    push rax
    mov edi, counts
    mov ecx, 256
    xor eax, eax
    rep stosq
    pop rax
    movzx eax, al
    mov ecx, [mode]
    shl ecx, 8
    or eax, ecx
    mov ebx, IOAPIC
    mov dword [rbx], 0x15
    mov dword [rbx + 0x10], 0
    mov dword [rbx], 0x14
    mov [rbx + 0x10], eax
    ret

; Mask IOAPIC pin 2.
route_close:
    mov ebx, IOAPIC
    mov dword [rbx], 0x14
    mov dword [rbx + 0x10], 0x10000
    ret

; Print " yes" if RAX is not zero, else " no".
yes_no:
    mov esi, LIN(msg_yes)
    test rax, rax
    jnz .say
    mov esi, LIN(msg_no)
.say:
    jmp print

msg_mode:   db "ioapic mode ", 0
msg_vector: db ": vector ", 0
msg_yes:    db " yes", 0
msg_no:     db " no", 0
msg_nmi:    db ", nmi", 0
msg_low:    db ", vectors 0-15 ", 0
msg_esr:    db ", esr ", 0
msg_done:   db "ioapic: done", 13, 10, 0

    IMAGE_END
