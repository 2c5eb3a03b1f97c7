; A firmware image for `vmm`'s clone test (run as `vmm run --memory 32M
; --bios clone_id.bin --disk DISK,bus=virtio,readonly=on --serial stdio
; [--net tap=NAME]`, without SeaBIOS; xtask/tests/kvm_clones.rs). In flat
; 32-bit protected mode it fills 4 MiB at 8 MiB with dword i = i *
; 0x9e3779b1 (this machine's KVM takes about 15 ms per first touch of a
; page, so a few MiB is what a test can afford), sets up the virtio-blk disk's queue and places the
; virtio-net card's BAR (if there is a card), prints "clone-id: ready" and
; polls CMOS byte 0x61 until it reads 1 (a restored `vmm run --clone K`;
; the saved VM never sees it). Then, as clone K (CMOS byte 0x60), it
; XORs every dword of the first 256 KiB of the buffer with K * 0x01010101,
; hashes the first 1 MiB (h = (rol(h, 5) ^ dword) * 0x01000193, from 0), asks the
; virtio disk for its ID (GET_ID), the CD drive (IDE secondary master)
; for IDENTIFY PACKET DEVICE and reads the card's MAC from its
; configuration, and prints one line:
;   clone KK: mac M ide SERIAL blk ID sum HHHHHHHH
; (KK and HHHHHHHH hex, M "none" without a card, SERIAL and ID with
; their padding left out), then "clone KK: waiting", waits for a byte on
; COM1 and powers off (PM1a_CNT at 0x604).
%include "pm32_entry.inc"
%include "com1_print.inc"
%include "pci_cfg.inc"
%include "virtio_blk.inc"

    PM32_ENTRY

BUF      equ 0x80_0000
BUF_LEN  equ 4 << 20
HASH_LEN equ 1 << 20
OWN_LEN  equ 256 << 10
IDE_FN   equ 0x8000_0000 | (1 << 11) | (1 << 8)
ATA      equ 0x170
ATA_CTL  equ 0x376
VBAR     equ 0xe000_0000                ; the disk's BAR 0
NOTIFY   equ VBAR + 0x3000
NBAR     equ 0xe001_0000                ; the card's BAR 0
NCONFIG  equ NBAR + 0x2000
QDESC    equ 0x10000
QAVAIL   equ 0x10800
QUSED    equ 0x11000
VHDR     equ 0x12000
VSTATUS  equ 0x12200
VDATA    equ 0x13000
IDBUF    equ 0x14000
HAS_NET  equ 0x500
INDEX    equ 0x504

    cld
    ; The parent's data: dword i = i * 0x9e3779b1.
    mov edi, BUF
    xor eax, eax
    mov ecx, BUF_LEN / 4
.fill:
    stosd
    add eax, 0x9e3779b1
    loop .fill

    ; The IDE function: I/O space, both channels' legacy ports.
    mov eax, IDE_FN | 0x04
    mov ecx, 0x0001
    call cfg_write
    mov eax, IDE_FN | 0x40
    mov ecx, 0x8000_8000
    call cfg_write
    mov dx, ATA_CTL
    mov al, 0x02                        ; nIEN: no interrupts
    out dx, al

    call disk_setup
    call net_setup

    mov esi, LIN(msg_ready)
    call print
.poll:
    mov al, 0x61
    out 0x70, al
    in al, 0x71
    cmp al, 1
    je .clone
    pause
    jmp .poll

.clone:
    mov al, 0x60
    out 0x70, al
    in al, 0x71
    movzx eax, al
    mov [INDEX], eax
    ; Write this clone's own data over the first 256 KiB.
    imul ebx, eax, 0x01010101
    mov edi, BUF
    mov ecx, OWN_LEN / 4
.own:
    xor [edi], ebx
    add edi, 4
    loop .own

    call prefix
    mov esi, LIN(msg_mac)
    call print
    call show_mac
    mov esi, LIN(msg_ide)
    call print
    call show_ide_serial
    mov esi, LIN(msg_blk)
    call print
    call show_blk_id
    mov esi, LIN(msg_sum)
    call print
    ; h = (rol(h, 5) ^ dword) * 0x01000193 over the first 1 MiB.
    mov esi, BUF
    mov ecx, HASH_LEN / 4
    xor edx, edx
.hash:
    rol edx, 5
    xor edx, [esi]
    imul edx, edx, 0x01000193
    add esi, 4
    loop .hash
    mov eax, edx
    call hex32
    call newline
    call prefix
    mov esi, LIN(msg_waiting)
    call print
    mov dx, COM1 + 5
.key:
    in al, dx
    test al, 0x01
    jz .key
    PM32_POWER_OFF

; "clone KK: "
prefix:
    mov esi, LIN(msg_clone)
    call print
    mov eax, [INDEX]
    call hex8
    mov al, ':'
    call putc
    mov al, ' '
    jmp putc

; --- virtio-net ------------------------------------------------------------

net_setup:
    mov dword [HAS_NET], 0
    mov eax, 0x1041_1af4
    call find_function
    test ebx, ebx
    jz .none
    PCI_MEM_BAR0 NBAR
    mov dword [HAS_NET], 1
.none:
    ret

show_mac:
    cmp dword [HAS_NET], 0
    jne .card
    mov esi, LIN(msg_none)
    jmp print
.card:
    mov esi, NCONFIG
    mov ecx, 6
    jmp .byte
.next:
    mov al, ':'
    call putc
.byte:
    lodsb
    call hex8
    loop .next
    ret

; --- IDE -------------------------------------------------------------------

; IDENTIFY PACKET DEVICE of the secondary master; print words 10-19 (two
; characters each, the high byte first) without trailing spaces.
show_ide_serial:
    mov dx, ATA + 6
    mov al, 0xa0
    out dx, al
    mov dx, ATA + 7
    mov al, 0xa1
    out dx, al
    mov dx, ATA_CTL
    mov ecx, 0x1000000
.busy:
    in al, dx
    test al, 0x80
    jz .ready
    loop .busy
.ready:
    test al, 0x08
    jnz .data
    mov esi, LIN(msg_none)
    jmp print
.data:
    mov dx, ATA
    mov edi, IDBUF
    mov ecx, 256
.word:
    in ax, dx
    xchg al, ah
    stosw
    loop .word
    mov esi, IDBUF + 20
    mov ecx, 20
    jmp print_padded

; --- virtio-blk ------------------------------------------------------------

; EBX = the config address of the first function of bus 0 whose vendor
; and device are EAX, or 0.
find_function:
    push eax
    mov ebx, 0x8000_0000
.scan:
    mov eax, ebx
    call cfg_read
    cmp eax, [esp]
    je .found
    add ebx, 1 << 11
    cmp ebx, 0x8000_0000 | (32 << 11)
    jb .scan
    xor ebx, ebx
.found:
    pop eax
    ret

disk_setup:
    mov eax, 0x1042_1af4
    call find_function
    test ebx, ebx
    jz .none
    PCI_MEM_BAR0 VBAR
    VIRTIO_VERSION_1 VBAR
    VIRTIO_QUEUE0 IDBUF
.none:
    ret

; GET_ID: header, 20 bytes the device writes, status; print the ID up to
; its first zero.
show_blk_id:
    mov dword [VHDR], 8                 ; VIRTIO_BLK_T_GET_ID
    mov dword [VHDR + 8], 0
    mov byte [VSTATUS], 0xff
    VIRTIO_BLK_POST VHDR, VDATA, 20, 3, VSTATUS  ; data: NEXT | WRITE
    mov word [NOTIFY], 0
    ; The device completes after the notify returns (KVM_IOEVENTFD):
    ; wait, bounded, for the used index to move.
    mov ecx, 0x10000000
.wait:
    cmp word [QUSED + 2], 0
    jne .used
    pause
    loop .wait
.used:
    cmp byte [VSTATUS], 0
    je .ok
    mov esi, LIN(msg_none)
    jmp print
.ok:
    mov esi, VDATA
    mov ecx, 20
    ; fall through

; Print ECX bytes at ESI, leaving out trailing spaces and zeros.
print_padded:
    lea edi, [esi + ecx]
.trim:
    cmp edi, esi
    je .out
    mov al, [edi - 1]
    cmp al, ' '
    je .drop
    test al, al
    jnz .out
.drop:
    dec edi
    jmp .trim
.out:
    cmp esi, edi
    je .done
    COM1_PUT_SHOWN
    jmp .out
.done:
    ret

; --- helpers ---------------------------------------------------------------

    PCI_CFG

    COM1_PUTC_HEX

msg_ready:   db "clone-id: ready", 13, 10, 0
msg_clone:   db "clone ", 0
msg_mac:     db "mac ", 0
msg_ide:     db " ide ", 0
msg_blk:     db " blk ", 0
msg_sum:     db " sum ", 0
msg_none:    db "none", 0
msg_waiting: db "waiting", 13, 10, 0

    PM32_GDT
    RESET_VECTOR
