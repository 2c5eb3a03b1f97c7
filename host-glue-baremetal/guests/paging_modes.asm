; Walk through every paging mode and check what the MMU does, the way a
; kernel relies on it: 32-bit paging (4 KiB and 4 MiB pages), PAE (4 KiB and
; 2 MiB pages) and 4-level long mode. In each mode the guest
;  - writes through an alias and reads the frame back identity-mapped,
;  - finds the accessed and dirty bits set in its own entries,
;  - takes a #PF on a not-present page and checks CR2 and the error code,
;  - remaps a page by editing its own page table, runs INVLPG, and sees
;    the new frame,
;  - writes a read-only page with CR0.WP set and checks the error code (P|W),
; and in long mode also switches CR3 between two address spaces and back.
; Under nested paging the CPU does all of this; under shadow paging the VMM
; must give the same answers. Each mode prints "<mode> paging ok"; any
; mismatch prints "paging FAIL <letter>" and powers off at once.
bits 16
org 0

%define LIN(x) (0xf0000 + (x))
pf_code equ 0x500           ; error code of the last #PF
pf_addr equ 0x508           ; CR2 of the last #PF
idt32   equ 0x1000
idt64   equ 0x2000

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
    ; IDT entry 14 (#PF): interrupt gate to pf32.
    mov eax, LIN(pf32)
    mov word [idt32 + 14 * 8], ax
    mov word [idt32 + 14 * 8 + 2], 0x08
    mov word [idt32 + 14 * 8 + 4], 0x8e00
    shr eax, 16
    mov word [idt32 + 14 * 8 + 6], ax
    lidt [LIN(idt32_ptr)]

    ;---------------------------------------------------------------- 32-bit
    ; PD 0x10000: PDE0 -> PT 0x11000 (identity 0..4 MiB), PDE1 = 4 MiB page
    ; at 4 MiB. PTE 0x200 not present, PTE 0x201 -> 0x300000 (alias),
    ; PTE 0x202 -> 0x302000 read-only.
    mov edi, 0x11000
    mov eax, 3
    mov ecx, 1024
.fill32:
    mov [edi], eax
    add eax, 0x1000
    add edi, 4
    loop .fill32
    mov dword [0x11000 + 0x200 * 4], 0
    mov dword [0x11000 + 0x201 * 4], 0x300003
    mov dword [0x11000 + 0x202 * 4], 0x302001
    mov dword [0x10000], 0x11003
    mov dword [0x10004], 0x400083
    mov eax, cr4
    or eax, 0x10                ; PSE
    mov cr4, eax
    mov eax, 0x10000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000          ; PG | WP
    mov cr0, eax

    mov bl, 'a'                 ; alias write, identity read-back
    mov dword [0x201000], 0x12345678
    cmp dword [0x300000], 0x12345678
    jne fail
    mov bl, 'b'                 ; A and D set in the PTE
    mov eax, [0x11000 + 0x201 * 4]
    and eax, 0x60
    cmp eax, 0x60
    jne fail
    mov bl, 'c'                 ; #PF on a not-present page: CR2, code 0
    mov esi, 0x200000
    mov dword [pf_code], 0xff
    mov eax, [esi]              ; 2 bytes: the handler skips it
    cmp dword [pf_code], 0
    jne fail
    cmp dword [pf_addr], 0x200000
    jne fail
    mov bl, 'd'                 ; D set in the 4 MiB PDE
    mov dword [0x400010], 0xabcd
    test dword [0x10004], 0x40
    jz fail
    mov bl, 'e'                 ; remap through the guest's own PT + INVLPG
    mov dword [0x11000 + 0x201 * 4], 0x301003
    invlpg [0x201000]
    mov dword [0x201000], 0x55aa
    cmp dword [0x301000], 0x55aa
    jne fail
    cmp dword [0x300000], 0x12345678
    jne fail
    mov bl, 'f'                 ; write to a read-only page with WP: P|W
    mov esi, 0x202000
    mov dword [pf_code], 0xff
    mov [esi], eax
    cmp dword [pf_code], 3
    jne fail
    mov esi, LIN(ok32)
    call print

    ;------------------------------------------------------------------- PAE
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    ; PDPT 0x12000: [0] -> PD 0x13000; PD[0] -> PT 0x14000 (identity
    ; 0..2 MiB), PD[1], PD[2] = 2 MiB pages at 2 and 4 MiB. PTE 0x1ff not present,
    ; PTE 0x1fe -> 0x310000 (alias).
    mov edi, 0x14000
    mov eax, 3
    mov ecx, 512
.fillpae:
    mov [edi], eax
    mov dword [edi + 4], 0
    add eax, 0x1000
    add edi, 8
    loop .fillpae
    mov dword [0x14000 + 0x1ff * 8], 0
    mov dword [0x14000 + 0x1fe * 8], 0x310003
    mov dword [0x12000], 0x13001
    mov dword [0x13000], 0x14003
    mov dword [0x13000 + 1 * 8], 0x200083
    mov dword [0x13000 + 2 * 8], 0x400083
    mov eax, cr4
    or eax, 0x20                ; PAE
    mov cr4, eax
    mov eax, 0x12000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov bl, 'g'
    mov dword [0x1fe000], 0x87654321
    cmp dword [0x310000], 0x87654321
    jne fail
    mov eax, [0x14000 + 0x1fe * 8]
    and eax, 0x60
    cmp eax, 0x60
    jne fail
    mov bl, 'h'                 ; #PF: user bit clear, write: code 2
    mov esi, 0x1ff000
    mov dword [pf_code], 0xff
    mov [esi], eax
    cmp dword [pf_code], 2
    jne fail
    cmp dword [pf_addr], 0x1ff000
    jne fail
    mov bl, 'i'                 ; D in the 2 MiB PDE
    mov dword [0x400020], 1
    test dword [0x13000 + 2 * 8], 0x40
    jz fail
    mov bl, 'j'                 ; remap + INVLPG
    mov dword [0x14000 + 0x1fe * 8], 0x311003
    invlpg [0x1fe000]
    mov dword [0x1fe000], 0x77
    cmp dword [0x311000], 0x77
    jne fail
    mov esi, LIN(okpae)
    call print

    ;------------------------------------------------------------- long mode
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    ; PML4 A 0x15000 -> PDPT 0x16000 -> PD 0x17000: PD[0] -> PT 0x18000
    ; (identity 0..2 MiB, 0x1ff not present, 0x1fe -> 0x320000), PD[1..3]
    ; = 2 MiB pages at 2, 4 and 6 MiB. PML4 B 0x19000 -> PDPT
    ; 0x1a000 -> PD 0x1b000: PD[0] -> the same PT, PD[2] = 2 MiB at 6 MiB.
    mov edi, 0x18000
    mov eax, 3
    mov ecx, 512
.fill64:
    mov [edi], eax
    mov dword [edi + 4], 0
    add eax, 0x1000
    add edi, 8
    loop .fill64
    mov dword [0x18000 + 0x1ff * 8], 0
    mov dword [0x18000 + 0x1fe * 8], 0x320003
    mov dword [0x15000], 0x16003
    mov dword [0x16000], 0x17003
    mov dword [0x17000], 0x18003
    mov dword [0x17000 + 1 * 8], 0x200083
    mov dword [0x17000 + 2 * 8], 0x400083
    mov dword [0x17000 + 3 * 8], 0x600083
    mov dword [0x19000], 0x1a003
    mov dword [0x1a000], 0x1b003
    mov dword [0x1b000], 0x18003
    mov dword [0x1b000 + 1 * 8], 0x200083
    mov dword [0x1b000 + 2 * 8], 0x600083
    mov eax, 0x15000
    mov cr3, eax
    mov ecx, 0xc0000080         ; EFER.LME
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    jmp 0x18:LIN(lm64)

bits 64
lm64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, 0x7c00
    mov rax, LIN(pf64)
    mov word [idt64 + 14 * 16], ax
    mov word [idt64 + 14 * 16 + 2], 0x18
    mov word [idt64 + 14 * 16 + 4], 0x8e00
    shr rax, 16
    mov word [idt64 + 14 * 16 + 6], ax
    mov dword [idt64 + 14 * 16 + 8], 0
    lidt [LIN(idt64_ptr)]

    mov bl, 'k'
    mov dword [0x1fe000], 0x4444
    cmp dword [0x320000], 0x4444
    jne fail64
    mov eax, [0x18000 + 0x1fe * 8]
    and eax, 0x60
    cmp eax, 0x60
    jne fail64
    mov bl, 'l'                 ; #PF read of a not-present page: code 0
    mov rsi, 0x1ff000
    mov qword [pf_code], 0xff
    mov eax, [rsi]
    cmp qword [pf_code], 0
    jne fail64
    cmp qword [pf_addr], 0x1ff000
    jne fail64
    mov bl, 'm'                 ; CR3 switch and back
    mov dword [0x400000], 0xaaaa
    mov rax, 0x19000
    mov cr3, rax
    mov dword [0x400000], 0xbbbb   ; lands in 6 MiB here
    mov rax, 0x15000
    mov cr3, rax
    cmp dword [0x400000], 0xaaaa
    jne fail64
    cmp dword [0x600000], 0xbbbb
    jne fail64
    mov bl, 'n'                 ; remap + INVLPG
    mov dword [0x18000 + 0x1fe * 8], 0x321003
    invlpg [0x1fe000]
    mov dword [0x1fe000], 0x99
    cmp dword [0x321000], 0x99
    jne fail64
    mov bl, 'o'                 ; the other address space saw the remap too
    mov rax, 0x19000
    mov cr3, rax
    cmp dword [0x1fe000], 0x99
    jne fail64
    mov rsi, LIN(ok64)
    call print
    jmp poweroff

fail64:
    mov rsi, LIN(failmsg)
    call print
    mov al, bl
    out dx, al
    mov al, 10
    out dx, al
    jmp poweroff

pf64:
    pop qword [pf_code]
    push rax
    mov rax, cr2
    mov [pf_addr], rax
    pop rax
    add qword [rsp], 2
    iretq

bits 32
fail:
    mov esi, LIN(failmsg)
    call print
    mov al, bl
    out dx, al
    mov al, ' '
    out dx, al
    mov eax, [pf_code]
    call hex32
    mov al, ' '
    out dx, al
    mov eax, [pf_addr]
    call hex32
    mov al, 10
    out dx, al
poweroff:
    mov dx, 0xb004              ; ACPI PM1a_CNT: SLP_EN, S5
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

; Print the NUL-terminated string at ESI/RSI on COM1 (same bytes in 32-
; and 64-bit code).
print:
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    ret

; Print EAX as 8 hex digits on COM1 (DX = 0x3f8).
hex32:
    mov ecx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    out dx, al
    pop eax
    loop .digit
    ret

pf32:
    pop dword [pf_code]
    push eax
    mov eax, cr2
    mov [pf_addr], eax
    pop eax
    add dword [esp], 2          ; the faulting instructions are 2 bytes
    iretd

    align 8
gdt:
    dq 0
    dq 0x00cf9b000000ffff       ; 0x08: flat 32-bit code (accessed bit
                                ; preset: the GDT is in ROM)
    dq 0x00cf93000000ffff       ; 0x10: flat data
    dq 0x00af9b000000ffff       ; 0x18: 64-bit code
gdt_ptr:
    dw 31
    dd LIN(gdt)
idt32_ptr:
    dw 256 * 8 - 1
    dd idt32
idt64_ptr:
    dw 256 * 16 - 1
    dq idt64

ok32:
    db "32-bit paging ok", 13, 10, 0
okpae:
    db "PAE paging ok", 13, 10, 0
ok64:
    db "4-level paging ok", 13, 10, 0
failmsg:
    db "paging FAIL ", 0

bits 16
    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
