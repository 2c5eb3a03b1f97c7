; Shared memory between two PCs (`vms=2 shm=NAME:SIZE:0=rw,1=ro`): both
; VMs run this program. Each finds the ivshmem function (1af4:1110) by a
; PCI scan of bus 0, places its BARs (registers at E0000000, MSI-X table
; at E0001000, the region at E1000000), sizes the region, walks the
; capability list to MSI-X and aims vector 0 at its LAPIC as vector 50h,
; and reads its peer number from IVPosition. Then:
;  - peer 0 (read-write) writes a marker, moves BAR 2 to E2000000 and
;    reads the marker there and all-ones at the old address; writes 512
;    qwords of pattern, rings peer 1's doorbell, waits for peer 1's, and
;    checks the pattern is whole;
;  - peer 1 (read-only) waits for the doorbell, checks the pattern, tries
;    to overwrite the first qword (the write must be dropped), reads past
;    the region's end, and rings peer 0.
; Each waits at most 30 s for a doorbell. The lines the test reads:
;   shm: ivshmem at 00:<dev>.0, region <hex> bytes, peer <n>
;   shm: bar 2 moved: new address reads <hex64>, old address reads <hex64>
;   shm: peer 0 wrote the pattern and rang peer 1
;   shm: peer <n> got the doorbell | shm: peer <n>: NO doorbell
;   shm: peer 1 sees the pattern: <n> of 512 qwords
;   shm: peer 1 wrote deadbeefdeadbeef, reads back <hex64>
;   shm: peer 1 past the region reads <hex64>
;   shm: peer 0 sees the pattern after peer 1's writes: <n> of 512 qwords
%define PM1_CNT 0x604
%define PC_IMAGE
%include "hostile.inc"
%include "pc_apic.inc"

REGS     equ 0xe000_0000
MSIX     equ 0xe000_1000
SHM_A    equ 0xe100_0000
SHM_B    equ 0xe200_0000
VEC      equ 0x50
QWORDS   equ 512
PATTERN  equ 0x5348_4152_4544_0000  ; "SHARED" and the qword's index
MARKER   equ 0x4d41_524b_4552_2121

dev      equ scratch            ; config address of the function
me       equ scratch + 8        ; IVPosition
size     equ scratch + 16       ; the region's bytes
base     equ scratch + 24       ; where BAR 2 is now
tpms     equ scratch + 32       ; TSC ticks per ms

test_main:
    call pic_off
    call lapic_on
    call tsc_per_ms
    mov [tpms], rax
    ; Bus 0, devices 0-31, function 0.
    xor ebx, ebx
.scan:
    mov eax, ebx
    shl eax, 11
    or eax, 0x8000_0000
    mov [dev], eax
    xor ecx, ecx
    call cfg_read
    cmp eax, 0x1110_1af4
    je .found
    inc ebx
    cmp ebx, 32
    jb .scan
    mov esi, LIN(msg_none)
    jmp print
.found:
    ; Size the region: all-ones into BAR 2 (64-bit: BARs 2 and 3).
    mov ecx, 0x18
    mov eax, 0xffff_ffff
    call cfg_write
    call cfg_read
    and eax, 0xffff_fff0
    not eax
    inc eax
    mov [size], rax
    ; Place the BARs, then memory decoding and bus mastering on.
    mov ecx, 0x10
    mov eax, REGS
    call cfg_write
    mov ecx, 0x14
    mov eax, MSIX
    call cfg_write
    mov ecx, 0x18
    mov eax, SHM_A
    call cfg_write
    mov ecx, 0x1c
    xor eax, eax
    call cfg_write
    mov eax, SHM_A
    mov [base], rax
    mov ecx, 0x04
    mov eax, 0x0006
    call cfg_write
    mov ebx, REGS
    mov eax, [rbx + 8]
    mov [me], rax
    mov esi, LIN(msg_found)
    call print
    mov eax, [dev]
    shr eax, 11
    and eax, 31
    call print_hex8
    mov esi, LIN(msg_region)
    call print
    mov rax, [size]
    call print_hex32
    mov esi, LIN(msg_peer)
    call print
    mov rax, [me]
    call print_dec
    mov esi, LIN(crlf)
    call print
    call msix_on
    cmp qword [me], 0
    je writer
    jmp reader

; Peer 0: marker, BAR move, pattern, doorbell; then wait and check.
writer:
    mov ebx, SHM_A
    mov rax, MARKER
    mov [rbx + 0x100], rax
    mov ecx, 0x18
    mov eax, SHM_B
    call cfg_write
    mov eax, SHM_B
    mov [base], rax
    mov esi, LIN(msg_moved)
    call print
    mov ebx, SHM_B
    mov rax, [rbx + 0x100]
    call print_hex64
    mov esi, LIN(msg_old)
    call print
    mov ebx, SHM_A
    mov rax, [rbx + 0x100]
    call print_hex64
    mov esi, LIN(crlf)
    call print
    ; The pattern.
    mov ebx, SHM_B
    mov rax, PATTERN
    xor ecx, ecx
