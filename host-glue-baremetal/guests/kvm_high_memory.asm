; RAM above 4 GiB, seen from the guest of `vmm run --memory 8G --bios
; kvm_high_memory.bin` (xtask/tests/kvm_high_memory.rs), 32-bit:
;   1. reads the RAM layout the VMM gives, fw_cfg file `etc/e820`, through
;      the fw_cfg ports (selector 0x510, data 0x511) as SeaBIOS does: the
;      file directory (key 0x19) for the file's key and size, then the
;      file; prints one line per entry,
;        e820 AAAAAAAAAAAAAAAA LLLLLLLLLLLLLLLL type T
;      and the top of the RAM above 4 GiB (`high ram top ...`);
;   2. turns on PAE paging (2 MiB pages, the first 4 GiB identity-mapped)
;      and, through a 2 MiB window at 1 GiB virtual that it points at each
;      target in turn, fills a 4 KiB page with a pattern of its own (dword
;      i of the page at P holds (P >> 2) + i, xor 5A5A5A5Ah) at 1 GiB (low
;      RAM, so that high RAM folded onto low shows), at each GiB from 4 GiB
;      up to the top, and in the last page below the top;
;   3. only then reads every page back and prints `page P: ok` or `page P:
;      N dwords wrong, first read X`, then
;        high memory: K of N pages read back intact
;   4. prints `waiting` and polls COM1 for a byte (the test reads the
;      process's resident memory meanwhile), then powers off (PM1a_CNT at
;      0x604).
; An exception prints `unexpected exception NN` and powers off.
%include "pm32_entry.inc"
%include "com1_print.inc"

VARS     equ 0x500
E820_KEY equ VARS + 0x00        ; word: the file's fw_cfg key (0: none)
E820_LEN equ VARS + 0x04        ; dword: its size in bytes
TOP_LO   equ VARS + 0x08        ; qword: top of RAM above 4 GiB
TOP_HI   equ VARS + 0x0c
NPAGES   equ VARS + 0x10        ; dword: pages in PAGES
GOOD     equ VARS + 0x14        ; dword: pages read back intact
BAD      equ VARS + 0x18        ; dword: wrong dwords in this page
FIRST    equ VARS + 0x1c        ; dword: the first wrong dword read
PROBE    equ VARS + 0x20        ; dword: where a #GP resumes (0: a fault)
MODE     equ VARS + 0x24        ; dword: 0 PAE, 1 PSE-36
PAGES    equ 0x600              ; qwords: the pages' physical addresses
MAXPAGES equ 16
IDT      equ 0x1000
DIRENT   equ 0x3000             ; one 64-byte fw_cfg directory entry
E820     equ 0x4000             ; the file (at most E820_MAX bytes)
E820_MAX equ 0x800
PDPT     equ 0x2_0000
PDS      equ 0x2_1000           ; four page directories, to 0x24fff
PML4     equ 0x2_5000
WINDOW   equ 0x4000_0000        ; virtual: PD 1, entry 0
WIN_PDE  equ PDS + 0x1000      ; PAE: PD 1, entry 0
WIN_PDE32 equ PDS + 256 * 4     ; 32-bit paging: entry 256

    PM32_ENTRY
    ; Exceptions 0-31: each stub pushes its number and goes to `fault`.
    mov edi, IDT
    mov esi, LIN(stubs)
    mov ecx, 32
.gate:
    mov eax, esi
    mov [edi], ax
    mov word [edi + 2], 0x08
    mov word [edi + 4], 0x8e00
    shr eax, 16
    mov [edi + 6], ax
    add edi, 8
    add esi, stub_size
    loop .gate
    lidt [LIN(idt_ptr)]

    mov dword [NPAGES], 0
    mov dword [GOOD], 0
    mov dword [TOP_LO], 0
    mov dword [TOP_HI], 0
    mov dword [PROBE], 0

    ; 1. Find etc/e820 in the fw_cfg directory.
    mov word [E820_KEY], 0
    mov ax, 0x19
    call fw_select
    call fw_read_be32
    mov ebx, eax                ; files
    cmp ebx, 256
    jbe .dir
    mov ebx, 256
