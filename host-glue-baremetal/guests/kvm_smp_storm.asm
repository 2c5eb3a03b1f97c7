; A hostile guest for `vmm` with several vCPUs (each on its own host
; thread): 32-bit protected mode on the bootstrap processor, as the
; firmware (`vmm run --cpus 4 --bios kvm_smp_storm.bin`).
;
; The application processors start (INIT, start-up, start-up to all
; excluding self) at a real-mode page that counts the start and then
; spins with interrupts off in a loop that never exits: they never take a
; maskable interrupt. Then the bootstrap processor storms them:
;   - 20,000 fixed IPIs to all excluding self (they stay pending: every
;     AP has IF clear);
;   - 2,000 NMIs to all excluding self (each AP takes them, through an
;     IRET stub its real-mode IVT points at);
;   - 500 rounds of INIT and start-up to all excluding self (each AP
;     restarts, counting its start again).
; The VMM must stay responsive throughout and go on to the power-off; it
; prints `smp storm: N aps started`, each phase's end and `smp storm:
; done, starts N` on COM1 (N the starts counted, in hex).
%include "pm32_entry.inc"

COM1     equ 0x3f8
APIC     equ 0xfee00000
ICR_LO   equ APIC + 0x300
ICR_HI   equ APIC + 0x310
TRAMP    equ 0x8000             ; the start-up page (vector 8)
STARTS   equ 0x600              ; dword: AP starts
NMIS     equ 0x604              ; dword: NMIs the APs took
; ICR: shorthand all excluding self (bits 19:18 = 11b), level assert.
ALL_BUT_SELF equ 0x000c0000 | 0x4000

    PM32_ENTRY
    mov dx, COM1
    mov esi, LIN(msg_start)
    call print
    ; Local APIC on (SVR: enable, spurious vector 0xFF).
    mov dword [APIC + 0xf0], 0x1ff
    ; The APs' start-up page and their NMI gate (real-mode IVT entry 2:
    ; TRAMP's segment, the IRET stub's offset).
    mov esi, LIN(tramp)
    mov edi, TRAMP
    mov ecx, tramp_end - tramp
    cld
    rep movsb
    mov word [2 * 4], nmi_stub - tramp
    mov word [2 * 4 + 2], TRAMP >> 4
    mov dword [STARTS], 0
    mov dword [NMIS], 0

    call start_aps
    ; Wait for the three to count their start (or give up after a while).
    mov ecx, 200000000
.wait_start:
    cmp dword [STARTS], 3
    jae .started
    pause
    dec ecx
    jnz .wait_start
.started:
    mov eax, [STARTS]
    mov esi, LIN(msg_started)
    call print_hex_line

    ; Fixed IPIs, vector 0x40: pending for ever on CPUs with IF clear.
    mov ecx, 20000
.fixed:
    mov dword [ICR_HI], 0
    mov dword [ICR_LO], ALL_BUT_SELF | 0x40
    dec ecx
    jnz .fixed
    mov esi, LIN(msg_fixed)
    call print

    ; NMIs.
    mov ecx, 2000
.nmi:
    mov dword [ICR_HI], 0
    mov dword [ICR_LO], ALL_BUT_SELF | 0x400
    dec ecx
    jnz .nmi
    mov eax, [NMIS]
    mov esi, LIN(msg_nmi)
    call print_hex_line

    ; INIT and start-up, again and again.
    mov ecx, 500
.restart:
    push ecx
    call start_aps
    pop ecx
    dec ecx
    jnz .restart
    mov esi, LIN(msg_init)
    call print

    mov eax, [STARTS]
    mov esi, LIN(msg_done)
    call print_hex_line
    mov dx, 0x604           ; PM1a_CNT: SLP_EN, SLP_TYP 0 = S5
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

; INIT, then two start-up IPIs (vector 8: TRAMP), to all excluding self.
start_aps:
    mov dword [ICR_HI], 0
    mov dword [ICR_LO], ALL_BUT_SELF | 0x500
    mov dword [ICR_LO], ALL_BUT_SELF | 0x600 | (TRAMP >> 12)
    mov dword [ICR_LO], ALL_BUT_SELF | 0x600 | (TRAMP >> 12)
    ret

; Print the NUL-terminated string at ESI on port DX.
print:
    push eax
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop eax
    ret

; Print the string at ESI, then EAX in hex and a newline.
print_hex_line:
    call print
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
    dec ecx
    jnz .digit
    mov al, 10
    out dx, al
    ret

; The APs' real-mode start-up page (copied to TRAMP, run at CS = TRAMP >> 4).
bits 16
tramp:
    cli
    xor ax, ax
    mov ds, ax
    lock inc dword [STARTS]
.spin:
    jmp .spin
nmi_stub:
    push ds
    push ax
    xor ax, ax
    mov ds, ax
    lock inc dword [NMIS]
    pop ax
    pop ds
    iret
tramp_end:
bits 32

msg_start:   db "smp storm: start", 10, 0
msg_started: db "smp storm: aps started ", 0
msg_fixed:   db "smp storm: fixed ipis sent", 10, 0
msg_nmi:     db "smp storm: nmis taken ", 0
msg_init:    db "smp storm: init and start-up rounds sent", 10, 0
msg_done:    db "smp storm: done, starts ", 0

    PM32_GDT
    RESET_VECTOR
