//! The emulator in every CPU mode, driven through a test VM as a backend
//! would after an MMIO exit: segmentation (bases, limits, rights,
//! expand-down, overrides), address-size prefixes, real/protected/
//! compatibility/64-bit decoding, instruction fetch across a page boundary,
//! the faults the guest must receive (#PF with error code and CR2, #GP, #SS,
//! #UD, #NM, #AC), bounded REP with exact RCX/RSI/RDI, string port I/O, and
//! the typed error for instructions the emulator does not implement.

use iced_x86::code_asm::*;
use std::sync::{Arc, Mutex};
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo};
use vmm_core::emulator::{
    BusError, Completion, CpuMode, EmulateError, Emulator, Exception, GuestBus, PortString,
    RegisterFile, Segment, SegmentRegister, RFLAGS_AC, RFLAGS_DF,
};
use vmm_core::paging::{PageFault, CR0_AM, CR0_TS, PF_FETCH, PF_PRESENT, PF_USER, PF_WRITE};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vcpu::emulation_stop_reason;
use vmm_core::vm::Vm;

const MMIO: u64 = 0xf000_0000;
const PORT: u16 = 0x3f8;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Read(u64, usize),
    Write(u64, Vec<u8>),
    In(u16, usize),
    Out(u16, Vec<u8>),
}

/// A device that logs every access; MMIO reads return the low address
/// byte in each byte, port reads count up from 0x10.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<Event>>>,
    next_in: Arc<Mutex<u8>>,
}

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Device for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}

impl Mmio for Recorder {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        self.log
            .lock()
            .unwrap()
            .push(Event::Read(gpa.gpa(), data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = (gpa.gpa() as u8).wrapping_add(i as u8);
        }
        IoOutcome::Done
    }
    fn mmio_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.log
            .lock()
            .unwrap()
            .push(Event::Write(gpa.gpa(), data.to_vec()));
        IoOutcome::Done
    }
}

impl PortIo for Recorder {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        self.log
            .lock()
            .unwrap()
            .push(Event::In(port.port(), data.len()));
        let mut n = self.next_in.lock().unwrap();
        for b in data.iter_mut() {
            *n = n.wrapping_add(1);
            *b = n.wrapping_add(0x0f);
        }
        IoOutcome::Done
    }
    fn port_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.log
            .lock()
            .unwrap()
            .push(Event::Out(port.port(), data.to_vec()));
        IoOutcome::Done
    }
}

fn vm() -> (Vm, Recorder) {
    let rec = Recorder::default();
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x40_0000)
        .device(rec.clone(), &[(PORT, 8)], &[(MMIO, 0x4000)])
        .build()
        .unwrap();
    (vm, rec)
}

fn asm(
    bitness: u32,
    ip: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

fn run(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate(cpu, vm)
}

const PML4: u64 = 0x3f_0000;
/// The page directory for 0..1 GiB.
const PD: u64 = 0x3f_2000;

/// 4-level page tables at `PML4` mapping 0..4 MiB and the MMIO page with
/// 2 MiB pages, user-accessible, writable.
fn long_mode(vm: &mut Vm) -> RegisterFile {
    let m = vm.memory_mut();
    m.write_u64(PML4, (PML4 + 0x1000) | 7).unwrap();
    m.write_u64(PML4 + 0x1000, PD | 7).unwrap();
    m.write_u64(PML4 + 0x1000 + 8 * 3, (PML4 + 0x3000) | 7)
        .unwrap(); // 3 GiB..4 GiB
    m.write_u64(PD, 0x87).unwrap();
    m.write_u64(PD + 8, 0x20_0000 | 0x87).unwrap();
    m.write_u64(PML4 + 0x3000 + 8 * ((MMIO >> 21) & 511), MMIO | 0x87)
        .unwrap();
    RegisterFile::long_mode(PML4)
}

// ----------------------------------------------------------------------
// Real mode and 16-bit code

#[test]
fn real_mode_uses_segment_bases_and_16_bit_addressing() {
    let (mut vm, _) = vm();
    let mut cpu = RegisterFile::real_mode();
    // CS = 0x100 (base 0x1000), IP = 0x20; DS = 0x1234 (base 0x12340).
    cpu.segments[Segment::Cs as usize] =
        SegmentRegister::new(0x100, 0x1000, 0xffff, SegmentRegister::CODE);
    cpu.segments[Segment::Ds as usize] =
        SegmentRegister::new(0x1234, 0x12340, 0xffff, SegmentRegister::DATA);
    cpu.rip = 0x20;
    let code = asm(16, 0x20, |a| a.mov(word_ptr(bx + si + 4), ax));
    vm.memory_mut().write(0x1020, &code).unwrap();
    cpu.gprs[0] = 0xdead_beef; // AX = 0xbeef
    cpu.gprs[3] = 0xfff0; // BX
    cpu.gprs[6] = 0x0020; // SI: 0xfff0 + 0x20 + 4 wraps to 0x14
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(vm.memory().read_u16(0x12340 + 0x14).unwrap(), 0xbeef);
    assert_eq!(cpu.rip, 0x20 + code.len() as u64);
}

#[test]
fn real_mode_segment_limit_gives_gp_or_ss() {
    let (mut vm, _) = vm();
    let mut cpu = RegisterFile::real_mode();
    cpu.rip = 0x100;
    // A word at DS:0xffff crosses the 64 KiB limit.
    let code = asm(16, 0x100, |a| a.mov(ax, word_ptr(0xffff)));
    vm.memory_mut().write(0x100, &code).unwrap();
    let before = cpu.clone();
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    assert_eq!(cpu, before, "a faulting instruction changes nothing");
    // Through BP the default segment is SS: #SS.
    let code = asm(16, 0x100, |a| a.mov(ax, word_ptr(bp + 0xffff)));
    vm.memory_mut().write(0x100, &code).unwrap();
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::StackFault(0)))
    );
}

