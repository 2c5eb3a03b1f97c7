; A firmware image for `vmm`'s in-flight snapshot test (run as `vmm run
; --bios snap_inflight.bin --cdrom CD --disk DISK,bus=virtio --serial
; stdio`, without SeaBIOS; xtask/tests/kvm_snapshot_inflight.rs). In flat
; 32-bit protected mode it drives the CD (secondary master of the PIIX3
; IDE function, bus-master DMA, IRQ 15 through the PIC) and a virtio-blk
; disk, and stops at five points where a request is in flight. At each it
; prints "stage N" on COM1 and waits for a byte on COM1: the test takes a
; snapshot there, kills `vmm`, restores the snapshot in a new `vmm` and
; sends the byte. The points:
;   1. the bus-master engine started, an ATAPI PACKET command (DMA) issued
;      and half of its 12-byte packet written;
;   2. the rest of the packet written: the data has moved, the drive's
;      interrupt is pending at the PIC with interrupts off;
;   3. a second packet command written whole, the engine not started (the
;      drive waits for it, as Linux's driver leaves it);
;   4. a virtio-blk read request posted in the available ring, not
;      notified;
;   5. notified, and the used ring seen to move (a device may complete a
;      request after the notify returns: `vmm` serves notifies on a
;      thread of its own through KVM_IOEVENTFD): the device has written
;      the used ring and set its ISR; the interrupt is not taken.
; Then it prints what it saw on one line per device, prints "done" and
; powers off (PM1a_CNT at 0x604). The CD's sector n is expected to begin
; with its text ("cd-sector-NN"), the disk's sector n likewise.
%include "pm32_entry.inc"
%include "com1_print.inc"
%include "pci_cfg.inc"
%include "virtio_blk.inc"

    PM32_ENTRY

ATA      equ 0x170                      ; secondary channel
ATA_CTL  equ 0x376
IDE_FN   equ 0x8000_0000 | (1 << 11) | (1 << 8)
BM       equ 0xc000                     ; BAR 4
BMS      equ BM + 8                     ; the secondary channel's engine
IDT      equ 0x8000
VECTOR   equ 0x77                       ; IRQ 15 with the slave PIC at 0x70
PRD      equ 0x9000                     ; two tables of one entry
BUF1     equ 0x20000
BUF2     equ 0x21000
IRQC     equ 0x500                      ; interrupts taken
IRQ_BM   equ 0x504                      ; BM status seen by the handler
IRQ_ATA  equ 0x508                      ; ATA status seen by the handler
; virtio
VBAR     equ 0xe000_0000
NOTIFY   equ VBAR + 0x3000
ISR      equ VBAR + 0x1000
QDESC    equ 0x10000
QAVAIL   equ 0x10800
QUSED    equ 0x11000
VHDR     equ 0x12000
VSTATUS  equ 0x12200
VDATA    equ 0x13000
VFN      equ 0x600                      ; the virtio function's config address

    cld
    xor eax, eax
    mov [IRQC], eax
    mov [IRQ_BM], eax
    mov [IRQ_ATA], eax
    mov edi, BUF1
    mov ecx, 0x2000 / 4
    rep stosd

    ; The IDE function: I/O space and bus mastering, BAR 4, both channels'
    ; legacy decode.
    mov eax, IDE_FN | 0x20
    mov ecx, BM | 1
    call cfg_write
    mov eax, IDE_FN | 0x04
    mov ecx, 0x0005
    call cfg_write
    mov eax, IDE_FN | 0x40
    mov ecx, 0x8000_8000
    call cfg_write

    ; The PICs: master at 0x08, slave at 0x70; only IRQ 2 and IRQ 15 open.
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x08
    out 0x21, al
    mov al, 0x70
    out 0xa1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xa1, al
    mov al, 0x01
    out 0x21, al
    out 0xa1, al
    mov al, 0xfb
    out 0x21, al
    mov al, 0x7f
    out 0xa1, al

    ; An IDT with the one gate.
    mov edi, IDT
    mov ecx, 256 * 2
    xor eax, eax
    rep stosd
    mov eax, LIN(irq15)
    mov word [IDT + VECTOR * 8], ax
    mov word [IDT + VECTOR * 8 + 2], 0x08
    mov word [IDT + VECTOR * 8 + 4], 0x8e00
    shr eax, 16
    mov word [IDT + VECTOR * 8 + 6], ax
    lidt [LIN(idt_ptr)]

    ; nIEN clear: the drive interrupts.
    mov dx, ATA_CTL
    xor al, al
    out dx, al
    mov dx, ATA + 6
    mov al, 0xa0                        ; master
    out dx, al

    ; PRD tables: BUF1 and BUF2, 2048 bytes each, end of table.
    mov dword [PRD], BUF1
    mov dword [PRD + 4], 0x8000_0800
    mov dword [PRD + 16], BUF2
    mov dword [PRD + 20], 0x8000_0800

    ; Read 1 (CD sector 5): the engine first, then the command.
    mov eax, PRD
    call engine_start
    call packet_command
    mov esi, LIN(packet1)
    mov ecx, 3
    call packet_words
    push esi
    mov esi, LIN(msg_stage1)
    call wait_key
    pop esi
    mov ecx, 3
    call packet_words
    call wait_not_busy
    mov esi, LIN(msg_stage2)
    call wait_key
    mov ebx, 1
    call take_interrupt
    call engine_stop

    ; Read 2 (CD sector 9): the command first; the engine after stage 3.
    call packet_command
    mov esi, LIN(packet2)
    mov ecx, 6
    call packet_words
    mov esi, LIN(msg_stage3)
    call wait_key
    mov eax, PRD + 16
    call engine_start
    mov ebx, 2
    call take_interrupt
    call engine_stop

    ; What the IDE reads gave.
    mov esi, LIN(msg_ide)
    call print
    mov esi, BUF1
    call show_buffer
    mov esi, BUF2
    call show_buffer
    mov esi, LIN(msg_irqs)
    call print
    mov eax, [IRQC]
    call hex8
    mov esi, LIN(msg_bm)
    call print
    mov eax, [IRQ_BM]
    call hex8
    mov esi, LIN(msg_ata)
    call print
    mov eax, [IRQ_ATA]
    call hex8
    call newline

    call virtio
    mov esi, LIN(msg_done)
    call print
    PM32_POWER_OFF

; --- IDE -----------------------------------------------------------------

; Start the secondary engine on the PRD table at EAX (device to memory).
engine_start:
    mov dx, BMS + 4
    out dx, eax
    mov dx, BMS + 2
    mov al, 0x06                        ; clear interrupt and error
    out dx, al
    mov dx, BMS
    mov al, 0x09                        ; start, write to memory
    out dx, al
    ret

engine_stop:
    mov dx, BMS
    mov al, 0x08
    out dx, al
    ret

; PACKET with the DMA feature; returns once the drive asks for the packet.
packet_command:
    mov dx, ATA + 1
    mov al, 0x01
    out dx, al
    mov dx, ATA + 7
    mov al, 0xa0
    out dx, al
    mov dx, ATA_CTL
.poll:
    in al, dx
    test al, 0x80
    jnz .poll
    test al, 0x08
    jz .poll
    ret

; Write ECX words from ESI to the data port.
packet_words:
    mov dx, ATA
.next:
    lodsw
    out dx, ax
    loop .next
    ret

; Wait until the drive is neither busy nor asking for data (alternate
; status, which does not acknowledge the interrupt).
wait_not_busy:
    mov dx, ATA_CTL
.poll:
    in al, dx
    test al, 0x88
    jnz .poll
    ret

; Open interrupts until the handler has counted EBX of them (or a while
; has passed), then close them again.
take_interrupt:
    mov ecx, 0x100_0000
    sti
.wait:
    cmp [IRQC], ebx
    jae .done
    pause
    loop .wait
.done:
    cli
    ret

irq15:
    push eax
    push edx
    mov dx, BMS + 2
    in al, dx
    mov [IRQ_BM], al
    mov dx, ATA + 7                     ; acknowledges the drive
    in al, dx
    mov [IRQ_ATA], al
    mov dx, BMS + 2
    mov al, 0x04
    out dx, al
    inc dword [IRQC]
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    pop edx
    pop eax
    iret

; Print " " + the first 12 bytes of the buffer at ESI + " " + the sum of
; its 512 dwords.
show_buffer:
    push esi
    mov al, ' '
    call putc
    mov ecx, 12
.text:
    COM1_PUT_SHOWN
    loop .text
    mov al, ' '
    call putc
    pop esi
    xor edx, edx
    mov ecx, 512
.sum:
    lodsd
    add edx, eax
    loop .sum
    mov eax, edx
    jmp hex32

; --- virtio-blk ----------------------------------------------------------

virtio:
    ; Find 1af4:1042 on bus 0.
    mov ebx, 0x8000_0000
.scan:
    mov eax, ebx
    call cfg_read
    cmp eax, 0x1042_1af4
    je .found
    add ebx, 1 << 11
    cmp ebx, 0x8000_0000 | (32 << 11)
    jb .scan
    mov esi, LIN(msg_no_virtio)
    jmp print
.found:
    mov [VFN], ebx
    PCI_MEM_BAR0 VBAR
    VIRTIO_VERSION_1 VBAR
    VIRTIO_QUEUE0 VDATA + 0x200

    ; IN, sector 3, 512 bytes: descriptors 0-2, posted, not notified.
    mov dword [VHDR], 0
    mov dword [VHDR + 8], 3
    mov byte [VSTATUS], 0xff
    VIRTIO_BLK_POST VHDR, VDATA, 512, 3, VSTATUS  ; data: NEXT | WRITE
    mov esi, LIN(msg_stage4)
    call wait_key
    mov word [NOTIFY], 0
    ; Wait (a bounded spin) for the used index to move; if it never
    ; does, the report below says so.
    mov ecx, 0x4000000
.wait_used:
    cmp word [QUSED + 2], 0
    jne .used
    pause
    dec ecx
    jnz .wait_used
.used:
    mov esi, LIN(msg_stage5)
    call wait_key

    ; What the request gave: used index and length, status, data, the
    ; function's interrupt status bit, the ISR read twice (read clears).
    mov esi, LIN(msg_virtio)
    call print
    movzx eax, word [QUSED + 2]
    call hex8
    mov al, ' '
    call putc
    mov eax, [QUSED + 8]
    call hex32
    mov al, ' '
    call putc
    movzx eax, byte [VSTATUS]
    call hex8
    mov al, ' '
    call putc
    mov esi, VDATA
    mov ecx, 12
.text:
    COM1_PUT_SHOWN
    loop .text
    mov esi, LIN(msg_intx)
    call print
    mov eax, [VFN]
    or eax, 0x04
    call cfg_read
    shr eax, 16 + 3
    and eax, 1
    call hex8
    mov esi, LIN(msg_isr)
    call print
    movzx eax, byte [ISR]
    call hex8
    mov al, ' '
    call putc
    movzx eax, byte [ISR]
    call hex8
    jmp newline

; --- helpers -------------------------------------------------------------

    PCI_CFG

; Print the string at ESI, then wait for a byte on COM1.
wait_key:
    call print
    mov dx, COM1 + 5
.poll:
    in al, dx
    test al, 0x01
    jz .poll
    mov dx, COM1
    in al, dx
    ret

    COM1_PUTC_HEX

    align 4
; READ(10) of one sector: LBA 5, then LBA 9.
packet1:    db 0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0, 0, 0
packet2:    db 0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0
idt_ptr:    dw VECTOR * 8 + 7
            dd IDT
msg_stage1: db "stage 1", 13, 10, 0
msg_stage2: db "stage 2", 13, 10, 0
msg_stage3: db "stage 3", 13, 10, 0
msg_stage4: db "stage 4", 13, 10, 0
msg_stage5: db "stage 5", 13, 10, 0
msg_ide:    db "ide:", 0
msg_irqs:   db " irqs ", 0
msg_bm:     db " bm ", 0
msg_ata:    db " ata ", 0
msg_virtio: db "virtio: used ", 0
msg_intx:   db " intx ", 0
msg_isr:    db " isr ", 0
msg_no_virtio: db "virtio: no disk", 13, 10, 0
msg_done:   db "done", 13, 10, 0

    PM32_GDT
    RESET_VECTOR