.fill:
    mov [rbx + rcx * 8], rax
    inc rax
    inc ecx
    cmp ecx, QWORDS
    jb .fill
    mov ebx, REGS
    mov dword [rbx + 12], 1 << 16 | 0   ; peer 1, vector 0
    mov esi, LIN(msg_rang)
    call print
    call wait_doorbell
    call check_pattern
    push rax
    mov esi, LIN(msg_after)
    call print
    pop rax
    call print_dec
    mov esi, LIN(msg_of)
    jmp print

; Peer 1 (read-only): wait, check, try to write, look past the end, ring.
reader:
    call wait_doorbell
    call check_pattern
    push rax
    mov esi, LIN(msg_sees)
    call print
    pop rax
    call print_dec
    mov esi, LIN(msg_of)
    call print
    mov rbx, [base]
    mov rax, 0xdead_beef_dead_beef
    mov [rbx], rax
    mov dword [rbx + 8], 0xdead_beef
    mov esi, LIN(msg_wrote)
    call print
    mov rax, [rbx]
    call print_hex64
    mov esi, LIN(crlf)
    call print
    mov esi, LIN(msg_past)
    call print
    add rbx, [size]
    mov rax, [rbx]
    call print_hex64
    mov esi, LIN(crlf)
    call print
    mov ebx, REGS
    mov dword [rbx + 12], 0 << 16 | 0   ; peer 0, vector 0
    ret

; RAX = qwords of the pattern found at [base].
check_pattern:
    push rbx
    push rcx
    push rdx
    mov rbx, [base]
    mov rdx, PATTERN
    xor ecx, ecx
    xor eax, eax
.next:
    cmp [rbx + rcx * 8], rdx
    jne .skip
    inc eax
.skip:
    inc rdx
    inc ecx
    cmp ecx, QWORDS
    jb .next
    pop rdx
    pop rcx
    pop rbx
    ret

; Wait (interrupts open) until vector VEC was taken, at most 30 s; say so.
wait_doorbell:
    mov rax, [tpms]
    imul rax, rax, 30_000
    mov r15, rax
    call rdtsc64
    add r15, rax
.spin:
    sti
    pause
    cli
    cmp qword [counts + VEC * 8], 0
    jne .got
    call rdtsc64
    cmp rax, r15
    jb .spin
    mov esi, LIN(msg_peer_head)
    call print
    mov rax, [me]
    call print_dec
    mov esi, LIN(msg_no_bell)
    jmp print
.got:
    mov esi, LIN(msg_peer_head)
    call print
    mov rax, [me]
    call print_dec
    mov esi, LIN(msg_bell)
    jmp print

; MSI-X: find the capability (ID 11h), aim table entry 0 at this LAPIC
; with vector VEC, unmask it, enable MSI-X.
msix_on:
    mov ecx, 0x34
    call cfg_read
    movzx ecx, al
.walk:
    test ecx, ecx
    jz .none
    call cfg_read
    cmp al, 0x11
    je .cap
    movzx ecx, ah
    jmp .walk
.cap:
    mov ebx, MSIX
    mov dword [rbx], 0xfee0_0000
    mov dword [rbx + 4], 0
    mov dword [rbx + 8], VEC
    mov dword [rbx + 12], 0
    or eax, 1 << 31
    jmp cfg_write
.none:
    mov esi, LIN(msg_no_msix)
    jmp print

; EAX = the dword at config register ECX of the function.
cfg_read:
    push rdx
    mov eax, [dev]
    or eax, ecx
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    pop rdx
    ret

; Config register ECX of the function = EAX.
cfg_write:
    push rdx
    push rax
    mov eax, [dev]
    or eax, ecx
    mov dx, 0xcf8
    out dx, eax
    pop rax
    mov dx, 0xcfc
    out dx, eax
    pop rdx
    ret

msg_none:      db "shm: no ivshmem function on bus 0", 13, 10, 0
msg_no_msix:   db "shm: no MSI-X capability", 13, 10, 0
msg_found:     db "shm: ivshmem at 00:", 0
msg_region:    db ".0, region ", 0
msg_peer:      db " bytes, peer ", 0
msg_moved:     db "shm: bar 2 moved: new address reads ", 0
msg_old:       db ", old address reads ", 0
msg_rang:      db "shm: peer 0 wrote the pattern and rang peer 1", 13, 10, 0
msg_peer_head: db "shm: peer ", 0
msg_bell:      db " got the doorbell", 13, 10, 0
msg_no_bell:   db ": NO doorbell", 13, 10, 0
msg_sees:      db "shm: peer 1 sees the pattern: ", 0
msg_of:        db " of 512 qwords", 13, 10, 0
msg_wrote:     db "shm: peer 1 wrote deadbeefdeadbeef, reads back ", 0
msg_past:      db "shm: peer 1 past the region reads ", 0
msg_after:     db "shm: peer 0 sees the pattern after peer 1's writes: ", 0

    IMAGE_END