#[test]
fn address_size_prefix_in_16_bit_code() {
    let (mut vm, _) = vm();
    let mut cpu = RegisterFile::real_mode();
    cpu.segments[Segment::Ds as usize].limit = 0xffff_ffff; // "unreal" mode
    cpu.rip = 0x100;
    let code = asm(16, 0x100, |a| a.mov(dword_ptr(ebx + ecx * 4 + 8), eax));
    assert_eq!(code[0], 0x66);
    vm.memory_mut().write(0x100, &code).unwrap();
    cpu.gprs[0] = 0x1122_3344;
    cpu.gprs[3] = 0x0010_0000;
    cpu.gprs[1] = 0x10;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(vm.memory().read_u32(0x10_0048).unwrap(), 0x1122_3344);
}

// ----------------------------------------------------------------------
// Protected mode

#[test]
fn protected_mode_segment_rights_and_overrides() {
    let (mut vm, rec) = vm();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    // ES based at MMIO - 0x100: es:[ebx] with EBX = 0x104 hits MMIO + 4.
    cpu.segments[Segment::Es as usize].base = MMIO - 0x100;
    let code = asm(32, 0x1000, |a| {
        a.mov(dword_ptr(ebx).es(), 0x5566_7788u32 as i32)
    });
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = 0x104;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(
        rec.take(),
        vec![Event::Write(MMIO + 4, vec![0x88, 0x77, 0x66, 0x55])]
    );

    // A read-only data segment refuses writes.
    cpu.rip = 0x1000;
    cpu.segments[Segment::Es as usize].attributes = 0x0091 | SegmentRegister::DB;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    // A null (not present) segment refuses everything.
    cpu.segments[Segment::Es as usize] = SegmentRegister::default();
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    assert!(rec.take().is_empty());
}

#[test]
fn expand_down_segment_limits() {
    let (mut vm, _) = vm();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    // Expand-down, writable, big: valid offsets are (0xfff, 0xffffffff].
    cpu.segments[Segment::Ds as usize] =
        SegmentRegister::new(0x10, 0, 0xfff, 0x0097 | SegmentRegister::DB);
    let code = asm(32, 0x1000, |a| a.mov(byte_ptr(ebx), al));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = 0x800;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    cpu.gprs[3] = 0x2000;
    cpu.gprs[0] = 0x42;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(vm.memory().read_u8(0x2000).unwrap(), 0x42);
}

