; Load an IDT with limit 0 and raise #BP: the exception cannot be
; delivered (#GP), neither can that (#DF), so the CPU shuts down.
bits 16
org 0

start:
    mov dx, 0x3f8
    mov si, message
.next:
    cs lodsb
    test al, al
    jz .fault
    out dx, al
    jmp .next
.fault:
    cs lidt [empty_idt]
    int3
    hlt

empty_idt:
    dw 0
    dd 0

message:
    db "about to triple fault", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:
    jmp start
    times 0x10000 - ($ - $$) db 0
