//! The host debugging a guest (a gdb stub): what a backend is asked to do
//! (trap the debugger's INT3s, stop at its hardware breakpoints, step one
//! instruction), where the guest stopped, and guest memory at linear
//! addresses as a debugger reads and writes it.
//!
//! The SVM and VMX backends carry [`HostDebug`] out themselves
//! (`SvmVcpu::set_host_debug`, `VmxVcpu::set_host_debug`): #BP and #DB
//! are intercepted (and, on SVM, INTn, which QEMU's TCG reports for an
//! INT3 instead of #BP), the debugger's breakpoint addresses are in
//! DR0-DR3 while the guest runs, and a step sets RFLAGS.TF, hidden from
//! the guest. A stop ends the slice ([`crate::vcpu::Exit::Preempted`]);
//! the host takes the [`DebugStop`] and hands it to its debugger. The KVM
//! backend does the same through KVM_SET_GUEST_DEBUG. Both hosts' gdb
//! stubs keep what gdb planted in a [`Planted`] (INT3s in guest memory,
//! breakpoints and watchpoints for the debug registers), tell a stop with
//! [`Planted::reason`], read and write memory with [`read_linear`] and
//! [`write_linear`], and read and write the vCPU's registers as gdb
//! orders them ([`read_gdb_registers`], [`write_gdb_registers`]).

use crate::emulator::{CpuState, Segment};
use crate::memory::GuestMemory;
use crate::paging::{Access, AccessKind, ControlRegisters, PageTableMemory, Walker};
use alloc::vec::Vec;

/// INT3, the software breakpoint a debugger plants.
pub const INT3: u8 = 0xcc;

/// gdb's x86-64 general-purpose register order (RAX, RBX, RCX, RDX, RSI,
/// RDI, RBP, RSP, R8-R15) as indexes of the emulator's GPRs (RAX, RCX,
/// RDX, RBX, RSP, RBP, RSI, RDI, R8-R15).
pub const GDB_GPR_ORDER: [usize; 16] = [0, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15];

/// The registers of gdb's x86-64 core set that a stub reads from a vCPU,
/// in gdb's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GdbRegisters {
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8-R15 ([`GDB_GPR_ORDER`]).
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// EFLAGS: the low half of RFLAGS.
    pub eflags: u32,
    /// The selectors of CS, SS, DS, ES, FS and GS.
    pub selectors: [u32; 6],
}

/// The registers gdb reads of `cpu`.
pub fn read_gdb_registers<C: CpuState + ?Sized>(cpu: &C) -> GdbRegisters {
    let selector = |s| u32::from(cpu.segment(s).selector);
    GdbRegisters {
        gprs: GDB_GPR_ORDER.map(|r| cpu.gpr(r)),
        rip: cpu.rip(),
        eflags: cpu.rflags() as u32,
        selectors: [
            Segment::Cs,
            Segment::Ss,
            Segment::Ds,
            Segment::Es,
            Segment::Fs,
            Segment::Gs,
        ]
        .map(selector),
    }
}

/// Give `cpu` the registers gdb wrote: the general-purpose registers (in
/// gdb's order, [`GDB_GPR_ORDER`]), RIP, and EFLAGS as the low half of
/// RFLAGS (the high half kept, bit 1 always set, TF, IF and the rest as
/// gdb says). Only a register whose value changes is written. Segment
/// selectors are not loaded: a stub takes gdb's as they are.
pub fn write_gdb_registers<C: CpuState + ?Sized>(
    cpu: &mut C,
    gprs: &[u64; 16],
    rip: u64,
    eflags: u32,
) {
    for (&r, &value) in GDB_GPR_ORDER.iter().zip(gprs) {
        if cpu.gpr(r) != value {
            cpu.set_gpr(r, value);
        }
    }
    if cpu.rip() != rip {
        cpu.set_rip(rip);
    }
    let flags = (cpu.rflags() & !0xffff_ffff) | u64::from(eflags) | 2;
    if cpu.rflags() != flags {
        cpu.set_rflags(flags);
    }
}

/// What a debug-register breakpoint fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakOn {
    /// Executing the instruction at the address (LEN must be 1).
    Execute,
    /// Writing the bytes (a watchpoint; the stop comes after the write).
    Write,
    /// Reading or writing them (x86 has no read-only watchpoint).
    ReadWrite,
}

/// One breakpoint in a debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breakpoint {
    /// Its linear address (aligned to `len`).
    pub address: u64,
    /// What fires it.
    pub on: BreakOn,
    /// Bytes covered: 1, 2, 4 or 8 (1 for [`BreakOn::Execute`]).
    pub len: u8,
}