#[test]
fn compatibility_mode_decodes_32_bit_code() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.segments[Segment::Cs as usize].attributes = SegmentRegister::CODE | SegmentRegister::DB;
    cpu.rip = 0x1000;
    // In 32-bit code 0x40 is INC EAX, not a REX prefix: `inc eax` then
    // nothing else; `mov [ebx], eax` uses 32-bit addressing.
    let code = asm(32, 0x1000, |a| a.mov(dword_ptr(ebx), eax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = MMIO + 8;
    cpu.gprs[0] = 0xffff_ffff_0102_0304;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(rec.take(), vec![Event::Write(MMIO + 8, vec![4, 3, 2, 1])]);
}

// ----------------------------------------------------------------------
// 64-bit mode

#[test]
fn long_mode_mmio_write_read_and_fs_base() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| {
        a.mov(dword_ptr(rbx + 0x10), eax)?;
        a.movzx(ecx, word_ptr(rbx + 0x22))?;
        a.mov(rdx, qword_ptr(0x30u64).fs())
    });
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = MMIO;
    cpu.gprs[0] = 0xaabb_ccdd;
    cpu.gprs[1] = u64::MAX;
    cpu.segments[Segment::Fs as usize].base = MMIO + 0x100;
    for _ in 0..3 {
        assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    }
    assert_eq!(cpu.rip, 0x1000 + code.len() as u64);
    assert_eq!(cpu.gprs[1], 0x2322, "MOVZX zero-extends to 64 bits");
    assert_eq!(cpu.gprs[2], 0x3736_3534_3332_3130);
    assert_eq!(
        rec.take(),
        vec![
            Event::Write(MMIO + 0x10, vec![0xdd, 0xcc, 0xbb, 0xaa]),
            Event::Read(MMIO + 0x22, 2),
            Event::Read(MMIO + 0x130, 8),
        ]
    );
}

#[test]
fn non_canonical_addresses_fault() {
    let (mut vm, _) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.mov(qword_ptr(rbx), rax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = 0x0000_8000_0000_0000;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    let code = asm(64, 0x1000, |a| a.mov(qword_ptr(rbp), rax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[5] = 0x0000_8000_0000_0000;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::StackFault(0)))
    );
}

#[test]
fn page_faults_carry_error_code_and_cr2_and_change_nothing() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    // Map 0x60_0000 as a 4 KiB read-only user page at MMIO, CPL 3.
    let m = vm.memory_mut();
    m.write_u64(PD + 8 * 3, 0x5000 | 7).unwrap();
    m.write_u64(0x5000, MMIO | 5).unwrap();
    cpu.segments[Segment::Ss as usize].attributes |= 3 << 5;
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.mov(dword_ptr(0x60_0010u64), eax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    let before = cpu.clone();
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::PageFault(PageFault {
            address: 0x60_0010,
            error_code: PF_PRESENT | PF_WRITE | PF_USER
        })))
    );
    assert_eq!(cpu, before);
    // Reads are allowed.
    let code = asm(64, 0x1000, |a| a.mov(eax, dword_ptr(0x60_0010u64)));
    vm.memory_mut().write(0x1000, &code).unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(rec.take(), vec![Event::Read(MMIO + 0x10, 4)]);
}

#[test]
fn a_write_straddling_into_an_unmapped_page_writes_nothing() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    let m = vm.memory_mut();
    m.write_u64(PD + 8 * 3, 0x5000 | 7).unwrap();
    m.write_u64(0x5000, MMIO | 7).unwrap(); // 0x60_0000 -> MMIO; 0x60_1000 not present
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.mov(qword_ptr(0x60_0ffcu64), rax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::PageFault(PageFault {
            address: 0x60_1000,
            error_code: PF_WRITE
        })))
    );
    assert!(rec.take().is_empty());
    // Mapped: the device sees two pieces.
    vm.memory_mut()
        .write_u64(0x5008, (MMIO + 0x2000) | 7)
        .unwrap();
    cpu.gprs[0] = 0x0807_0605_0403_0201;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(
        rec.take(),
        vec![
            Event::Write(MMIO + 0xffc, vec![1, 2, 3, 4]),
            Event::Write(MMIO + 0x2000, vec![5, 6, 7, 8])
        ]
    );
}

#[test]
fn fetch_across_a_page_boundary() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    let m = vm.memory_mut();
    m.write_u64(PD + 8 * 3, 0x5000 | 7).unwrap();
    m.write_u64(0x5000, 0x8000 | 7).unwrap(); // 0x60_0000 -> 0x8000; 0x60_1000 absent
    let ip = 0x60_0ffd;
    let code = asm(64, ip, |a| a.mov(dword_ptr(rbx + 0x1234), eax)); // 6 bytes
    assert!(code.len() > 3);
    vm.memory_mut().write(0x8ffd, &code[..3]).unwrap();
    cpu.rip = ip;
    cpu.gprs[3] = MMIO;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::PageFault(PageFault {
            address: 0x60_1000,
            error_code: PF_FETCH
        })))
    );
    // Map the second page: the instruction is fetched from both.
    vm.memory_mut().write_u64(0x5008, 0x9000 | 7).unwrap();
    vm.memory_mut().write(0x9000, &code[3..]).unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.rip, ip + code.len() as u64);
    assert_eq!(rec.take().len(), 1);
    // An instruction that ends on the first page never touches the second.
    vm.memory_mut().write_u64(0x5008, 0).unwrap();
    let short = asm(64, 0x60_0ffd, |a| a.mov(dword_ptr(rbx), eax));
    assert_eq!(short.len(), 2);
    vm.memory_mut().write(0x8ffd, &short).unwrap();
    cpu.rip = 0x60_0ffd;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
}

