; Differential: instructions that reach the VMM's emulator because their
; memory is MMIO, against plain QEMU. QEMU's pc-testdev (the VMM's with
; testdev=1) has 64 KiB of memory-like MMIO at 0xff000000, as
; kvm-unit-tests uses it:
;  - a stack in MMIO: PUSH imm8, imm32, reg, FS, word imm; ENTER/LEAVE at
;    nesting levels 0 and 2;
;  - SGDT, SIDT, STR, SLDT to MMIO; LTR from MMIO (the TSS becomes busy),
;    again (busy: #GP with the selector), LLDT of a null selector;
;  - x87 stores to MMIO (FST m32/m64, FIST, FISTTP, FSTP m80, FNSTSW,
;    FNSTCW) and an FSTP to unassigned memory in the PCI hole (the write
;    dropped, the pop made; what such memory reads is not compared: QEMU
;    gives 0, the VMM all-ones as a PC does);
;  - MMX MOVQ/MOVD between MMX registers and MMIO, with TOP moved by two
;    FLD1s first: the value of the aliased physical register, and the x87
;    status and tag words after (MMX state: TOP 0, every tag valid). (The
;    exponent field an MMX load sets to all ones on hardware is left out:
;    QEMU's TCG leaves it alone; vmm-core/tests/emulator_mmx.rs checks it.)
; One line per observation, then `mmio emulation: done`.
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"
%include "diff.inc"

IOMEM   equ 0xff00_0000
fpu_env equ 0x22000             ; FNSTENV image (28 bytes)

; Print the string at %1 and the 64-bit value in RAX.
%macro SHOW 1
    mov esi, LIN(%1)
    call show
%endmacro

show:
    push rax
    call print
    pop rax
    call print_hex64
    mov esi, LIN(crlf)
    jmp print

test_main:
    call pm_on
    ; Fill the MMIO window's first pages with a pattern.
    mov r15, IOMEM              ; the window, base of every access below
    mov rdi, r15
    mov rax, 0x5555_5555_5555_5555
    mov ecx, 0x4000 / 8
    rep stosq
    mov ax, 0x10
    mov fs, ax

    ; -- A stack in MMIO.
    mov rbx, rsp
    lea rsp, [r15 + 0x1000]
    push -7
    push 0x1234_5678
    mov rax, 0x1122_3344_5566_7788
    push rax
    push fs
    db 0x66, 0x6a, 0xfe         ; push word -2
    mov rcx, rsp
    mov rsp, rbx
    mov rax, rcx
    SHOW msg_rsp_after_pushes
    mov rax, [r15 + 0x1000 - 8]
    SHOW msg_push_imm8
    mov rax, [r15 + 0x1000 - 16]
    SHOW msg_push_imm32
    mov rax, [r15 + 0x1000 - 24]
    SHOW msg_push_reg
    mov rax, [r15 + 0x1000 - 32]
    SHOW msg_push_fs
    mov rax, [r15 + 0x1000 - 40]
    SHOW msg_push_word

    mov rbx, rsp
    mov rbp, 0xaabb_ccdd_1122_3344
    lea rsp, [r15 + 0x2000]
    enter 0x20, 0
    mov r8, rsp
    mov r9, rbp
    leave
    mov r10, rsp
    mov r11, rbp
    ; Level 2: one outer frame pointer copied from [rbp - 8].
    lea rbp, [r15 + 0x3000]
    mov qword [r15 + 0x3000 - 8], 0x6666
    lea rsp, [r15 + 0x2800]
    enter 0x10, 2
    mov r12, rsp
    mov r13, rbp
    mov rsp, rbx
    mov rax, r8
    SHOW msg_enter_rsp
    mov rax, r9
    SHOW msg_enter_rbp
    mov rax, [r15 + 0x2000 - 8]
    SHOW msg_enter_saved
    mov rax, r10
    SHOW msg_leave_rsp
    mov rax, r11
    SHOW msg_leave_rbp
    mov rax, r12
    SHOW msg_enter2_rsp
    mov rax, r13
    SHOW msg_enter2_rbp
    mov rax, [r15 + 0x2800 - 16]
    SHOW msg_enter2_outer
    mov rax, [r15 + 0x2800 - 24]
    SHOW msg_enter2_frame

    ; -- Descriptor tables.
    sgdt [r15 + 0x100]
    sidt [r15 + 0x110]
    str [r15 + 0x120]
    sldt [r15 + 0x130]
    mov rax, [r15 + 0x100]
    SHOW msg_sgdt
    movzx eax, word [r15 + 0x108]
    SHOW msg_sgdt_high
    mov rax, [r15 + 0x110]
    SHOW msg_sidt
    mov rax, [r15 + 0x120]
    SHOW msg_str
    mov rax, [r15 + 0x130]
    SHOW msg_sldt
    and byte [gdt_ram + 0x25], ~2      ; the TSS available again
    mov word [r15 + 0x140], 0x20
    ltr [r15 + 0x140]
    movzx eax, byte [gdt_ram + 0x25]
    SHOW msg_ltr_type
    mov rax, LIN(.after_busy)
    call arm
    ltr [r15 + 0x140]
.after_busy:
    mov qword [resume], 0
    mov rax, [last_vec]
    SHOW msg_ltr_busy_vector
    mov rax, [last_err]
    SHOW msg_ltr_busy_error
    mov word [r15 + 0x150], 0
    lldt [r15 + 0x150]
    xor eax, eax
    sldt ax
    SHOW msg_lldt_null

    ; -- MMX.
    mov rax, cr0
    and al, ~0x0c               ; EM, TS clear
    or al, 0x20                 ; NE
    mov cr0, rax
    fninit
    fld1
    fld1                        ; TOP = 6: 1.0 in physical registers 6 and 7
    movq [r15 + 0x200], mm7
    fnstenv [fpu_env]
    mov rax, [r15 + 0x200]
    SHOW msg_movq_store
    movzx eax, word [fpu_env + 4]
    SHOW msg_fsw
    movzx eax, word [fpu_env + 8]
    SHOW msg_ftw
    mov rax, 0x8070_6050_4030_2010
    mov [r15 + 0x208], rax
    movq mm3, [r15 + 0x208]
    movd mm4, [r15 + 0x20c]
    movq rax, mm3
    SHOW msg_movq_load
    movq rax, mm4
    SHOW msg_movd_load
    movd [r15 + 0x210], mm3
    mov rax, [r15 + 0x210]
    SHOW msg_movd_store
    emms

    ; -- x87 stores to MMIO, and one to the VGA hole (nothing there: the
    ; write is dropped, the pop is not).
    fninit
    fldpi
    fst dword [r15 + 0x300]
    fst qword [r15 + 0x308]
    fist dword [r15 + 0x310]
    fldl2e
    fchs
    fisttp word [r15 + 0x314]
    fld st0
    fstp tword [r15 + 0x320]
    fnstsw [r15 + 0x316]
    fnstcw [r15 + 0x318]
    mov eax, [r15 + 0x300]
    SHOW msg_fst32
    mov rax, [r15 + 0x308]
    SHOW msg_fst64
    mov eax, [r15 + 0x310]
    SHOW msg_fist32
    movzx eax, word [r15 + 0x314]
    SHOW msg_fisttp16
    mov rax, [r15 + 0x320]
    SHOW msg_fstp80_low
    movzx eax, word [r15 + 0x328]
    SHOW msg_fstp80_high
    movzx eax, word [r15 + 0x316]
    SHOW msg_fnstsw
    movzx eax, word [r15 + 0x318]
    SHOW msg_fnstcw
    mov eax, 0xfe00_0000        ; in the PCI hole, where nothing is
    fstp dword [rax]
    fnstsw ax
    ; C1 aside: hardware sets it (pi rounded up to single precision) and
    ; so does the emulator (vmm-core/tests/emulator_x87.rs checks it on
    ; the host FPU); QEMU's TCG does not.
    and eax, 0xfdff
    SHOW msg_hole_fstp
    fninit

    mov esi, LIN(msg_done)
    jmp say

msg_rsp_after_pushes: db "rsp after pushes: ", 0
msg_push_imm8:        db "push imm8: ", 0
msg_push_imm32:       db "push imm32: ", 0
msg_push_reg:         db "push reg: ", 0
msg_push_fs:          db "push fs: ", 0
msg_push_word:        db "push word: ", 0
msg_enter_rsp:        db "enter rsp: ", 0
msg_enter_rbp:        db "enter rbp: ", 0
msg_enter_saved:      db "enter saved rbp: ", 0
msg_leave_rsp:        db "leave rsp: ", 0
msg_leave_rbp:        db "leave rbp: ", 0
msg_enter2_rsp:       db "enter level 2 rsp: ", 0
msg_enter2_rbp:       db "enter level 2 rbp: ", 0
msg_enter2_outer:     db "enter level 2 outer frame: ", 0
msg_enter2_frame:     db "enter level 2 this frame: ", 0
msg_sgdt:             db "sgdt: ", 0
msg_sgdt_high:        db "sgdt base 63:48: ", 0
msg_sidt:             db "sidt: ", 0
msg_str:              db "str: ", 0
msg_sldt:             db "sldt: ", 0
msg_ltr_type:         db "ltr: tss type byte ", 0
msg_ltr_busy_vector:  db "ltr busy tss: vector ", 0
msg_ltr_busy_error:   db "ltr busy tss: error ", 0
msg_lldt_null:        db "lldt null: ldtr ", 0
msg_movq_store:       db "movq store mm7: ", 0
msg_fsw:              db "fsw after: ", 0
msg_ftw:              db "ftw after: ", 0
msg_movq_load:        db "movq load mm3: ", 0
msg_movd_load:        db "movd load mm4: ", 0
msg_movd_store:       db "movd store mm3: ", 0
msg_fst32:            db "fst m32 pi: ", 0
msg_fst64:            db "fst m64 pi: ", 0
msg_fist32:           db "fist m32 pi: ", 0
msg_fisttp16:         db "fisttp m16 -log2(e): ", 0
msg_fstp80_low:       db "fstp m80 pi, significand: ", 0
msg_fstp80_high:      db "fstp m80 pi, sign and exponent: ", 0
msg_fnstsw:           db "fnstsw: ", 0
msg_fnstcw:           db "fnstcw: ", 0
msg_hole_fstp:        db "fstp to the hole, fsw after (but C1): ", 0
msg_done:             db "mmio emulation: done", 0

    IMAGE_END
