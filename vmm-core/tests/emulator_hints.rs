//! The hints a backend passes with an exit (`emulator::Hints`): the
//! guest-physical address of the access that exited replaces the walk of
//! the guest's page tables for that operand, and the instruction bytes the
//! CPU fetched replace the fetch. A bus that logs every access shows which
//! walks and fetches happen; hints that do not fit the instruction (wrong
//! length, another page offset, another kind of access, an instruction
//! with other memory accesses) leave the emulator doing exactly what it
//! does without them.

use iced_x86::code_asm::*;
use vmm_core::emulator::{
    AccessHint, BusError, Completion, EmulateError, Emulator, Exception, GuestBus, Hints,
    InstructionBytes, RegisterFile,
};

const RAM: u64 = 0x2_0000;
const MMIO: u64 = 0xfee0_0000;
const MMIO_LEN: u64 = 0x2000;
const PML4: u64 = 0x1_0000;
/// The guest's page tables lie in 0x10000..0x14000.
const TABLES: core::ops::Range<u64> = 0x1_0000..0x1_4000;
const CODE: u64 = 0x1000;
/// Linear addresses of the MMIO pages (writable, writable, read-only).
const LA_MMIO: u64 = 0x10_0000;
const LA_MMIO2: u64 = 0x10_1000;
const LA_MMIO_RO: u64 = 0x10_2000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Access {
    Read(u64, usize),
    Write(u64, Vec<u8>),
}

/// RAM at 0..RAM and two MMIO pages that read 0x5a; every access logged.
struct Bus {
    ram: Vec<u8>,
    log: Vec<Access>,
}

impl Bus {
    fn new() -> Self {
        let mut bus = Bus {
            ram: vec![0; RAM as usize],
            log: Vec::new(),
        };
        let mut put = |at: u64, v: u64| {
            bus.ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(PML4, 0x1_1000 | 3);
        put(0x1_1000, 0x1_2000 | 3);
        put(0x1_2000, 0x1_3000 | 3);
        for i in 0..RAM >> 12 {
            put(0x1_3000 + 8 * i, (i << 12) | 3);
        }
        put(0x1_3000 + 8 * 0x100, MMIO | 3);
        put(0x1_3000 + 8 * 0x101, (MMIO + 0x1000) | 3);
        put(0x1_3000 + 8 * 0x102, MMIO | 1);
        bus
    }

    fn check(&self, gpa: u64, len: usize) -> Result<Option<usize>, BusError> {
        let end = gpa + len as u64;
        assert_eq!(gpa >> 12, (end - 1) >> 12, "access crosses a page");
        if end <= RAM {
            Ok(Some(gpa as usize))
        } else if gpa >= MMIO && end <= MMIO + MMIO_LEN {
            Ok(None)
        } else {
            Err(BusError::Memory { gpa })
        }
    }

    /// Reads of the guest's page tables.
    fn walks(&self) -> usize {
        self.log
            .iter()
            .filter(|a| matches!(a, Access::Read(gpa, _) if TABLES.contains(gpa)))
            .count()
    }

    /// Reads of the code page.
    fn fetches(&self) -> usize {
        self.log
            .iter()
            .filter(|a| matches!(a, Access::Read(gpa, _) if gpa >> 12 == CODE >> 12))
            .count()
    }

    /// The accesses outside the page tables and the code page.
    fn data(&self) -> Vec<Access> {
        self.log
            .iter()
            .filter(|a| {
                let (Access::Read(gpa, _) | Access::Write(gpa, _)) = a;
                !TABLES.contains(gpa) && gpa >> 12 != CODE >> 12
            })
            .cloned()
            .collect()
    }
}

impl GuestBus for Bus {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.log.push(Access::Read(gpa, data.len()));
        match self.check(gpa, data.len())? {
            Some(at) => data.copy_from_slice(&self.ram[at..at + data.len()]),
            None => data.fill(0x5a),
        }
        Ok(())
    }
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.log.push(Access::Write(gpa, data.to_vec()));
        if let Some(at) = self.check(gpa, data.len())? {
            self.ram[at..at + data.len()].copy_from_slice(data);
        }
        Ok(())
    }
    fn io_read(&mut self, _: u16, data: &mut [u8]) -> Result<(), BusError> {
        data.fill(0xa5);
        Ok(())
    }
    fn io_write(&mut self, _: u16, _: &[u8]) -> Result<(), BusError> {
        Ok(())
    }
}

fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// A 64-bit vCPU at CODE with `code` there, RBX = `addr`, RAX a pattern.
fn machine(code: &[u8], addr: u64) -> (RegisterFile, Bus) {
    let mut bus = Bus::new();
    bus.ram[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
    let mut cpu = RegisterFile::long_mode(PML4);
    cpu.rip = CODE;
    cpu.gprs[0] = 0x1122_3344_5566_7788;
    cpu.gprs[3] = addr;
    cpu.gprs[6] = 0x8000;
    cpu.gprs[7] = LA_MMIO;
    cpu.gprs[4] = 0x9000;
    (cpu, bus)
}

type Outcome = (Result<Completion, EmulateError>, RegisterFile, Bus);

fn emulate(code: &[u8], addr: u64, hints: &Hints) -> Outcome {
    let (mut cpu, mut bus) = machine(code, addr);
    let r = Emulator::default().emulate_hinted(&mut cpu, &mut bus, hints);
    (r, cpu, bus)
}

fn access(gpa: u64, write: bool) -> Option<AccessHint> {
    Some(AccessHint {
        gpa,
        write,
        linear: None,
    })
}

/// Without hints, with bytes, with an address, with both: the same
/// outcome, with one walk and one fetch fewer each.
#[test]
fn hints_replace_the_walk_and_the_fetch() {
    let code = asm(|a| a.mov(dword_ptr(rbx), eax));
    let addr = LA_MMIO + 0x10;
    let bytes = Some(InstructionBytes::new(&code));
    let (plain, cpu, bus) = emulate(&code, addr, &Hints::default());
    assert_eq!(plain, Ok(Completion::Retired));
    assert_eq!(
        bus.data(),
        vec![Access::Write(MMIO + 0x10, vec![0x88, 0x77, 0x66, 0x55])]
    );
    assert_eq!(
        (bus.walks(), bus.fetches()),
        (8, 1),
        "code and operand walked, code fetched"
    );
    for (hints, walks, fetches) in [
        (
            Hints {
                access: None,
                bytes,
            },
            4,
            0,
        ),
        (
            Hints {
                access: access(MMIO + 0x10, true),
                bytes: None,
            },
            4,
            1,
        ),
        (
            Hints {
                access: access(MMIO + 0x10, true),
                bytes,
            },
            0,
            0,
        ),
    ] {
        let (r, c, b) = emulate(&code, addr, &hints);
        assert_eq!((r, &c), (plain, &cpu), "{hints:?}");
        assert_eq!(b.data(), bus.data(), "{hints:?}");
        assert_eq!((b.walks(), b.fetches()), (walks, fetches), "{hints:?}");
    }
}

/// A read hint serves the read of a read-modify-write; the write is
/// walked, and on a read-only page it faults as without the hint.
#[test]
fn a_read_hint_serves_reads_only() {
    let code = asm(|a| a.add(dword_ptr(rbx), eax));
    let (r, _, bus) = emulate(
        &code,
        LA_MMIO,
        &Hints {
            access: access(MMIO, false),
            bytes: None,
        },
    );
    assert_eq!(r, Ok(Completion::Retired));
    assert_eq!(bus.walks(), 8, "code and the write walked, the read not");
    let (plain, _, plain_bus) = emulate(&code, LA_MMIO_RO, &Hints::default());
    let (hinted, _, hinted_bus) = emulate(
        &code,
        LA_MMIO_RO,
        &Hints {
            access: access(MMIO, false),
            bytes: None,
        },
    );
    assert!(matches!(
        plain,
        Err(EmulateError::Exception(Exception::PageFault(_)))
    ));
    assert_eq!(hinted, plain);
    assert_eq!(
        hinted_bus.data(),
        Vec::new(),
        "nothing written past a read-only entry"
    );
    assert_eq!(plain_bus.data(), Vec::new());
}

/// The second page of a split access can be the one that exited.
#[test]
fn the_second_page_of_a_split_access() {
    let code = asm(|a| a.mov(qword_ptr(rbx), rax));
    let addr = LA_MMIO + 0xffc;
    let (plain, _, plain_bus) = emulate(&code, addr, &Hints::default());
    let (r, _, bus) = emulate(
        &code,
        addr,
        &Hints {
            access: access(MMIO + 0x1000, true),
            bytes: None,
        },
    );
    assert_eq!(
        (r, plain),
        (Ok(Completion::Retired), Ok(Completion::Retired))
    );
    assert_eq!(bus.data(), plain_bus.data());
    assert_eq!(
        (plain_bus.walks(), bus.walks()),
        (12, 8),
        "one page of two walked"
    );
    // VMX also gives the linear address: it must lie inside the operand.
    let vmx = AccessHint {
        gpa: MMIO + 0xffe,
        write: true,
        linear: Some(addr + 2),
    };
    let (_, _, bus) = emulate(
        &code,
        addr,
        &Hints {
            access: Some(vmx),
            bytes: None,
        },
    );
    assert_eq!((bus.data(), bus.walks()), (plain_bus.data(), 8));
}

/// Hints that do not fit the instruction are ignored: every access, walk
/// and fetch happens as without them.
#[test]
fn hints_that_do_not_fit_change_nothing() {
    let mov = asm(|a| a.mov(dword_ptr(rbx), eax));
    let movs = asm(|a| a.movsd());
    let push = asm(|a| a.push(qword_ptr(rbx)));
    let bt = asm(|a| a.bts(dword_ptr(rbx), eax));
    let no_memory = asm(|a| a.mov(eax, ebx));
    let addr = LA_MMIO + 0x10;
    let w = |gpa| access(gpa, true);
    let outside = AccessHint {
        gpa: MMIO + 0x20,
        write: true,
        linear: Some(LA_MMIO + 0x20),
    };
    let cases: Vec<(&str, &[u8], Hints)> = vec![
        (
            "another page offset",
            &mov,
            Hints {
                access: w(MMIO + 0x18),
                bytes: None,
            },
        ),
        (
            "linear outside the operand",
            &mov,
            Hints {
                access: Some(outside),
                bytes: None,
            },
        ),
        (
            "past MAXPHYADDR",
            &mov,
            Hints {
                access: w(1 << 52 | 0x10),
                bytes: None,
            },
        ),
        (
            "a string instruction",
            &movs,
            Hints {
                access: w(MMIO),
                bytes: None,
            },
        ),
        (
            "a stack access besides the operand",
            &push,
            Hints {
                access: w(MMIO + 0x10),
                bytes: None,
            },
        ),
        (
            "a bit offset may leave the operand",
            &bt,
            Hints {
                access: w(MMIO + 0x10),
                bytes: None,
            },
        ),
        (
            "no memory operand",
            &no_memory,
            Hints {
                access: w(MMIO + 0x10),
                bytes: None,
            },
        ),
        (
            "bytes cut short",
            &mov,
            Hints {
                access: None,
                bytes: Some(InstructionBytes::new(&mov[..1])),
            },
        ),
        (
            "bytes that are no instruction",
            &mov,
            Hints {
                access: None,
                bytes: Some(InstructionBytes::new(&[0x0f, 0x04])),
            },
        ),
        (
            "no bytes",
            &mov,
            Hints {
                access: None,
                bytes: Some(InstructionBytes::new(&[])),
            },
        ),
    ];
    for (what, code, hints) in cases {
        let (plain, plain_cpu, plain_bus) = emulate(code, addr, &Hints::default());
        let (r, cpu, bus) = emulate(code, addr, &hints);
        assert_eq!((r, cpu), (plain, plain_cpu), "{what}");
        assert_eq!(bus.log, plain_bus.log, "{what}");
    }
}

/// With paging off there is no walk to save: an address hint cannot move
/// the access.
#[test]
fn paging_off_ignores_the_address() {
    let code = asm(|a| a.mov(dword_ptr(rbx), eax));
    let run = |hints: &Hints| {
        let (mut cpu, mut bus) = machine(&code, MMIO + 0x10);
        cpu = RegisterFile {
            gprs: cpu.gprs,
            rip: CODE,
            ..RegisterFile::protected_flat32()
        };
        let r = Emulator::default().emulate_hinted(&mut cpu, &mut bus, hints);
        (r, bus.log)
    };
    let hinted = run(&Hints {
        access: access(MMIO + 0x1010, true),
        bytes: None,
    });
    assert_eq!(hinted, run(&Hints::default()));
    assert_eq!(
        hinted.1.last(),
        Some(&Access::Write(MMIO + 0x10, vec![0x88, 0x77, 0x66, 0x55]))
    );
}

/// Decode-assist bytes beyond the instruction are not part of it, and
/// more than 15 are cut to 15.
#[test]
fn extra_bytes_are_not_the_instruction() {
    let mut code = asm(|a| a.mov(dword_ptr(rbx), eax));
    let len = code.len();
    code.resize(20, 0xcc);
    assert_eq!(InstructionBytes::new(&code).as_slice().len(), 15);
    let (r, cpu, bus) = emulate(
        &code[..len],
        LA_MMIO,
        &Hints {
            access: None,
            bytes: Some(InstructionBytes::new(&code)),
        },
    );
    assert_eq!(r, Ok(Completion::Retired));
    assert_eq!(cpu.rip, CODE + len as u64);
    assert_eq!(bus.fetches(), 0);
}

/// Arbitrary hints never panic, and every access they lead to is one the
/// emulation without them makes, a page-table access, or on the page the
/// address hint names: a hint that lies about the translation can only
/// redirect the operand to the page it names, never wider.
#[test]
fn arbitrary_hints_stay_bounded() {
    let codes = [
        asm(|a| a.mov(dword_ptr(rbx), eax)),
        asm(|a| a.mov(rax, qword_ptr(rbx + 0xff8))),
        asm(|a| a.xchg(word_ptr(rbx + 1), ax)),
        asm(|a| a.lock().cmpxchg(dword_ptr(rbx), ecx)),
        asm(|a| a.rep().stosb()),
        asm(|a| a.movdqu(xmmword_ptr(rbx + 0xffa), xmm1)),
        asm(|a| a.pop(qword_ptr(rbx))),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..4000 {
        let code = &codes[(next() % codes.len() as u64) as usize];
        let addr = [LA_MMIO, LA_MMIO2, LA_MMIO_RO, 0x8000, 0xfff8][(next() % 5) as usize]
            + (next() % 0x20);
        let r = next();
        let gpa = match r % 4 {
            0 => next(),
            1 => MMIO + (next() & 0x1fff),
            2 => (next() & 0xffff) | (addr & 0xfff),
            _ => next() & 0xfff,
        };
        let linear = (r & 16 != 0).then(|| addr.wrapping_add(next() % 20));
        let mut bytes = code.clone();
        bytes.truncate((next() % 17) as usize);
        if r & 32 != 0 && !bytes.is_empty() {
            let at = (next() as usize) % bytes.len();
            bytes[at] ^= next() as u8;
        }
        let hints = Hints {
            access: (r & 8 != 0).then_some(AccessHint {
                gpa,
                write: r & 64 != 0,
                linear,
            }),
            bytes: (r & 128 != 0).then(|| InstructionBytes::new(&bytes)),
        };
        let (mut cpu, mut bus) = machine(code, addr);
        if let Some(b) = hints.bytes {
            // The CPU executed the bytes it reports: put them in memory too.
            let b = b.as_slice();
            bus.ram[CODE as usize..CODE as usize + b.len()].copy_from_slice(b);
        }
        let _ = Emulator::default().emulate_hinted(&mut cpu, &mut bus, &hints);
        let replay = {
            let (mut c, mut b) = machine(code, addr);
            if let Some(h) = hints.bytes {
                let h = h.as_slice();
                b.ram[CODE as usize..CODE as usize + h.len()].copy_from_slice(h);
            }
            let _ = Emulator::default().emulate(&mut c, &mut b);
            b
        };
        for a in bus.data() {
            let (Access::Read(at, _) | Access::Write(at, _)) = &a;
            let on_hinted_page = hints.access.is_some_and(|h| h.gpa >> 12 == at >> 12);
            assert!(
                replay.data().contains(&a) || on_hinted_page,
                "{a:x?} with {hints:x?} for {code:x?} at {addr:#x}"
            );
        }
    }
}