#[test]
fn rep_is_bounded_and_leaves_exact_counts() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.rep().stosw());
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[0] = 0xabcd;
    cpu.gprs[1] = 100;
    cpu.gprs[7] = MMIO + 0x1000;
    cpu.rflags |= RFLAGS_DF;
    let emu = Emulator {
        max_rep_iterations: 16,
        ..Emulator::default()
    };
    assert_eq!(emu.emulate(&mut cpu, &mut vm), Ok(Completion::Paused));
    assert_eq!(
        (cpu.gprs[1], cpu.gprs[7], cpu.rip),
        (84, MMIO + 0x1000 - 32, 0x1000)
    );
    // 16 iterations per call: 6 pauses, the 7th call retires.
    let mut pauses = 1;
    while emu.emulate(&mut cpu, &mut vm) == Ok(Completion::Paused) {
        pauses += 1;
    }
    assert_eq!(pauses, 6);
    assert_eq!((cpu.gprs[1], cpu.gprs[7]), (0, MMIO + 0x1000 - 200));
    assert_eq!(cpu.rip, 0x1000 + code.len() as u64);
    let log = rec.take();
    assert_eq!(log.len(), 100);
    assert_eq!(log[99], Event::Write(MMIO + 0x1000 - 198, vec![0xcd, 0xab]));
    // RCX = 0: nothing happens, RIP moves on.
    cpu.rip = 0x1000;
    assert_eq!(emu.emulate(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert!(rec.take().is_empty());
}

#[test]
fn string_port_io() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    vm.memory_mut().write(0x9000, b"hello").unwrap();
    let code = asm(64, 0x1000, |a| {
        a.rep().outsb()?;
        a.rep().insw()
    });
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[2] = u64::from(PORT);
    cpu.gprs[1] = 5;
    cpu.gprs[6] = 0x9000;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.gprs[6], 0x9005);
    let outs: Vec<_> = b"hello"
        .iter()
        .map(|b| Event::Out(PORT, vec![*b]))
        .collect();
    assert_eq!(rec.take(), outs);
    cpu.gprs[1] = 2;
    cpu.gprs[7] = 0xa000;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.gprs[7], 0xa004);
    assert_eq!(vm.memory().read_u32(0xa000).unwrap(), 0x1312_1110);
    assert_eq!(rec.take(), vec![Event::In(PORT, 2), Event::In(PORT, 2)]);
}

/// A FIFO behind one port whose string reads are logged: each element
/// read returns the next byte of a counter, whichever way it is read.
#[derive(Clone, Default)]
struct Fifo {
    next: Arc<Mutex<u8>>,
    string_reads: Arc<Mutex<Vec<usize>>>,
}

impl Device for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}

impl PortIo for Fifo {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let mut n = self.next.lock().unwrap();
        for b in data.iter_mut() {
            *b = *n;
            *n = n.wrapping_add(1);
        }
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, _: &[u8]) -> IoOutcome {
        IoOutcome::Done
    }
    fn port_read_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        _size: usize,
        data: &mut [u8],
    ) -> IoOutcome {
        self.string_reads.lock().unwrap().push(data.len());
        self.port_read(ctx, port, data);
        IoOutcome::Done
    }
}

#[test]
fn rep_ins_into_ram_moves_page_runs_in_one_string_access() {
    const FIFO: u16 = 0x60;
    let fifo = Fifo::default();
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x40_0000)
        .device(fifo.clone(), &[(FIFO, 1)], &[])
        .build()
        .unwrap();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.rep().insw());
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[2] = u64::from(FIFO);
    // 2304 words from 256 bytes below a page boundary: runs end at page
    // boundaries and at the 1024-iteration bound of each call.
    cpu.gprs[1] = 2304;
    cpu.gprs[7] = 0x9f00;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Paused));
    assert_eq!(
        (cpu.gprs[1], cpu.gprs[7], cpu.rip),
        (1280, 0x9f00 + 2048, 0x1000)
    );
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Paused));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.gprs[1], cpu.gprs[7]), (0, 0x9f00 + 4608));
    assert_eq!(
        *fifo.string_reads.lock().unwrap(),
        vec![256, 1792, 2048, 256, 256],
        "one string access per page run, none across a page or a pause"
    );
    let mut got = vec![0u8; 4608];
    vm.memory().read(0x9f00, &mut got).unwrap();
    let want: Vec<u8> = (0..4608u32).map(|i| i as u8).collect();
    assert_eq!(got, want, "the bytes land in order, as element reads would");
}

