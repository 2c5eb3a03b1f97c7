; Non-canonical addresses in every operand position the VMM's emulator
; handles, in 64-bit long mode (frame in hostile.inc). The last page of the
; lower canonical half (0x7FFF_FFFF_F000) is mapped to the VGA hole, which
; is MMIO (no memory, no device), so accesses there exit to the VMM and go
; through its emulator; the next byte is non-canonical. Cases: MOVS/CMPS
; with one side in MMIO and the other non-canonical, REP STOS/MOVS running
; over the canonical boundary, INS/OUTS (string port I/O, which exits
; before any memory access) with RDI/RSI non-canonical or crossing,
; canonical FS/GS bases whose sum with a canonical offset is not, PUSH
; of an MMIO operand onto a non-canonical or boundary-crossing RSP. Each
; must raise #GP(0) (#SS(0) for the stack) in the guest with RCX and
; RDI/RSI where the faulting iteration left them; a line per case:
;   noncanonical <case>: #GP(0000) rcx <hex>
; then "noncanonical: done" and an ACPI power-off.
%define PM1_CNT 0xb004
%include "hostile.inc"

pdpt2 equ 0x14000
pd2   equ 0x15000
pt2   equ 0x16000
NC    equ 0x8000_0000_0000_0000      ; the first non-canonical address
EDGE  equ 0x7fff_ffff_f000           ; last canonical page: the VGA hole

; CASE name: run the probe code that follows up to the next END_CASE with
; an exception expected; report what came.
%macro CASE 1
    mov rax, LIN(%%after)
    call arm
    jmp %%probe
%%name:
    db %1, 0
%%probe:
%define CASE_NAME %%name
%define CASE_AFTER %%after
%endmacro
%macro END_CASE 0
    mov qword [resume], 0           ; no fault came
CASE_AFTER:
    mov rsp, [resume_rsp]
    mov [scratch], rcx
    mov esi, LIN(CASE_NAME)
    call report
    call clear_bases
%endmacro

test_main:
    ; 0x7FFF_FFFF_F000 -> 0xA0000 with a 4 KiB page.
    mov edi, pdpt2
    mov ecx, 3 * 4096 / 8
    xor eax, eax
    rep stosq
    mov qword [pml4 + 255 * 8], pdpt2 | 3
    mov qword [pdpt2 + 511 * 8], pd2 | 3
    mov qword [pd2 + 511 * 8], pt2 | 3
    mov qword [pt2 + 511 * 8], 0xa0000 | 3
    mov rax, cr3
    mov cr3, rax

    CASE "movsb from mmio to a non-canonical rdi"
    mov esi, 0xa0000
    mov rdi, NC
    xor ecx, ecx
    movsb
    END_CASE

    CASE "movsq from a non-canonical rsi to mmio"
    mov rsi, 0xffff_0000_0000_0000
    mov edi, 0xa0000
    xor ecx, ecx
    movsq
    END_CASE

    CASE "cmpsb of mmio with a non-canonical rdi"
    mov esi, 0xa0000
    mov rdi, NC + 0x1000
    xor ecx, ecx
    cmpsb
    END_CASE

    CASE "rep stosb over the canonical boundary"
    mov rdi, EDGE + 0xff8
    mov ecx, 16
    mov al, 0x55
    rep stosb
    END_CASE

    CASE "rep movsb from mmio over the canonical boundary"
    mov esi, 0xa0000
    mov rdi, EDGE + 0xffc
    mov ecx, 16
    rep movsb
    END_CASE

    CASE "rep insb to a non-canonical rdi"
    mov dx, 0x3fd
    mov rdi, NC
    mov ecx, 4
    rep insb
    END_CASE

    CASE "insw over the canonical boundary"
    mov dx, 0x3fd
    mov rdi, EDGE + 0xfff
    mov ecx, 1
    insw
    END_CASE

    CASE "rep outsb from a non-canonical rsi"
    mov dx, 0x80
    mov rsi, 0xffff_7000_0000_0000
    mov ecx, 4
    rep outsb
    END_CASE

    ; The bases are canonical, their sums with the offsets are not: a
    ; non-canonical base cannot be had on hardware (WRMSR of one raises
    ; #GP, as Bochs does; QEMU's TCG takes it, which hid this until the
    ; VMX run).
    CASE "rep outsb where fs base + rsi is non-canonical"
    mov ecx, 0xc000_0100
    mov eax, 0xffff_f000            ; FS base EDGE: the VGA hole
    mov edx, 0x7fff
    wrmsr
    mov dx, 0x80
    mov esi, 0x1000                 ; EDGE + 0x1000 = 0x8000_0000_0000
    mov ecx, 4
    db 0x64                         ; FS
    rep outsb
    END_CASE

    CASE "mov from mmio where gs base + offset is non-canonical"
    mov ecx, 0xc000_0101
    mov eax, 0xfff6_0000            ; GS base 0x7FFF_FFF6_0000
    mov edx, 0x7fff
    wrmsr
    xor ecx, ecx
    mov rax, [gs:0xa0000]
    END_CASE

    CASE "mov to mmio over the canonical boundary"
    mov rbx, EDGE + 0xffc
    xor ecx, ecx
    mov [rbx], rax
    END_CASE

    CASE "push of mmio to a non-canonical rsp"
    xor ecx, ecx
    mov rsp, NC + 0x10
    push qword [0xa0000]
    END_CASE

    CASE "push of mmio over the canonical boundary"
    xor ecx, ecx
    mov rsp, NC + 4
    push qword [0xa0000]
    END_CASE

    mov esi, LIN(msg_done)
    call print
    ret

clear_bases:
    mov ecx, 0xc000_0100
    xor eax, eax
    xor edx, edx
    wrmsr
    mov ecx, 0xc000_0101
    wrmsr
    ret

; "noncanonical <name>: <what came> rcx <[scratch]>".
report:
    push rsi
    mov esi, LIN(msg_head)
    call print
    pop rsi
    call print
    mov rax, [last_vec]
    mov esi, LIN(msg_none)
    cmp rax, -1
    je .named
    mov esi, LIN(msg_gp)
    cmp rax, 13
    je .coded
    mov esi, LIN(msg_ss)
    cmp rax, 12
    je .coded
    mov esi, LIN(msg_vector)
    call print
    call print_hex8
    jmp .rcx
.coded:
    call print
    mov rax, [last_err]
    call print_hex16
    mov esi, LIN(msg_close)
.named:
    call print
.rcx:
    mov esi, LIN(msg_rcx)
    call print
    mov rax, [scratch]
    call print_hex8
    mov esi, LIN(crlf)
    jmp print

msg_head:   db "noncanonical ", 0
msg_none:   db ": no fault", 0
msg_gp:     db ": #GP(", 0
msg_ss:     db ": #SS(", 0
msg_close:  db ")", 0
msg_vector: db ": vector ", 0
msg_rcx:    db " rcx ", 0
msg_done:   db "noncanonical: done", 13, 10, 0

    IMAGE_END
