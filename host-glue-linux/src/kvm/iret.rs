//! IRET in protected mode, for KVMs that cannot emulate it.
//!
//! Some KVMs (the paravirtual one on the development machines among them)
//! hand IRET in 32-bit protected mode to their instruction emulator, which
//! supports it only in real mode, and stop with an emulation failure: the
//! first interrupt handler of a bootloader that runs in protected mode
//! (ISOLINUX) would end the VM. The backend carries out the common case
//! itself: a return to the same privilege level, paging off or on with the
//! stack reached through guest memory, no task switch, no return to
//! virtual-8086 mode. Anything else is refused, and the VM stops with
//! KVM's error as before.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vmm_core::memory::GuestMemory;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_IOPL: u64 = 3 << 12;
/// Flags IRET may change at CPL 0 in 32-bit operand size (CF..OF, TF,
/// IF, DF, IOPL, NT, RF, AC, VIF, VIP, ID; VM is handled separately).
const RFLAGS_IRET32: u64 = 0x003f_7fd5;

/// Why the assist declined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declined {
    /// The instruction is not IRET.
    NotIret,
    /// A case this assist does not implement (mode, task switch, V86,
    /// privilege change, paging).
    Unsupported(&'static str),
    /// The stack or descriptor table is not readable guest memory.
    Memory,
    /// The new CS is not a present code segment of that privilege.
    BadSelector(u16),
}