impl Breakpoint {
    /// An execution breakpoint at `address`.
    pub fn execute(address: u64) -> Self {
        Self {
            address,
            on: BreakOn::Execute,
            len: 1,
        }
    }

    /// A watchpoint on `len` bytes at `address`, if the debug registers
    /// can hold it (`len` 1, 2, 4 or 8, `address` aligned to it).
    pub fn watch(address: u64, len: u64, on: BreakOn) -> Option<Self> {
        (matches!(len, 1 | 2 | 4 | 8) && address.is_multiple_of(len) && on != BreakOn::Execute)
            .then_some(Self {
                address,
                on,
                len: len as u8,
            })
    }

    /// Its R/W and LEN fields of DR7 (R/W in bits 1:0, LEN in 3:2).
    fn dr7_fields(&self) -> u64 {
        let rw = match self.on {
            BreakOn::Execute => 0b00,
            BreakOn::Write => 0b01,
            BreakOn::ReadWrite => 0b11,
        };
        let len = match (self.on, self.len) {
            (BreakOn::Execute, _) | (_, 1) => 0b00,
            (_, 2) => 0b01,
            (_, 8) => 0b10,
            _ => 0b11,
        };
        rw | len << 2
    }
}

/// What the debugger asks of the next runs of a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDebug {
    /// Stop after one instruction.
    pub step: bool,
    /// Breakpoints and watchpoints in DR0-DR3.
    pub breakpoints: [Option<Breakpoint>; 4],
    /// The debugger has planted INT3s: stop at an INT3 rather than give
    /// the guest its #BP.
    pub software_breakpoints: bool,
}

impl HostDebug {
    /// DR7 for [`HostDebug::breakpoints`]: L0-L3 of those set, with their
    /// R/W and LEN; GE and bit 10 set.
    pub fn dr7(&self) -> u64 {
        self.breakpoints
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b)))
            .fold(0x400 | 1 << 9, |dr7, (i, b)| {
                dr7 | 1 << (2 * i) | b.dr7_fields() << (16 + 4 * i)
            })
    }

    /// The breakpoint addresses for DR0-DR3 (0 where unset).
    pub fn addresses(&self) -> [u64; 4] {
        self.breakpoints.map(|b| b.map_or(0, |b| b.address))
    }

    /// Whether any debug-register breakpoint is set.
    pub fn has_breakpoints(&self) -> bool {
        self.breakpoints.iter().any(Option::is_some)
    }
}

/// Why the guest stopped for the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// It reached an INT3 (RIP is on it).
    Int3,
    /// It completed the step.
    Step,
    /// It reached the hardware breakpoint in this debug register.
    Breakpoint(u8),
}

/// Where the guest stopped for the debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugStop {
    /// Why.
    pub kind: StopKind,
    /// The linear address of the next instruction (CS base + RIP).
    pub pc: u64,
}

impl DebugStop {
    /// The stop a #DB with `dr6` (as the CPU reported it) means, at `pc`:
    /// a hardware breakpoint if one of B0-B3 is set, else the step.
    pub fn from_dr6(dr6: u64, pc: u64) -> Self {
        let kind = match (0..4).find(|i| dr6 & (1 << i) != 0) {
            Some(i) => StopKind::Breakpoint(i as u8),
            None => StopKind::Step,
        };
        Self { kind, pc }
    }
}

/// What a debugger has planted in one guest: INT3s written over guest
/// bytes (software breakpoints) and breakpoints or watchpoints for the
/// debug registers. Both gdb stubs keep theirs here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    /// Software breakpoints: linear address, and the byte the INT3
    /// replaced.
    int3s: Vec<(u64, u8)>,
    /// Hardware breakpoints and watchpoints, DR0-DR3.
    slots: [Option<Breakpoint>; 4],
}

/// What a stop means to the debugger that planted what it planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// One of its INT3s.
    SwBreak,
    /// The step it asked for.
    Step,
    /// One of its watchpoints (the stop is after the access).
    Watch(Breakpoint),
    /// Anything else: an execution breakpoint, or an INT3 of the guest's
    /// own (a debugger should stop there rather than ignore it and loop).
    Trap,
}

