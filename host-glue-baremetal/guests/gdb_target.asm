; A guest program for gdb (`gdb=com2`, xtask/tests/gdb_guest.rs): from the
; reset vector to flat 32-bit protected mode, it copies its code to RAM at
; 0x10000 (so gdb can plant INT3s in it) and runs it there: `tick`
; increments the dword `counter` until it reaches the dword `limit` (5),
; then the program prints `gdb_target: done` and powers off (on the bare-metal
; host and under `vmm run --bios`). The RAM part is in
; gdb_target_ram.inc, whose symbols xtask also assembles into
; target/guests/gdb_target.o for gdb.
%include "pm32_entry.inc"

RAM_CODE equ 0x10000        ; where the RAM part runs
RAM_IMAGE equ 0x1000        ; where it sits in this image

section .text start=0
PM32_ENTRY
    mov esi, LIN(RAM_IMAGE)
    mov edi, RAM_CODE
    mov ecx, ram_end - main_loop
    cld
    rep movsb
    mov eax, RAM_CODE
    jmp eax
PM32_GDT

section ram start=RAM_IMAGE vstart=RAM_CODE
%include "gdb_target_ram.inc"

section reset start=0xfff0
bits 16
reset:
    jmp 0xf000:start
    times 0x10 - ($ - $$) db 0
