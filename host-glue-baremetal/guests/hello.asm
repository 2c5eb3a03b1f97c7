; Print a line on COM1, then power off through ACPI (PM1_CNT, SLP_EN).
bits 16
org 0

start:
    mov dx, 0x3f8
    mov si, message
.next:
    cs lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    mov dx, 0xb004          ; PM1a_CNT
    mov ax, 0x2000          ; SLP_EN, SLP_TYP 0 = S5 on PIIX4
    out dx, ax
.hang:
    cli
    hlt
    jmp .hang

message:
    db "hello from a guest under SVM", 13, 10, 0

    times 0xfff0 - ($ - $$) db 0
reset:                      ; F000:FFF0
    jmp start
    times 0x10000 - ($ - $$) db 0