/// One INS/OUTS case: a name, the CPU, the instruction bytes at 0x1000,
/// the particulars an I/O exit reports for it (INS, size, address size,
/// REP), then RCX, RSI, RDI and RFLAGS.DF.
type PortStringCase = (
    &'static str,
    RegisterFile,
    &'static [u8],
    (bool, u8, u8, bool),
    (u64, u64, u64, bool),
);

#[test]
fn port_string_from_exit_particulars_matches_decoding_the_instruction() {
    let real = RegisterFile::real_mode;
    let flat = RegisterFile::protected_flat32;
    let mut probe = vm().0;
    let long = long_mode(&mut probe);
    let ins = |size, asize| (true, size, asize, true);
    let cases: [PortStringCase; 10] = [
        (
            "real rep insw",
            real(),
            &[0xf3, 0x6d],
            ins(2, 16),
            (3, 0, 0x2000, false),
        ),
        (
            "real insb",
            real(),
            &[0x6c],
            (true, 1, 16, false),
            (9, 0, 0xfffe, false),
        ),
        (
            "real rep insw wrapping di",
            real(),
            &[0xf3, 0x6d],
            ins(2, 16),
            (3, 0, 0xfffe, false),
        ),
        (
            "flat32 rep insd over a page end",
            flat(),
            &[0xf3, 0x6d],
            ins(4, 32),
            (5, 0, 0x3ff8, false),
        ),
        (
            "flat32 rep insw downwards",
            flat(),
            &[0xf3, 0x66, 0x6d],
            ins(2, 32),
            (4, 0, 0x2010, true),
        ),
        (
            "long rep insb past the iteration bound",
            long.clone(),
            &[0xf3, 0x6c],
            ins(1, 64),
            (3000, 0, 0x2000, false),
        ),
        (
            "long a32 rep insw",
            long.clone(),
            &[0x67, 0xf3, 0x66, 0x6d],
            ins(2, 32),
            (3, 0, 0x1_0000_2000, false),
        ),
        (
            "long rep insw into an unmapped page",
            long.clone(),
            &[0xf3, 0x66, 0x6d],
            ins(2, 64),
            (4, 0, 0x40_0000 - 2, false),
        ),
        (
            "long rep insw into MMIO",
            long.clone(),
            &[0xf3, 0x66, 0x6d],
            ins(2, 64),
            (3, 0, MMIO, false),
        ),
        (
            "flat32 rep outsw",
            flat(),
            &[0xf3, 0x66, 0x6f],
            (false, 2, 32, true),
            (4, 0x2000, 0, false),
        ),
    ];
    for (name, start, code, (input, size, address_size, rep), (count, source, destination, down)) in
        cases
    {
        let setup = || {
            let (mut vm, rec) = vm();
            let mut cpu = start.clone();
            if start.control.cr3 != 0 {
                cpu = long_mode(&mut vm);
            }
            vm.memory_mut().write(0x1000, code).unwrap();
            vm.memory_mut()
                .write(0x2000, &(0..64u8).collect::<Vec<_>>())
                .unwrap();
            cpu.rip = 0x1000;
            cpu.gprs[1] = count;
            cpu.gprs[2] = u64::from(PORT);
            cpu.gprs[6] = source;
            cpu.gprs[7] = destination;
            if down {
                cpu.rflags |= RFLAGS_DF;
            }
            (vm, rec, cpu)
        };
        let (mut vm_a, rec_a, mut cpu_a) = setup();
        let (mut vm_b, rec_b, mut cpu_b) = setup();
        let io = PortString {
            input,
            size,
            address_size,
            rep,
            segment: if input { Segment::Es } else { Segment::Ds },
            next_rip: 0x1000 + code.len() as u64,
        };
        let emulator = Emulator::default();
        for call in 0..6 {
            let decoded = emulator.emulate(&mut cpu_a, &mut vm_a);
            let reported = emulator.emulate_port_string(&mut cpu_b, &mut vm_b, &io);
            let at = format!("{name} (call {call})");
            assert_eq!(decoded, reported, "{at}");
            assert_eq!(cpu_a, cpu_b, "{at}");
            assert_eq!(rec_a.take(), rec_b.take(), "{at}");
            let mut ram_a = vec![0u8; 0x1_1000];
            let mut ram_b = vec![0u8; 0x1_1000];
            vm_a.memory().read(0, &mut ram_a).unwrap();
            vm_b.memory().read(0, &mut ram_b).unwrap();
            assert!(ram_a == ram_b, "{at}: guest memory differs");
            if decoded != Ok(Completion::Paused) {
                assert!(call > 0 || count <= 1024, "{at}: finished too early");
                break;
            }
        }
    }
}

