//! From the boot loader to Rust: the multiboot2 header (GRUB), the
//! multiboot1 header (QEMU's `-kernel`), and the 32-bit entry that builds
//! identity page tables for the low 64 GiB, enters long mode and calls
//! `kmain(magic, info)`.

use core::arch::global_asm;

// The multiboot2 header (no optional tags: GRUB loads our ELF segments and
// enters `_start32` with EAX = magic, EBX = boot information, paging off).
global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header
    .long -(0xe85250d6 + (mb2_header_end - mb2_header))
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:
"#
);

// The multiboot1 header, for QEMU's `-kernel`, which loads multiboot1
// kernels only and ELF images only if they are 32-bit: the "a.out kludge"
// (flag 16) gives the load addresses, so QEMU copies the image as it lies
// in the file (the linker script keeps file offsets and addresses in step)
// and clears the BSS. Flags 0 and 1: modules page-aligned, memory map
// wanted. Entered like multiboot2, with EAX = 0x2BADB002.
global_asm!(
    r#"
    .section .multiboot1, "a"
    .balign 4
mb1_header:
    .long 0x1badb002
    .long 0x00010003
    .long -(0x1badb002 + 0x00010003)
    .long mb1_header
    .long __kernel_start
    .long __load_end
    .long __kernel_end
    .long _start32
"#
);

// 32-bit entry: page tables, long mode, stack, Rust.
global_asm!(
    r#"
    .section .boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov edi, eax
    mov esi, ebx

    /* PML4[0] -> PDPT; PDPT[0..64] -> 64 page directories of 2 MiB pages:
       the low 64 GiB 1:1 (heap::IDENTITY_MAPPED). */
    mov eax, offset boot_pdpt
    or eax, 3
    mov [boot_pml4], eax
    xor ecx, ecx
1:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 64
    jne 1b
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [boot_pd + ecx * 8], eax
    /* high half of the entry: bits 32+ of the 2 MiB frame */
    mov eax, ecx
    shr eax, 11
    mov [boot_pd + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 32768
    jne 2b

    mov eax, offset boot_pml4
    mov cr3, eax
    /* CR4.PGE/PSE and CR0.WP as a 64-bit Linux sets them. Besides being
       what a kernel wants, this matters under QEMU TCG: it flushes its
       whole TLB and jump cache on every change of CR0.PG/WP/PE or
       CR4.PGE/PAE/PSE, and VMRUN and #VMEXIT change them whenever host
       and guest differ. With a Linux guest matching, a world switch pair
       costs about 30 us instead of 35-45 us. */
    mov eax, cr4
    or eax, 0xb0            /* PAE | PGE | PSE */
    mov cr4, eax
    mov ecx, 0xC0000080     /* EFER */
    rdmsr
    or eax, 0x100           /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001      /* PG | WP | PE */
    mov cr0, eax
    lgdt [boot_gdt_ptr]
    /* ljmp 0x08:start64, encoded by hand (jmp ptr16:32) */
    .byte 0xea
    .long start64
    .short 0x08

    .code64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    mov edi, edi
    mov esi, esi
    call kmain
3:
    hlt
    jmp 3b

    .section .rodata
    .balign 16
    /* The application processors' trampoline (smp.rs) uses these too. */
    .global boot_gdt_ptr
    .global boot_pml4
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_ptr:
    .short boot_gdt_ptr - boot_gdt - 1
    .quad boot_gdt

    .section .bss
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 64
boot_stack:
    .skip 1024 * 256
boot_stack_top:
"#
);
