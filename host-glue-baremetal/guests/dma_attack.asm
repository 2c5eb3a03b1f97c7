; Aim IDE bus-master DMA (READ DMA of one disk sector) at ROM, at the VGA
; hole (no memory, no device), past the end of RAM, and finally at RAM.
; The first three must be refused with an error status and write nothing;
; the last must land the disk's first sector. The disk is the primary
; master; the bus-master block is at 0xC000.
bits 16
org 0

prd   equ 0x3000
BM    equ 0xc000

start:
    jmp 0xf000:main
main:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00

    mov si, name_rom
    mov ebx, 0xf0000
    call attempt
    mov si, name_mmio
    mov ebx, 0xa0000
    call attempt
    mov si, name_past
    mov ebx, 0x10000000
    call attempt
    mov si, name_ram
    mov ebx, 0x8000
    call attempt

    ; The sector landed in RAM: the disk image starts with "DISK".
    mov si, data_bad
    cmp dword [0x8000], 'DISK'
    jne .say
    mov si, data_ok
.say:
    call print
    ; The VGA hole still reads all-ones, the ROM still holds its code.
    mov si, hole_bad
    push ds
    mov ax, 0xa000
    mov ds, ax
    cmp dword [0], 0xffffffff
    pop ds
    jne .say2
    mov si, hole_ok
.say2:
    call print

    mov dx, 0xb004
    mov ax, 0x2000
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

; DMA one sector from LBA 0 to physical EBX; print "<name>: refused/done".
attempt:
    call print
    mov dword [prd], ebx
    mov dword [prd + 4], 0x80000200     ; 512 bytes, end of table
    mov dx, BM + 4
    mov eax, prd
    out dx, eax
    mov dx, BM + 2                      ; clear error and interrupt
    mov al, 0x06
    out dx, al
    mov dx, BM
    mov al, 0x08                        ; direction: device to memory
    out dx, al
    mov dx, 0x1f6
    mov al, 0xe0                        ; LBA, master
    out dx, al
    mov dx, 0x1f2
    mov al, 1
    out dx, al
    mov dx, 0x1f3
    xor al, al
    out dx, al
    inc dx
    out dx, al
    inc dx
    out dx, al
    mov dx, 0x1f7
    mov al, 0xc8                        ; READ DMA
    out dx, al
    mov dx, BM
    mov al, 0x09                        ; start, device to memory
    out dx, al
    mov cx, 1000
.wait:
    mov dx, BM + 2
    in al, dx
    test al, 0x01                       ; still active?
    jz .settled
    loop .wait
.settled:
    mov bl, al                          ; bus-master status
    mov dx, BM
    xor al, al                          ; stop the engine
    out dx, al
    mov dx, 0x1f7
    in al, dx                           ; ATA status (clears the interrupt)
    mov si, refused
    test bl, 0x02                       ; bus-master error
    jnz .report
    test al, 0x01                       ; ATA error
    jnz .report
    mov si, done
.report:
    jmp print                           ; tail call

print:
    mov dx, 0x3f8
.next:
    cs lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    ret

name_rom:  db "dma to rom: ", 0
name_mmio: db "dma to the vga hole: ", 0
name_past: db "dma past the end of ram: ", 0
name_ram:  db "dma to ram: ", 0
refused:   db "refused", 13, 10, 0
done:      db "done", 13, 10, 0
data_ok:   db "ram holds the disk sector", 13, 10, 0
data_bad:  db "ram does NOT hold the disk sector", 13, 10, 0
hole_ok:   db "the vga hole still reads all-ones", 13, 10, 0
hole_bad:  db "the vga hole was written", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