.dir:
    test ebx, ebx
    jz .dir_done
    mov edi, DIRENT
    mov ecx, 64
    call fw_read
    dec ebx
    mov esi, DIRENT + 8
    mov edi, LIN(name_e820)
    mov ecx, name_e820_len
    repe cmpsb
    jne .dir
    mov eax, [DIRENT]
    bswap eax
    mov [E820_LEN], eax
    movzx eax, word [DIRENT + 4]
    xchg al, ah
    mov [E820_KEY], ax
.dir_done:
    cmp word [E820_KEY], 0
    jne .have
    mov esi, LIN(msg_no_e820)
    call print
    jmp power_off
.have:
    mov ecx, [E820_LEN]
    cmp ecx, E820_MAX
    jbe .len_ok
    mov ecx, E820_MAX
.len_ok:
    mov eax, ecx
    xor edx, edx
    mov ebx, 20
    div ebx
    mov ebx, eax                ; entries
    mov ax, [E820_KEY]
    call fw_select
    mov edi, E820
    mov ecx, [E820_LEN]
    cmp ecx, E820_MAX
    jbe .read_e820
    mov ecx, E820_MAX
.read_e820:
    call fw_read

    ; Print each entry; the top of RAM above 4 GiB is the greatest end of
    ; a type 1 entry that starts at or above 4 GiB.
    mov ebp, E820
.entry:
    test ebx, ebx
    jz .entries_done
    mov esi, LIN(msg_e820)
    call print
    mov eax, [ebp + 4]
    call print_hex32
    mov eax, [ebp]
    call print_hex32
    mov al, ' '
    call putc
    mov eax, [ebp + 12]
    call print_hex32
    mov eax, [ebp + 8]
    call print_hex32
    mov esi, LIN(msg_type)
    call print
    mov eax, [ebp + 16]
    call print_dec
    call crlf
    cmp dword [ebp + 16], 1
    jne .next_entry
    cmp dword [ebp + 4], 0
    je .next_entry
    mov eax, [ebp]
    mov edx, [ebp + 4]
    add eax, [ebp + 8]
    adc edx, [ebp + 12]
    cmp edx, [TOP_HI]
    jb .next_entry
    ja .new_top
    cmp eax, [TOP_LO]
    jbe .next_entry
.new_top:
    mov [TOP_LO], eax
    mov [TOP_HI], edx
.next_entry:
    add ebp, 20
    dec ebx
    jmp .entry
.entries_done:
    mov esi, LIN(msg_top)
    call print
    mov eax, [TOP_HI]
    call print_hex32
    mov eax, [TOP_LO]
    call print_hex32
    call crlf
    cmp dword [TOP_HI], 0
    jne .pages
    mov esi, LIN(msg_no_high)
    call print
    jmp power_off

    ; The pages: 1 GiB, each GiB from 4 GiB below the top, the last page.
.pages:
    xor edx, edx
    mov eax, 0x4000_0000
    call add_page
    mov ebx, 4                  ; GiB number
.gib:
    ; GiB ebx starts at (ebx >> 2):(ebx << 30).
    mov edx, ebx
    shr edx, 2
    mov eax, ebx
    shl eax, 30
    cmp edx, [TOP_HI]
    ja .last
    jb .add_gib
    cmp eax, [TOP_LO]
    jae .last
.add_gib:
    call add_page
    inc ebx
    jmp .gib
.last:
    mov eax, [TOP_HI]
    mov edx, [TOP_LO]
    sub edx, 0x1000
    sbb eax, 0
    and edx, ~0xfff
    ; Not again if the top is exactly at the last GiB page + 4 KiB.
    mov ecx, [NPAGES]
    cmp edx, [PAGES + ecx * 8 - 8]
    jne .add_last
    cmp eax, [PAGES + ecx * 8 - 4]
    je .paging