fn read(mem: &GuestMemory, linear: u64, buf: &mut [u8]) -> Result<(), Declined> {
    mem.read(linear, buf).map_err(|_| Declined::Memory)
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Decode a segment descriptor into KVM's form.
fn descriptor(selector: u16, raw: u64) -> kvm_segment {
    let limit_raw = (raw & 0xffff) | ((raw >> 32) & 0xf_0000);
    let base = ((raw >> 16) & 0xff_ffff) | ((raw >> 32) & 0xff00_0000);
    let access = (raw >> 40) as u8;
    let flags = (raw >> 52) as u8;
    let g = (flags >> 3) & 1;
    let limit = if g == 1 {
        ((limit_raw << 12) | 0xfff) as u32
    } else {
        limit_raw as u32
    };
    kvm_segment {
        base,
        limit,
        selector,
        // The CPU sets the accessed bit when it loads a descriptor.
        type_: (access & 0xf) | 1,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g,
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// Carry out the IRET at CS:RIP if it is one this assist handles.
pub fn emulate(
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
    mem: &GuestMemory,
) -> Result<(), Declined> {
    if sregs.cr0 & CR0_PE == 0 || sregs.efer & EFER_LMA != 0 || regs.rflags & RFLAGS_VM != 0 {
        return Err(Declined::Unsupported("not 16/32-bit protected mode"));
    }
    if sregs.cr0 & CR0_PG != 0 {
        return Err(Declined::Unsupported("paging on"));
    }
    let code_big = sregs.cs.db != 0;
    let ip_mask = if code_big { 0xffff_ffff } else { 0xffff };
    let fetch_at = sregs.cs.base.wrapping_add(regs.rip & ip_mask) & 0xffff_ffff;
    let mut insn = [0u8; 2];
    read(mem, fetch_at, &mut insn)?;
    let op32 = match insn {
        [0xcf, _] => code_big,
        [0x66, 0xcf] => !code_big,
        _ => return Err(Declined::NotIret),
    };
    if regs.rflags & RFLAGS_NT != 0 {
        return Err(Declined::Unsupported("task return (NT set)"));
    }
    let cpl = sregs.ss.dpl;
    let width = if op32 { 4usize } else { 2 };
    let stack_big = sregs.ss.db != 0;
    let sp_mask: u64 = if stack_big { 0xffff_ffff } else { 0xffff };
    let sp = regs.rsp & sp_mask;
    let mut frame = [0u8; 12];
    let frame = &mut frame[..3 * width];
    let at = sregs.ss.base.wrapping_add(sp) & 0xffff_ffff;
    read(mem, at, frame)?;
    let new_ip = le(&frame[..width]);
    let new_cs = le(&frame[width..2 * width]) as u16;
    let new_flags = le(&frame[2 * width..]);
    if op32 && new_flags & RFLAGS_VM != 0 {
        return Err(Declined::Unsupported("return to virtual-8086 mode"));
    }
    let rpl = (new_cs & 3) as u8;
    if rpl != cpl {
        return Err(Declined::Unsupported("return to another privilege level"));
    }
    if new_cs & !3 == 0 {
        return Err(Declined::BadSelector(new_cs));
    }
    // The descriptor, from the GDT (the LDT is not supported here).
    if new_cs & 4 != 0 {
        return Err(Declined::Unsupported("code segment in the LDT"));
    }
    let index = u64::from(new_cs & !7);
    if index + 7 > u64::from(sregs.gdt.limit) {
        return Err(Declined::BadSelector(new_cs));
    }
    let mut raw = [0u8; 8];
    read(
        mem,
        sregs.gdt.base.wrapping_add(index) & 0xffff_ffff,
        &mut raw,
    )?;
    let cs = descriptor(new_cs, u64::from_le_bytes(raw));
    let conforming = cs.type_ & 4 != 0;
    let is_code = cs.s == 1 && cs.type_ & 8 != 0;
    let dpl_ok = if conforming {
        cs.dpl <= rpl
    } else {
        cs.dpl == rpl
    };
    if !is_code || cs.present == 0 || !dpl_ok || cs.l == 1 {
        return Err(Declined::BadSelector(new_cs));
    }
    let new_ip = if cs.db != 0 { new_ip } else { new_ip & 0xffff };
    if new_ip > u64::from(cs.limit) {
        return Err(Declined::Unsupported(
            "return beyond the code segment limit",
        ));
    }
    // Which flags change: all IRET may change at CPL 0; IOPL only at CPL
    // 0; IF only when CPL <= IOPL; a 16-bit IRET only the low 16 bits.
    let mut changeable = RFLAGS_IRET32;
    if cpl != 0 {
        changeable &= !RFLAGS_IOPL;
    }
    let iopl = ((regs.rflags & RFLAGS_IOPL) >> 12) as u8;
    if cpl > iopl {
        changeable &= !RFLAGS_IF;
    }
    if !op32 {
        changeable &= 0xffff;
    }
    regs.rflags = (regs.rflags & !changeable) | (new_flags & changeable) | 2;
    regs.rip = new_ip;
    let new_sp = (sp + 3 * width as u64) & sp_mask;
    regs.rsp = (regs.rsp & !sp_mask) | new_sp;
    sregs.cs = cs;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::host::Host;
    use vmm_core::test_host::TestHost;

    /// Flat 32-bit code (0x08) and data (0x10), and a 16-bit code segment
    /// at 0x18 based at 0x10000.
    const GDT: [u64; 4] = [
        0,
        0x00cf_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x0000_9b01_0000_ffff,
    ];

    fn machine() -> (GuestMemory, kvm_regs, kvm_sregs) {
        let host = TestHost::new();
        let mut mem = GuestMemory::new();
        mem.add_ram(0, host.alloc_memory(1 << 20, 4096).unwrap())
            .unwrap();
        for (i, d) in GDT.iter().enumerate() {
            mem.write_u64(0x500 + 8 * i as u64, *d).unwrap();
        }
        let mut sregs = kvm_sregs {
            cr0: CR0_PE,
            cs: descriptor(0x08, GDT[1]),
            ss: descriptor(0x10, GDT[2]),
            ..Default::default()
        };
        sregs.gdt.base = 0x500;
        sregs.gdt.limit = 31;
        let regs = kvm_regs {
            rip: 0x8000,
            rsp: 0x7000,
            rflags: 2,
            ..Default::default()
        };
        (mem, regs, sregs)
    }

    #[test]
    fn iret_to_the_same_level_pops_eip_cs_eflags() {
        let (mut mem, mut regs, mut sregs) = machine();
        mem.write_u8(0x8000, 0xcf).unwrap();
        mem.write_u32(0x7000, 0x1234).unwrap();
        mem.write_u32(0x7004, 0x08).unwrap();
        mem.write_u32(0x7008, 0x246).unwrap();
        emulate(&mut regs, &mut sregs, &mem).unwrap();
        assert_eq!(regs.rip, 0x1234);
        assert_eq!(regs.rsp, 0x700c);
        assert_eq!(regs.rflags, 0x246, "IF and ZF back");
        assert_eq!(sregs.cs.selector, 0x08);
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.cs.db, 1);
    }

    #[test]
    fn iret_into_a_16_bit_segment_loads_its_base() {
        let (mut mem, mut regs, mut sregs) = machine();
        mem.write_u8(0x8000, 0xcf).unwrap();
        mem.write_u32(0x7000, 0x0010).unwrap();
        mem.write_u32(0x7004, 0x18).unwrap();
        mem.write_u32(0x7008, 0x002).unwrap();
        emulate(&mut regs, &mut sregs, &mem).unwrap();
        assert_eq!(sregs.cs.base, 0x10000);
        assert_eq!(sregs.cs.db, 0);
        assert_eq!(regs.rip, 0x10);
    }

    #[test]
    fn what_it_cannot_do_it_refuses_and_changes_nothing() {
        let (mut mem, mut regs, mut sregs) = machine();
        let before = (regs, sregs);
        // Not an IRET.
        mem.write_u8(0x8000, 0x90).unwrap();
        assert_eq!(emulate(&mut regs, &mut sregs, &mem), Err(Declined::NotIret));
        mem.write_u8(0x8000, 0xcf).unwrap();
        // A null selector, a data segment, a selector past the GDT.
        for cs in [0x00u32, 0x10, 0x40] {
            mem.write_u32(0x7004, cs).unwrap();
            assert!(matches!(
                emulate(&mut regs, &mut sregs, &mem),
                Err(Declined::BadSelector(_))
            ));
        }
        // Another privilege level; virtual-8086 mode; a task return.
        mem.write_u32(0x7004, 0x0b).unwrap();
        assert!(matches!(
            emulate(&mut regs, &mut sregs, &mem),
            Err(Declined::Unsupported(_))
        ));
        mem.write_u32(0x7004, 0x08).unwrap();
        mem.write_u32(0x7008, 0x2_0002).unwrap();
        assert!(matches!(
            emulate(&mut regs, &mut sregs, &mem),
            Err(Declined::Unsupported(_))
        ));
        regs.rflags |= RFLAGS_NT;
        assert!(matches!(
            emulate(&mut regs, &mut sregs, &mem),
            Err(Declined::Unsupported(_))
        ));
        regs.rflags &= !RFLAGS_NT;
        // A stack outside guest memory.
        regs.rsp = 0xffff_fff0;
        assert_eq!(emulate(&mut regs, &mut sregs, &mem), Err(Declined::Memory));
        regs.rsp = before.0.rsp;
        assert_eq!((regs.rip, regs.rflags), (before.0.rip, before.0.rflags));
        assert_eq!(sregs.cs, before.1.cs);
    }
}
