//! Fuzz the DMA guard and checked state machines: arbitrary memory maps,
//! transitions and transfers. Invariants: no panic; ROM never changes; a
//! byte of RAM changes only through a write that a grant of this VM covers;
//! a denied transition leaves the state as it was.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm_core::dma::{CheckedStateMachine, DmaDirection, DmaGuard, DmaRange, StateModel};
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::VecMemory;
use vmm_core::vm::VmId;

const RAM: usize = 0x4000;
const ROM_AT: u64 = 0x8000;
const ROM: usize = 0x1000;
const HOLE_AT: u64 = 0xa000;

struct Model {
    /// A device rule, so that the checking function can deny too.
    max_len: u64,
}

impl StateModel for Model {
    type State = u8;
    fn name(&self) -> &str {
        "fuzz"
    }
    fn declared(&self, from: u8, to: u8) -> bool {
        // States 0..4 in a ring, plus reset to 0 from anywhere.
        to == (from + 1) % 4 || to == 0
    }
    fn is_reusable(&self, state: u8) -> bool {
        state == 0
    }
    fn check(
        &mut self,
        _: u8,
        _: u8,
        plan: &[DmaRange],
        _: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        if plan.iter().any(|r| r.len > self.max_len) {
            Err("too long")
        } else {
            Ok(())
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Transition {
        to: u8,
        ranges: Vec<(u64, u16, bool)>,
    },
    Write {
        gpa: u64,
        len: u16,
        byte: u8,
    },
    Read {
        gpa: u64,
        len: u16,
    },
    Inspect {
        gpa: u64,
        len: u16,
    },
    Remap {
        gpa: u64,
        len: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_len: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mut mem = GuestMemory::new();
    mem.add_ram(0, Box::new(VecMemory::new(RAM))).unwrap();
    mem.add_rom(ROM_AT, Box::new(VecMemory::from_bytes(&[0x5a; ROM])))
        .unwrap();
    mem.add_mmio(HOLE_AT, 0x1000).unwrap();
    let mut shadow = vec![0u8; RAM];
    let mut machine = CheckedStateMachine::new(
        Model {
            max_len: input.max_len.into(),
        },
        0u8,
    );
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Transition { to, ranges } => {
                let plan: Vec<DmaRange> = ranges
                    .into_iter()
                    .take(8)
                    .map(|(gpa, len, to_guest)| DmaRange {
                        gpa,
                        len: len.into(),
                        dir: if to_guest {
                            DmaDirection::ToGuest
                        } else {
                            DmaDirection::FromGuest
                        },
                    })
                    .collect();
                let before = machine.state();
                let guard = DmaGuard::new(VmId(1), &mut mem);
                match machine.request(to % 5, &plan, &guard) {
                    Ok(()) => {
                        assert_eq!(machine.state(), to % 5);
                        for r in &plan {
                            // Every approved range is inside RAM.
                            assert!(r.len > 0 && r.gpa + r.len <= RAM as u64, "{r:?}");
                        }
                    }
                    Err(_) => assert_eq!(machine.state(), before),
                }
            }
            Op::Write { gpa, len, byte } => {
                let data = vec![byte; usize::from(len)];
                let grant = machine.grant().cloned();
                let mut guard = DmaGuard::new(VmId(1), &mut mem);
                if let Some(grant) = grant {
                    if guard.write(&grant, gpa, &data).is_ok() && len > 0 {
                        let covered = grant.ranges().iter().any(|r| {
                            r.dir == DmaDirection::ToGuest
                                && gpa >= r.gpa
                                && gpa + u64::from(len) <= r.gpa + r.len
                        });
                        assert!(covered, "write outside its grant");
                        shadow[gpa as usize..gpa as usize + usize::from(len)].fill(byte);
                    }
                }
            }
            Op::Read { gpa, len } => {
                let mut buf = vec![0u8; usize::from(len)];
                let guard = DmaGuard::new(VmId(1), &mut mem);
                if let Some(grant) = machine.grant() {
                    let _ = guard.read(grant, gpa, &mut buf);
                }
            }
            Op::Inspect { gpa, len } => {
                let mut buf = vec![0u8; usize::from(len)];
                let guard = DmaGuard::new(VmId(1), &mut mem);
                if guard.inspect(gpa, &mut buf).is_ok() && len > 0 {
                    assert_eq!(
                        &buf[..],
                        &shadow[gpa as usize..gpa as usize + usize::from(len)]
                    );
                }
            }
            Op::Remap { gpa, len } => {
                // Punch holes in RAM at run time: grants must be re-checked.
                let start = gpa % (RAM as u64);
                let len = u64::from(len).min(RAM as u64 - start);
                let _ = mem.unmap(start, len);
            }
        }
    }
    // ROM never changes.
    let mut rom = vec![0u8; ROM];
    mem.read(ROM_AT, &mut rom).unwrap();
    assert!(rom.iter().all(|b| *b == 0x5a));
    // RAM holds exactly what the granted writes put there (where still mapped).
    let ram: Vec<_> = mem.regions().filter(|r| r.start < RAM as u64).collect();
    for r in ram {
        let mut buf = vec![0u8; r.len as usize];
        mem.read(r.start, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &shadow[r.start as usize..r.end() as usize],
            "RAM region {r:?}"
        );
    }
});