.add_last:
    call add_page_hl

    ; 2. PAE paging: PDPT -> four directories of 2 MiB pages, identity.
.paging:
    mov eax, 1                  ; PDPTEs: present (R/W is reserved in PAE)
    call build_pae
    mov eax, cr4
    or eax, 1 << 5              ; PAE
    mov cr4, eax
    mov eax, PDPT
    mov cr3, eax
    ; A #GP here resumes at .pae_refused (this machine's paravirtual KVM
    ; refuses paging outside long mode).
    mov dword [PROBE], LIN(.pae_refused)
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    mov dword [PROBE], 0
    mov dword [MODE], 0
    mov esi, LIN(msg_pae)
    call print
    jmp .fill_all

    ; PSE-36: 32-bit paging, 4 MiB pages whose entries carry physical
    ; address bits 32-39 in bits 13-20.
.pae_refused:
    mov eax, cr4
    and eax, ~(1 << 5)
    mov cr4, eax
    mov esi, LIN(msg_pae_refused)
    call print
    mov eax, 1
    cpuid
    test edx, 1 << 17
    jnz .pse36
    mov esi, LIN(msg_no_pse36)
    call print
    jmp .long
.pse36:
    mov edi, PDS
    mov eax, 0x83               ; present, writable, 4 MiB
    mov ecx, 1024
.pde32:
    mov [edi], eax
    add eax, 0x40_0000
    add edi, 4
    loop .pde32
    mov eax, cr4
    or eax, 1 << 4              ; PSE
    mov cr4, eax
    mov eax, PDS
    mov cr3, eax
    mov dword [PROBE], LIN(.pse36_refused)
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    mov dword [PROBE], 0
    mov dword [MODE], 1
    mov esi, LIN(msg_pse36)
    call print
    jmp .fill_all
.pse36_refused:
    mov eax, cr4
    and eax, ~(1 << 4)
    mov cr4, eax
    mov esi, LIN(msg_pse36_refused)
    call print

    ; Long mode, this code going on in compatibility mode (CS stays
    ; 32-bit): a PML4 over the same directories, so the window is the same
    ; PD entry.
.long:
    mov eax, 3                  ; PDPTEs: present, writable
    call build_pae
    mov edi, PML4
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword [PML4], PDPT | 3
    mov eax, cr4
    or eax, 1 << 5              ; PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xc000_0080        ; EFER.LME
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov dword [PROBE], LIN(.long_refused)
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    mov dword [PROBE], 0
    ; The 32-bit gates mean nothing in long mode: an exception from here
    ; on shuts the guest down (the VMM reports it).
    lidt [LIN(idt_none)]
    mov dword [MODE], 0
    mov esi, LIN(msg_long)
    call print
    jmp .fill_all
.long_refused:
    mov esi, LIN(msg_long_refused)
    call print
    jmp power_off

    ; Fill every page first ...
.fill_all:
    xor ebx, ebx
.fill_page:
    cmp ebx, [NPAGES]
    jae .check
    call map_page               ; edi: the page through the window
    call pattern_base           ; eax: the pattern's first dword
    mov ecx, 1024
.fill:
    mov edx, eax
    xor edx, 0x5a5a5a5a
    mov [edi], edx
    inc eax
    add edi, 4
    loop .fill
    inc ebx
    jmp .fill_page

    ; 3. ... then read every one back.
.check:
    xor ebx, ebx
.check_page:
    cmp ebx, [NPAGES]
    jae .summary
    call map_page
    call pattern_base
    mov dword [BAD], 0
    mov ecx, 1024
.cmp:
    mov edx, eax
    xor edx, 0x5a5a5a5a
    cmp [edi], edx
    je .same
    cmp dword [BAD], 0
    jne .counted
    mov edx, [edi]
    mov [FIRST], edx