impl Planted {
    /// Write an INT3 at `linear` (through the guest's page tables),
    /// keeping the byte it replaces; whether it is there now (ROM drops
    /// writes: there only a hardware breakpoint works).
    pub fn plant_int3(
        &mut self,
        memory: &mut GuestMemory,
        control: ControlRegisters,
        linear: u64,
    ) -> bool {
        if self.int3s.iter().any(|(a, _)| *a == linear) {
            return true;
        }
        let mut old = [0u8];
        if read_linear(memory, control, linear, &mut old) != 1
            || !write_linear(memory, control, linear, &[INT3])
        {
            return false;
        }
        let mut now = [0u8];
        if read_linear(memory, control, linear, &mut now) != 1 || now[0] != INT3 {
            return false;
        }
        self.int3s.push((linear, old[0]));
        true
    }

    /// Put the guest's byte back over the INT3 at `linear`; whether one
    /// was planted there.
    pub fn remove_int3(
        &mut self,
        memory: &mut GuestMemory,
        control: ControlRegisters,
        linear: u64,
    ) -> bool {
        let Some(i) = self.int3s.iter().position(|(a, _)| *a == linear) else {
            return false;
        };
        let (_, byte) = self.int3s.remove(i);
        write_linear(memory, control, linear, &[byte]);
        true
    }

    /// Take everything out (the debugger detached or went away): the
    /// guest's bytes go back and the debug registers are freed.
    pub fn clear(&mut self, memory: &mut GuestMemory, control: ControlRegisters) {
        for (linear, byte) in core::mem::take(&mut self.int3s) {
            write_linear(memory, control, linear, &[byte]);
        }
        self.slots = [None; 4];
    }

    /// Show in `data`, read from `start`, the guest's own bytes rather
    /// than the INT3s planted over them.
    pub fn hide_int3s(&self, start: u64, data: &mut [u8]) {
        for (linear, byte) in &self.int3s {
            if let Some(i) = linear.checked_sub(start).filter(|i| *i < data.len() as u64) {
                data[i as usize] = *byte;
            }
        }
    }

    /// Put `b` in a free debug register; whether there was one.
    pub fn add(&mut self, b: Breakpoint) -> bool {
        match self.slots.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => {
                *slot = Some(b);
                true
            }
            None => false,
        }
    }

    /// Take `b` out of its debug register; whether it was there.
    pub fn remove(&mut self, b: Breakpoint) -> bool {
        match self.slots.iter_mut().find(|slot| **slot == Some(b)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }

    /// What the backend is to do for the next run: `step` or not, with
    /// everything planted.
    pub fn host_debug(&self, step: bool) -> HostDebug {
        HostDebug {
            step,
            breakpoints: self.slots,
            software_breakpoints: !self.int3s.is_empty(),
        }
    }

    /// What `stop` means to this debugger.
    pub fn reason(&self, stop: &DebugStop) -> StopReason {
        match stop.kind {
            StopKind::Int3 if self.int3s.iter().any(|(a, _)| *a == stop.pc) => StopReason::SwBreak,
            StopKind::Step => StopReason::Step,
            StopKind::Breakpoint(i) => match self.slots.get(usize::from(i)).copied().flatten() {
                Some(b) if b.on != BreakOn::Execute => StopReason::Watch(b),
                _ => StopReason::Trap,
            },
            StopKind::Int3 => StopReason::Trap,
        }
    }
}

/// Guest memory for a page walk that must not change it (no accessed or
/// dirty bits set by a debugger's look).
struct ReadOnly<'a>(&'a GuestMemory);

impl PageTableMemory for ReadOnly<'_> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        self.0.read_u32(gpa).ok()
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        self.0.read_u64(gpa).ok()
    }
    fn write_u32(&mut self, _: u64, _: u32) -> bool {
        true
    }
    fn write_u64(&mut self, _: u64, _: u64) -> bool {
        true
    }
}

/// The guest-physical address of `linear` under `control` now, if mapped
/// (paging off: the address itself).
pub fn translate(memory: &GuestMemory, control: ControlRegisters, linear: u64) -> Option<u64> {
    Walker::new(control)
        .translate(
            &mut ReadOnly(memory),
            linear,
            Access::new(AccessKind::Read, 0),
        )
        .ok()
        .map(|t| t.gpa)
}

/// Copy guest memory at `linear` into `data`, page by page, through the
/// guest's page tables; how many bytes could be read (the rest is not
/// mapped, or not RAM/ROM).
pub fn read_linear(
    memory: &GuestMemory,
    control: ControlRegisters,
    linear: u64,
    data: &mut [u8],
) -> usize {
    let mut done = 0;
    while done < data.len() {
        let at = linear.wrapping_add(done as u64);
        let chunk = (0x1000 - (at & 0xfff) as usize).min(data.len() - done);
        let Some(gpa) = translate(memory, control, at) else {
            break;
        };
        if memory.read(gpa, &mut data[done..done + chunk]).is_err() {
            break;
        }
        done += chunk;
    }
    done
}

