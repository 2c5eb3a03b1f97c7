; vmm-randio: 4 KiB random reads or writes on /dev/vda, bypassing the page
; cache (O_DIRECT), for `cargo xtask bench virtio` (busybox has no fio, and
; a shell loop of dd would measure process start-up, not the disk).
;
;   vmm-randio r    2048 reads  of 4 KiB at random 4 KiB offsets
;   vmm-randio w    2048 writes of 4 KiB at random 4 KiB offsets
;
; The offsets fall in the disk's first 64 MiB, from a fixed linear
; congruential sequence, so every run and every VMM sees the same requests.
; Exit status: 0 done, 1 bad arguments, 2 open failed, 3 an I/O failed.
; A static x86-64 Linux program: nasm -f elf64, ld -static.

bits 64
global _start

%define OPS        2048
%define BLOCKS     16384            ; 64 MiB in 4 KiB blocks (a power of two)
%define O_RDWR     2
%define O_DIRECT   0x4000
%define SYS_PREAD  17
%define SYS_PWRITE 18
%define SYS_OPEN   2
%define SYS_EXIT   60

section .rodata
path:   db "/dev/vda", 0

section .bss
alignb 4096
buf:    resb 4096

section .text
_start:
        mov     rax, [rsp]              ; argc
        cmp     rax, 2
        jne     .usage
        mov     rsi, [rsp + 16]         ; argv[1]
        movzx   eax, byte [rsi]
        cmp     byte [rsi + 1], 0
        jne     .usage
        mov     r12d, SYS_PREAD
        cmp     al, 'r'
        je      .open
        mov     r12d, SYS_PWRITE
        cmp     al, 'w'
        jne     .usage
        ; Something other than zeros to write.
        lea     rdi, [rel buf]
        mov     ecx, 4096
        mov     al, 0xa5
        rep     stosb
.open:
        mov     eax, SYS_OPEN
        lea     rdi, [rel path]
        mov     esi, O_RDWR | O_DIRECT
        xor     edx, edx
        syscall
        test    rax, rax
        js      .no_open
        mov     r13, rax                ; fd
        mov     r14d, OPS               ; requests left
        mov     r15d, 12345             ; the sequence's state
.next:
        imul    r15d, r15d, 1103515245
        add     r15d, 12345
        mov     r10d, r15d
        shr     r10d, 16
        and     r10d, BLOCKS - 1
        shl     r10, 12                 ; byte offset
        mov     eax, r12d
        mov     rdi, r13
        lea     rsi, [rel buf]
        mov     edx, 4096
        syscall
        cmp     rax, 4096
        jne     .io_failed
        dec     r14d
        jnz     .next
        xor     edi, edi
        jmp     .exit
.usage:
        mov     edi, 1
        jmp     .exit
.no_open:
        mov     edi, 2
        jmp     .exit
.io_failed:
        mov     edi, 3
.exit:
        mov     eax, SYS_EXIT
        syscall