.counted:
    inc dword [BAD]
.same:
    inc eax
    add edi, 4
    loop .cmp
    mov esi, LIN(msg_page)
    call print
    mov eax, [PAGES + ebx * 8 + 4]
    call print_hex32
    mov eax, [PAGES + ebx * 8]
    call print_hex32
    cmp dword [BAD], 0
    jne .wrong
    mov esi, LIN(msg_ok)
    call print
    inc dword [GOOD]
    jmp .next_page
.wrong:
    mov esi, LIN(msg_colon)
    call print
    mov eax, [BAD]
    call print_dec
    mov esi, LIN(msg_wrong)
    call print
    mov eax, [FIRST]
    call print_hex32
    call crlf
.next_page:
    inc ebx
    jmp .check_page

.summary:
    mov esi, LIN(msg_summary)
    call print
    mov eax, [GOOD]
    call print_dec
    mov esi, LIN(msg_of)
    call print
    mov eax, [NPAGES]
    call print_dec
    mov esi, LIN(msg_intact)
    call print

    ; 4. Wait for a byte on COM1, then power off.
    mov esi, LIN(msg_waiting)
    call print
.poll:
    mov dx, COM1 + 5
    in al, dx
    test al, 1
    jnz power_off
    pause
    jmp .poll

power_off:
    mov esi, LIN(msg_off)
    call print
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
.hang:
    hlt
    jmp .hang

; PAE tables: PDPT entries (flags eax) -> the four directories at PDS,
; 2 MiB pages identity-mapping the first 4 GiB.
build_pae:
    mov edi, PDPT
    or eax, PDS
    mov ecx, 4
.pdpte:
    mov [edi], eax
    mov dword [edi + 4], 0
    add eax, 0x1000
    add edi, 8
    loop .pdpte
    mov edi, PDS
    mov eax, 0x83               ; present, writable, 2 MiB
    xor edx, edx
    mov ecx, 2048
.pde:
    mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x20_0000
    add edi, 8
    loop .pde
    ret

; Append the page at edx:eax (high:low) to PAGES (at most MAXPAGES).
add_page:
    xchg eax, edx
; The same with eax:edx = high:low.
add_page_hl:
    mov ecx, [NPAGES]
    cmp ecx, MAXPAGES
    jae .full
    mov [PAGES + ecx * 8], edx
    mov [PAGES + ecx * 8 + 4], eax
    inc dword [NPAGES]
.full:
    ret

; Point the window at page ebx of PAGES; edi: the page's virtual address.
map_page:
    mov eax, [PAGES + ebx * 8]
    mov edx, [PAGES + ebx * 8 + 4]
    cmp dword [MODE], 0
    jne .pse36
    mov edi, eax
    and edi, 0x1f_ffff
    add edi, WINDOW
    and eax, ~0x1f_ffff
    or eax, 0x83
    mov [WIN_PDE], eax
    mov [WIN_PDE + 4], edx
    jmp .flush
.pse36:
    mov edi, eax
    and edi, 0x3f_ffff
    add edi, WINDOW
    and eax, ~0x3f_ffff
    or eax, 0x83
    and edx, 0xff
    shl edx, 13
    or eax, edx
    mov [WIN_PDE32], eax
.flush:
    mov eax, WINDOW
    invlpg [eax]
    ret

; eax: (P >> 2) mod 2^32 for page ebx of PAGES.
pattern_base:
    push edx
    mov eax, [PAGES + ebx * 8]
    mov edx, [PAGES + ebx * 8 + 4]
    shrd eax, edx, 2
    pop edx
    ret

; Select fw_cfg item ax.
fw_select:
    push edx
    mov dx, 0x510
    out dx, ax
    pop edx
    ret

; Read ecx bytes of the selected item to edi.
fw_read:
    push edx
    push eax
    mov dx, 0x511
