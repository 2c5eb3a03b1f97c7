; A firmware image for `vmm`'s virtio-blk durability test (run as
; `vmm run --bios disk_flush_virtio.bin --disk IMAGE,bus=virtio`, without
; SeaBIOS): in flat 32-bit protected mode it places the virtio-blk
; function's BAR 0 (PCI 00:04.0, the modern transport's fixed layout:
; common configuration at 0, notify at 0x3000), negotiates VERSION_1 and
; FLUSH, sets up queue 0 (8 entries) and writes sectors 16-19 (sector n
; filled with the bytes 'W', '0'+n-16) in one request, then sends a FLUSH
; request. Once the device has returned the flush with status OK it prints
; "flushed" on COM1 (or "disk error" and the step), and then spins with
; interrupts off until the host kills it.
%include "pm32_entry.inc"
%include "com1_print.inc"
%include "pci_cfg.inc"
%include "virtio_blk.inc"

    PM32_ENTRY

FN      equ 0x8000_0000 | (4 << 11)     ; bus 0, device 4, function 0
BAR     equ 0xe000_0000
NOTIFY  equ BAR + 0x3000
QDESC   equ 0x10000                     ; 8 descriptors
QAVAIL  equ 0x10800
QUSED   equ 0x11000
HDR     equ 0x12000                     ; write header
HDR2    equ 0x12100                     ; flush header
STATUS  equ 0x12200
STATUS2 equ 0x12300
DATA    equ 0x13000                     ; 4 sectors

    cld
    ; The function must be the virtio disk (1af4:1042).
    mov eax, FN
    call cfg_read
    mov esi, LIN(msg_no_disk)
    cmp eax, 0x1042_1af4
    jne fail
    ; BAR 0, then memory decoding and bus mastering.
    mov eax, FN | 0x10
    mov ecx, BAR
    call cfg_write
    mov eax, FN | 0x04
    mov ecx, 0x0006
    call cfg_write
    mov ebx, BAR
    mov byte [ebx + 0x14], 0            ; reset
    mov byte [ebx + 0x14], 3            ; ACKNOWLEDGE | DRIVER
    mov dword [ebx + 0x08], 0
    mov dword [ebx + 0x0c], 1 << 9      ; VIRTIO_BLK_F_FLUSH
    mov dword [ebx + 0x08], 1
    mov dword [ebx + 0x0c], 1           ; VIRTIO_F_VERSION_1 (bit 32)
    mov byte [ebx + 0x14], 0x0b         ; | FEATURES_OK
    mov esi, LIN(msg_features)
    test byte [ebx + 0x14], 0x08
    jz fail
    ; Queue 0: 8 entries, rings in RAM.
    VIRTIO_QUEUE0 DATA + 0x800

    ; The data: sector n holds 'W', '0'+n-16 over and over.
    mov edi, DATA
    mov ax, '0' << 8 | 'W'
.sector:
    mov ecx, 256
    rep stosw
    inc ah
    cmp ah, '4'
    jb .sector

    ; Request 1: OUT, sector 16, 2048 bytes (descriptors 0-2).
    mov dword [HDR], 1                  ; VIRTIO_BLK_T_OUT
    mov dword [HDR + 8], 16
    mov byte [STATUS], 0xff
    VIRTIO_BLK_POST HDR, DATA, 2048, 1, STATUS
    mov word [NOTIFY], 0
    mov dx, 1
    call wait_used
    mov esi, LIN(msg_write)
    jc fail
    cmp byte [STATUS], 0
    jne fail

    ; Request 2: FLUSH (descriptors 3-4).
    mov dword [HDR2], 4                 ; VIRTIO_BLK_T_FLUSH
    mov byte [STATUS2], 0xff
    mov eax, QDESC
    mov dword [eax + 48], HDR2
    mov dword [eax + 56], 16
    mov word [eax + 60], 1
    mov word [eax + 62], 4
    mov dword [eax + 64], STATUS2
    mov dword [eax + 72], 1
    mov word [eax + 76], 2
    mov word [QAVAIL + 6], 3            ; ring[1] = descriptor 3
    mov word [QAVAIL + 2], 2
    mov word [NOTIFY], 0
    mov dx, 2
    call wait_used
    mov esi, LIN(msg_flush)
    jc fail
    cmp byte [STATUS2], 0
    jne fail
    mov esi, LIN(msg_flushed)
    call print
    jmp hang

; Wait until the used ring's idx is DX; CF set on timeout.
wait_used:
    mov ecx, 0x4000_0000
.poll:
    cmp word [QUSED + 2], dx
    je .done
    pause
    loop .poll
    stc
    ret
.done:
    clc
    ret

fail:
    push esi
    mov esi, LIN(msg_error)
    call print
    pop esi
    call print
hang:
    cli
    jmp hang

    PCI_CFG

    COM1_PRINT

msg_flushed:  db "flushed", 13, 10, 0
msg_error:    db "disk error: ", 0
msg_no_disk:  db "no virtio disk at 00:04.0", 13, 10, 0
msg_features: db "FEATURES_OK refused", 13, 10, 0
msg_write:    db "write", 13, 10, 0
msg_flush:    db "flush", 13, 10, 0

    PM32_GDT
    RESET_VECTOR