#[test]
fn port_io_with_dx_and_immediate() {
    let (mut vm, rec) = vm();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    let code = asm(32, 0x1000, |a| {
        a.out(dx, ax)?;
        a.in_(eax, dx)?;
        a.out(0xf8, al)
    });
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[2] = 0xdead_0000 | u64::from(PORT);
    cpu.gprs[0] = 0x1234_5678;
    for _ in 0..2 {
        assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    }
    assert_eq!(cpu.gprs[0], 0x1312_1110);
    // Port 0xf8 is not claimed: the write goes nowhere, the VM goes on.
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.rip, 0x1000 + code.len() as u64);
    assert_eq!(
        rec.take(),
        vec![Event::Out(PORT, vec![0x78, 0x56]), Event::In(PORT, 4)]
    );
}

#[test]
fn alignment_check_at_cpl3() {
    let (mut vm, _) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.segments[Segment::Ss as usize].attributes |= 3 << 5;
    cpu.control.cr0 |= CR0_AM;
    cpu.rflags |= RFLAGS_AC;
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.mov(dword_ptr(rbx), eax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = MMIO + 2;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::AlignmentCheck))
    );
    cpu.gprs[3] = MMIO + 4;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
}

#[test]
fn sse_faults() {
    let (mut vm, _) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.movdqa(xmmword_ptr(rbx), xmm1));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = MMIO + 8;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    cpu.control.cr0 |= CR0_TS;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::DeviceNotAvailable))
    );
}

#[test]
fn invalid_and_unsupported_instructions() {
    let (mut vm, _) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    // LOCK MOV is invalid: #UD. So are UD2 and bytes that decode to nothing.
    for bytes in [&[0xf0u8, 0x89, 0x03][..], &[0x0f, 0x0b], &[0x0f, 0x04]] {
        vm.memory_mut().write(0x1000, bytes).unwrap();
        assert_eq!(
            run(&mut cpu, &mut vm),
            Err(EmulateError::Exception(Exception::InvalidOpcode))
        );
    }
    // CPUID is valid but not emulated here: a typed error with the bytes.
    vm.memory_mut().write(0x1000, &[0x0f, 0xa2]).unwrap();
    let err = run(&mut cpu, &mut vm).unwrap_err();
    let EmulateError::Unsupported { bytes, mode, rip } = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (bytes.as_slice(), mode, rip),
        (&[0x0f, 0xa2][..], CpuMode::Long64, 0x1000)
    );
    assert_eq!(
        err.to_string(),
        "unsupported instruction [0f a2] in 64-bit mode at rip 0x1000"
    );
    // The VM stops with that text; the host keeps running.
    let reason = emulation_stop_reason(&err).expect("a stop reason");
    vm.stop(reason);
    assert_eq!(
        vm.stop_reason().map(|r| r.to_string()).as_deref(),
        Some("device instruction emulator failed: unsupported instruction [0f a2] in 64-bit mode at rip 0x1000")
    );
    assert_eq!(Exception::InvalidOpcode.vector(), 6);
    assert_eq!(
        emulation_stop_reason(&EmulateError::Exception(Exception::InvalidOpcode)),
        None
    );
}

#[test]
fn given_bytes_are_used_when_complete() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000; // guest memory there holds zeros (add [rax], al)
    cpu.gprs[3] = MMIO;
    let code = asm(64, 0x1000, |a| a.mov(byte_ptr(rbx), 7));
    assert_eq!(
        Emulator::default().emulate_with_bytes(&mut cpu, &mut vm, &code),
        Ok(Completion::Retired)
    );
    assert_eq!(rec.take(), vec![Event::Write(MMIO, vec![7])]);
}

/// A bus whose locked writes always lose the race.
struct Contended(Vm);

impl GuestBus for Contended {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.0.read_physical(gpa, data)
    }
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.0.write_physical(gpa, data)
    }
    fn write_locked(&mut self, _: u64, _: &[u8], _: &[u8]) -> Result<bool, BusError> {
        Ok(false)
    }
    fn io_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.0.io_read(port, data)
    }
    fn io_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.0.io_write(port, data)
    }
}