.byte:
    jecxz .done
    in al, dx
    mov [edi], al
    inc edi
    dec ecx
    jmp .byte
.done:
    pop eax
    pop edx
    ret

; eax: the next four bytes of the selected item, big-endian.
fw_read_be32:
    push edi
    push ecx
    mov edi, DIRENT
    mov ecx, 4
    call fw_read
    mov eax, [DIRENT]
    bswap eax
    pop ecx
    pop edi
    ret

    COM1_PUTC

crlf:
    push esi
    mov esi, LIN(msg_crlf)
    call print
    pop esi
    ret

print:
    push eax
.next:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .next
.done:
    pop eax
    ret

print_hex32:
    push eax
    push ecx
    mov ecx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '9' - 1
.out:
    call putc
    pop eax
    loop .digit
    pop ecx
    pop eax
    ret

; eax in decimal.
print_dec:
    push eax
    push ebx
    push ecx
    push edx
    mov ebx, 10
    xor ecx, ecx
.div:
    xor edx, edx
    div ebx
    push edx
    inc ecx
    test eax, eax
    jnz .div
.put:
    pop eax
    add al, '0'
    call putc
    loop .put
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

fault:
    ; The #GP a probe expects: resume where it says.
    cmp dword [esp], 13
    jne .unexpected
    cmp dword [PROBE], 0
    je .unexpected
    push eax
    mov eax, [PROBE]
    mov [esp + 12], eax         ; vector, error code, then EIP
    mov dword [PROBE], 0
    pop eax
    add esp, 8
    iret
.unexpected:
    mov esi, LIN(msg_fault)
    call print
    pop eax                     ; the vector
    mov ebx, eax
    shr eax, 4
    mov al, [LIN(hex) + eax]
    call putc
    and ebx, 0xf
    mov al, [LIN(hex) + ebx]
    call putc
    ; What the CPU pushed: [error code,] EIP, CS, EFLAGS.
    mov ecx, 3
.frame:
    mov al, ' '
    call putc
    pop eax
    call print_hex32
    loop .frame
    call crlf
    jmp power_off

stubs:
%assign v 0
%rep 32
    push dword v
    jmp near fault
%assign v v + 1
%endrep
stub_size equ (($ - stubs) / 32)

    PM32_GDT
idt_ptr:
    dw 32 * 8 - 1
    dd IDT
idt_none:
    dw 0
    dd 0

hex:         db "0123456789abcdef"
name_e820:   db "etc/e820", 0
name_e820_len equ $ - name_e820
msg_e820:    db "e820 ", 0
msg_type:    db " type ", 0
msg_top:     db "high ram top ", 0
msg_no_e820: db "no etc/e820 in fw_cfg", 13, 10, 0
msg_no_high: db "no RAM above 4 GiB", 13, 10, 0
msg_pae:     db "pae paging on", 13, 10, 0
msg_pae_refused: db "pae paging refused with #GP", 13, 10, 0
msg_no_pse36: db "no pse-36 either", 13, 10, 0
msg_pse36:   db "pse-36 paging on", 13, 10, 0
msg_pse36_refused: db "pse-36 paging refused with #GP", 13, 10, 0
msg_long:    db "long mode paging on (compatibility mode)", 13, 10, 0
msg_long_refused: db "long mode paging refused with #GP", 13, 10, 0
msg_page:    db "page ", 0
msg_ok:      db ": ok", 13, 10, 0
msg_colon:   db ": ", 0
msg_wrong:   db " dwords wrong, first read ", 0
msg_summary: db "high memory: ", 0
msg_of:      db " of ", 0
msg_intact:  db " pages read back intact", 13, 10, 0
msg_waiting: db "waiting", 13, 10, 0
msg_off:     db "power off", 13, 10, 0
msg_fault:   db "unexpected exception ", 0
msg_crlf:    db 13, 10, 0

    RESET_VECTOR