/// Write `data` to guest memory at `linear` through the guest's page
/// tables; whether all of it went (ROM drops writes: read back to know).
pub fn write_linear(
    memory: &mut GuestMemory,
    control: ControlRegisters,
    linear: u64,
    data: &[u8],
) -> bool {
    let mut done = 0;
    while done < data.len() {
        let at = linear.wrapping_add(done as u64);
        let chunk = (0x1000 - (at & 0xfff) as usize).min(data.len() - done);
        let Some(gpa) = translate(memory, control, at) else {
            return false;
        };
        if memory.write(gpa, &data[done..done + chunk]).is_err() {
            return false;
        }
        done += chunk;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::test_host::TestHost;

    #[test]
    fn dr7_enables_exactly_the_breakpoints_set() {
        let d = HostDebug {
            breakpoints: [
                Some(Breakpoint::execute(0x1000)),
                None,
                Breakpoint::watch(0x2000, 4, BreakOn::Write),
                Breakpoint::watch(0x3000, 8, BreakOn::ReadWrite),
            ],
            ..HostDebug::default()
        };
        // L0, L2, L3; R/W2 01 LEN2 11; R/W3 11 LEN3 10.
        assert_eq!(
            d.dr7(),
            0x400 | 1 << 9 | 0b01_01_00_01 | 0b1101 << 24 | 0b1011 << 28
        );
        assert_eq!(d.addresses(), [0x1000, 0, 0x2000, 0x3000]);
        assert!(!HostDebug::default().has_breakpoints());
        assert_eq!(Breakpoint::watch(0x2002, 4, BreakOn::Write), None);
        assert_eq!(Breakpoint::watch(0x2000, 3, BreakOn::Write), None);
    }

    #[test]
    fn dr6_names_the_breakpoint_or_the_step() {
        assert_eq!(
            DebugStop::from_dr6(0xffff_4ff0, 5).kind,
            StopKind::Step,
            "BS"
        );
        assert_eq!(
            DebugStop::from_dr6(0xffff_0ff4, 5).kind,
            StopKind::Breakpoint(2)
        );
    }

    #[test]
    fn planted_int3s_hide_under_reads_and_come_out_on_clear() {
        let host = TestHost::new();
        let mut memory = GuestMemory::new();
        memory
            .add_ram(0, host.alloc_memory(1 << 20, 4096).unwrap())
            .unwrap();
        let control = ControlRegisters::default();
        memory.write(0x1000, &[0x90, 0xff, 0x05]).unwrap();
        let mut p = Planted::default();
        assert!(p.plant_int3(&mut memory, control, 0x1001));
        assert_eq!(memory.read_u8(0x1001).unwrap(), INT3);
        let mut seen = [0u8; 3];
        read_linear(&memory, control, 0x1000, &mut seen);
        p.hide_int3s(0x1000, &mut seen);
        assert_eq!(seen, [0x90, 0xff, 0x05]);
        assert!(p.host_debug(false).software_breakpoints);
        let int3 = DebugStop {
            kind: StopKind::Int3,
            pc: 0x1001,
        };
        assert_eq!(p.reason(&int3), StopReason::SwBreak);
        // The guest's own INT3 elsewhere is not the debugger's.
        let own = DebugStop { pc: 0x1002, ..int3 };
        assert_eq!(p.reason(&own), StopReason::Trap);
        // Beyond RAM nothing is planted.
        assert!(!p.plant_int3(&mut memory, control, 0x20_0000));
        p.clear(&mut memory, control);
        assert_eq!(memory.read_u8(0x1001).unwrap(), 0xff);
        assert!(!p.host_debug(true).software_breakpoints);
    }

    #[test]
    fn planted_watchpoints_name_their_address_in_a_stop() {
        let mut p = Planted::default();
        let w = Breakpoint::watch(0x2000, 4, BreakOn::Write).unwrap();
        assert!(p.add(Breakpoint::execute(0x1000)));
        assert!(p.add(w));
        assert!(p.add(Breakpoint::execute(0x1001)));
        assert!(p.add(Breakpoint::execute(0x1002)));
        assert!(!p.add(Breakpoint::execute(0x1003)), "four debug registers");
        assert_eq!(
            p.reason(&DebugStop::from_dr6(0xffff_0ff2, 0x1234)),
            StopReason::Watch(w)
        );
        assert_eq!(
            p.reason(&DebugStop::from_dr6(0xffff_0ff1, 0x1000)),
            StopReason::Trap
        );
        assert!(p.remove(w));
        assert!(!p.remove(w));
        assert_eq!(p.host_debug(true).breakpoints[1], None);
        assert!(p.host_debug(true).step);
    }

    #[test]
    fn gdb_register_order_names_every_gpr_once() {
        let mut seen = GDB_GPR_ORDER;
        seen.sort_unstable();
        assert_eq!(seen, core::array::from_fn::<usize, 16, _>(|i| i));
    }

    /// gdb sees RAX, RBX, RCX, RDX, ... in its order, and what it writes
    /// lands in the same registers, with RFLAGS' high half and bit 1 kept.
    #[test]
    fn gdb_registers_read_and_write_in_gdbs_order() {
        use crate::emulator::RegisterFile;
        let mut cpu = RegisterFile::long_mode(0x1000);
        for i in 0..16 {
            cpu.set_gpr(i, 0x100 + i as u64);
        }
        cpu.rip = 0x4000;
        cpu.rflags = (1 << 40) | 0x202;
        for (s, selector) in [
            (Segment::Es, 0x20),
            (Segment::Cs, 0x08),
            (Segment::Ss, 0x10),
            (Segment::Ds, 0x18),
            (Segment::Fs, 0x28),
            (Segment::Gs, 0x33),
        ] {
            cpu.segments[s as usize].selector = selector;
        }
        let regs = read_gdb_registers(&cpu);
        // RAX, RBX (index 3), RCX (1), RDX (2), RSI (6), RDI (7), RBP, RSP.
        assert_eq!(
            regs.gprs[..8],
            [0x100, 0x103, 0x101, 0x102, 0x106, 0x107, 0x105, 0x104]
        );
        assert_eq!(
            regs.gprs[8..],
            core::array::from_fn::<u64, 8, _>(|i| 0x108 + i as u64)
        );
        assert_eq!(regs.rip, 0x4000);
        assert_eq!(regs.eflags, 0x202);
        // CS, SS, DS, ES, FS, GS.
        assert_eq!(regs.selectors, [0x08, 0x10, 0x18, 0x20, 0x28, 0x33]);

        let mut gprs = regs.gprs;
        gprs[1] = 0xbbbb; // RBX
        write_gdb_registers(&mut cpu, &gprs, 0x5000, 0x100);
        assert_eq!(cpu.gpr(3), 0xbbbb);
        assert_eq!(cpu.gpr(1), 0x101);
        assert_eq!(cpu.rip, 0x5000);
        // TF as gdb says, IF cleared, bit 1 and the high half kept.
        assert_eq!(cpu.rflags, (1 << 40) | 0x102);
    }

    #[test]
    fn linear_memory_through_page_tables_leaves_accessed_bits_alone() {
        let host = TestHost::new();
        let mut memory = GuestMemory::new();
        memory
            .add_ram(0, host.alloc_memory(4 << 20, 4096).unwrap())
            .unwrap();
        // 32-bit paging: PD at 0x1000, one PT at 0x2000 mapping linear
        // 0x40_0000.. to 0x3000.
        memory.write_u32(0x1000 + 4, 0x2000 | 3).unwrap();
        memory.write_u32(0x2000, 0x3000 | 3).unwrap();
        memory.write_u32(0x2004, 0x5000 | 3).unwrap();
        let control = ControlRegisters {
            cr0: crate::paging::CR0_PE | crate::paging::CR0_PG,
            cr3: 0x1000,
            cr4: 0,
            efer: 0,
        };
        // Across the page boundary: the two pages are not adjacent.
        assert!(write_linear(&mut memory, control, 0x40_0ffe, b"abcd"));
        let mut bytes = [0u8; 2];
        memory.read(0x3ffe, &mut bytes).unwrap();
        assert_eq!(&bytes, b"ab");
        memory.read(0x5000, &mut bytes).unwrap();
        assert_eq!(&bytes, b"cd");
        let mut back = [0u8; 6];
        assert_eq!(read_linear(&memory, control, 0x40_0ffe, &mut back), 6);
        assert_eq!(&back[..4], b"abcd");
        // An unmapped page ends the read.
        assert_eq!(read_linear(&memory, control, 0x40_1ffe, &mut back), 2);
        assert_eq!(memory.read_u32(0x2000).unwrap() & 0x20, 0, "no A bit set");
    }
}