#[test]
fn lock_contention_changes_nothing() {
    let (mut vm, _) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.lock().xadd(dword_ptr(rbx), ecx));
    vm.memory_mut().write(0x1000, &code).unwrap();
    vm.memory_mut().write_u32(0x8000, 5).unwrap();
    cpu.gprs[3] = 0x8000;
    cpu.gprs[1] = 3;
    let before = cpu.clone();
    let mut bus = Contended(vm);
    assert_eq!(
        Emulator::default().emulate(&mut cpu, &mut bus),
        Err(EmulateError::LockContended)
    );
    assert_eq!(cpu, before);
    assert_eq!(bus.0.memory().read_u32(0x8000).unwrap(), 5);
    // Without contention: the sum lands, ECX gets the old value.
    assert_eq!(
        Emulator::default().emulate(&mut cpu, &mut bus.0),
        Ok(Completion::Retired)
    );
    assert_eq!(
        (bus.0.memory().read_u32(0x8000).unwrap(), cpu.gprs[1]),
        (8, 5)
    );
}

#[test]
fn avx_moves_need_xsave_state() {
    let (mut vm, rec) = vm();
    let mut cpu = long_mode(&mut vm);
    cpu.rip = 0x1000;
    let code = asm(64, 0x1000, |a| a.vmovdqu(ymm3, ymmword_ptr(rbx)));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = MMIO + 0x20;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(rec.take(), vec![Event::Read(MMIO + 0x20, 32)]);
    let bytes: Vec<u8> = (0x20u8..0x40).collect();
    assert_eq!(cpu.xmm[3].to_le_bytes()[..], bytes[..16]);
    assert_eq!(cpu.ymm_upper[3].to_le_bytes()[..], bytes[16..]);
    // Without CR4.OSXSAVE (or with XCR0 lacking AVX) VEX instructions #UD.
    cpu.rip = 0x1000;
    cpu.control.cr4 &= !vmm_core::paging::CR4_OSXSAVE;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::InvalidOpcode))
    );
    cpu.control.cr4 |= vmm_core::paging::CR4_OSXSAVE;
    cpu.xcr0 = 3;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::InvalidOpcode))
    );
}

#[test]
fn rep_movsb_with_16_bit_addresses_wraps_si() {
    let (mut vm, _) = vm();
    let mut cpu = RegisterFile::real_mode();
    cpu.segments[Segment::Ds as usize].base = 0x1_0000;
    cpu.segments[Segment::Es as usize].base = 0x2_0000;
    cpu.rip = 0x100;
    let code = asm(16, 0x100, |a| a.rep().movsb());
    vm.memory_mut().write(0x100, &code).unwrap();
    vm.memory_mut().write(0x1_fffe, &[1, 2]).unwrap();
    vm.memory_mut().write(0x1_0000, &[3, 4]).unwrap();
    // SI = 0xfffe with junk above bit 15: only SI counts and only SI changes.
    cpu.gprs[6] = 0xdead_0000_0000_fffe;
    cpu.gprs[7] = 0x10;
    cpu.gprs[1] = 0xffff_0004;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    let mut out = [0u8; 4];
    vm.memory().read(0x2_0010, &mut out).unwrap();
    assert_eq!(out, [1, 2, 3, 4]);
    assert_eq!(cpu.gprs[6], 0xdead_0000_0000_0002);
    assert_eq!(cpu.gprs[7], 0x14);
    assert_eq!(
        cpu.gprs[1], 0xffff_0000,
        "CX counts down, the rest of ECX stays"
    );
}

