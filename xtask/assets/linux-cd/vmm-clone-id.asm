; vmm-clone-id: print which clone this VM is, as the VMM put it in CMOS:
; "FLAG INDEX\n", FLAG being CMOS byte 0x61 (1 in a clone of the bare-metal
; host's `clones=N`, 0 otherwise) and INDEX byte 0x60 (the clone's index).
; A static x86-64 Linux program for the clones CD's init (busybox has no
; port I/O, and the Debian cloud kernel has no /dev/port): iopl(3), then
; index to port 0x70 and value from 0x71. Exits 1 if iopl is refused.
; Build: nasm -f elf64 vmm-clone-id.asm && ld -static -o vmm-clone-id vmm-clone-id.o

bits 64
global _start

section .bss
buf:    resb 16

section .text
_start:
        mov     eax, 172                ; iopl
        mov     edi, 3
        syscall
        test    rax, rax
        jnz     .fail
        lea     rdi, [rel buf]
        mov     al, 0x61
        call    cmos_decimal
        mov     byte [rdi], ' '
        inc     rdi
        mov     al, 0x60
        call    cmos_decimal
        mov     byte [rdi], 10
        inc     rdi
        lea     rsi, [rel buf]
        mov     rdx, rdi
        sub     rdx, rsi
        mov     eax, 1                  ; write(1, buf, len)
        mov     edi, 1
        syscall
        mov     eax, 60                 ; exit(0)
        xor     edi, edi
        syscall
.fail:
        mov     eax, 60                 ; exit(1)
        mov     edi, 1
        syscall

; Read CMOS byte AL and append it in decimal at RDI (advanced past it).
cmos_decimal:
        out     0x70, al
        in      al, 0x71
        movzx   eax, al
        mov     ecx, 100
        xor     r8d, r8d                ; a digit written yet
.digit:
        xor     edx, edx
        div     ecx                     ; eax = digit, edx = rest
        test    r8d, r8d
        jnz     .put
        test    eax, eax
        jnz     .put
        cmp     ecx, 1
        jne     .next
.put:
        add     al, '0'
        mov     [rdi], al
        inc     rdi
        mov     r8d, 1
.next:
        mov     eax, edx
        push    rax
        mov     eax, ecx
        xor     edx, edx
        mov     ecx, 10
        div     ecx
        mov     ecx, eax
        pop     rax
        test    ecx, ecx
        jnz     .digit
        ret