#[test]
fn protected_mode_with_32_bit_paging_and_pae() {
    use vmm_core::paging::{CR0_PG, CR4_PAE, CR4_PSE};
    let (mut vm, rec) = vm();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    // 32-bit paging: identity 4 MiB page for 0..4 MiB, and linear
    // 0x8000_0000 -> MMIO with a 4 MiB page.
    let m = vm.memory_mut();
    m.write_u32(0x3f_0000, 0x83).unwrap();
    m.write_u32(0x3f_0000 + 4 * (0x8000_0000 >> 22), (MMIO as u32) | 0x83)
        .unwrap();
    cpu.control.cr0 |= CR0_PG;
    cpu.control.cr3 = 0x3f_0000;
    cpu.control.cr4 = CR4_PSE;
    let code = asm(32, 0x1000, |a| a.mov(dword_ptr(ebx + 0x10), eax));
    vm.memory_mut().write(0x1000, &code).unwrap();
    cpu.gprs[3] = 0x8000_0000;
    cpu.gprs[0] = 0x0a0b_0c0d;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(
        rec.take(),
        vec![Event::Write(MMIO + 0x10, vec![0x0d, 0x0c, 0x0b, 0x0a])]
    );
    // Accessed and dirty bits were set on the 4 MiB PDE.
    let pde = vm.memory().read_u32(0x3f_0000 + 4 * 0x200).unwrap();
    assert_eq!(pde & 0x60, 0x60);

    // PAE: PDPT at 0x3f_1000, PD for 2..3 GiB maps 0x8000_0000 with a
    // 2 MiB page to MMIO; PD for 0..1 GiB identity-maps the code.
    let m = vm.memory_mut();
    m.write_u64(0x3f_1000, 0x3f_2000 | 1).unwrap();
    m.write_u64(0x3f_1000 + 8 * 2, 0x3f_3000 | 1).unwrap();
    m.write_u64(0x3f_2000, 0x83).unwrap();
    m.write_u64(0x3f_3000, MMIO | 0x83).unwrap();
    cpu.control.cr3 = 0x3f_1000;
    cpu.control.cr4 = CR4_PAE;
    cpu.rip = 0x1000;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(
        rec.take(),
        vec![Event::Write(MMIO + 0x10, vec![0x0d, 0x0c, 0x0b, 0x0a])]
    );
    // A not-present PDPTE: #PF with CR2 and a supervisor write error code.
    cpu.gprs[3] = 0xc000_0000;
    cpu.rip = 0x1000;
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::PageFault(PageFault {
            address: 0xc000_0010,
            error_code: PF_WRITE
        })))
    );
}

/// A VM with 1 MiB of RAM and a 64 KiB ROM at 0xf0000 (as firmware leaves
/// the BIOS segment write-protected).
fn vm_with_rom_at_f0000() -> Vm {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host, 0)
        .ram(0xf_0000)
        .rom(0xf_0000, &[0x5a; 0x1_0000])
        .build()
        .unwrap();
    vm.memory_mut().write(0x1000, &[0x60, 0x61]).unwrap(); // pusha; popa
    vm
}

#[test]
fn pusha_popa_round_trip_in_ram() {
    let mut vm = vm_with_rom_at_f0000();
    let mut cpu = RegisterFile::real_mode();
    cpu.rip = 0x1000;
    cpu.gprs = [
        0x1111, 0x2222, 0x3333, 0x4444, 0x8000, 0x6666, 0x7777, 0x8888, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(
        Emulator::default().emulate(&mut cpu, &mut vm),
        Ok(Completion::Retired)
    );
    assert_eq!(cpu.gprs[4], 0x8000 - 16);
    // Lowest address: DI, SI, BP, SP (as it was), BX, DX, CX, AX.
    let mut stack = [0u8; 16];
    vm.memory().read(0x8000 - 16, &mut stack).unwrap();
    let words: Vec<u16> = stack
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(
        words,
        vec![0x8888, 0x7777, 0x6666, 0x8000, 0x4444, 0x3333, 0x2222, 0x1111]
    );
    cpu.gprs = [0; 16];
    cpu.gprs[4] = 0x8000 - 16;
    assert_eq!(
        Emulator::default().emulate(&mut cpu, &mut vm),
        Ok(Completion::Retired)
    );
    assert_eq!(
        &cpu.gprs[..8],
        &[0x1111, 0x2222, 0x3333, 0x4444, 0x8000, 0x6666, 0x7777, 0x8888],
        "POPA restores all but SP, which moves past the frame"
    );
    assert_eq!(cpu.rip, 0x1002);
}

#[test]
fn pushad_onto_a_stack_in_rom_drops_the_writes_and_moves_esp() {
    // What ISOLINUX does with a stack at 0x100000 once SeaBIOS has made the
    // BIOS segment read-only: on hardware the writes are lost, the
    // instruction completes.
    let mut vm = vm_with_rom_at_f0000();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    cpu.gprs[0] = 0xdead_beef;
    cpu.gprs[4] = 0x10_0000;
    assert_eq!(
        Emulator::default().emulate(&mut cpu, &mut vm),
        Ok(Completion::Retired)
    );
    assert_eq!(cpu.gprs[4], 0x10_0000 - 32);
    let mut rom = [0u8; 32];
    vm.memory().read(0x10_0000 - 32, &mut rom).unwrap();
    assert_eq!(rom, [0x5a; 32], "ROM unchanged");
}
