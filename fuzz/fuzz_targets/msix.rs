//! Fuzz the MSI-X table, PBA and capability: arbitrary table and PBA
//! accesses of any size and offset, control register values and vector
//! notifications.
//!
//! Invariants: no panic; a message goes out only while MSI-X is enabled,
//! and only for a vector that is unmasked (itself and the function) at
//! that moment, carrying that entry's address and data; a masked vector's
//! notification shows as its PBA bit; a vector is sent at most once per
//! notification.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vmm_devices::pci::msix::{MsiMessage, MsiTarget, Msix};
use vmm_devices::pci::{ConfigSpace, PciIds};

#[derive(Default)]
struct Recorder(Mutex<Vec<MsiMessage>>);

impl MsiTarget for Recorder {
    fn send(&self, msg: MsiMessage) {
        self.0.lock().unwrap().push(msg);
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    TableWrite { offset: u16, size: u8, value: u64 },
    TableRead { offset: u16, size: u8 },
    PbaRead { offset: u16, size: u8 },
    Control { value: u16 },
    Notify { vector: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    vectors: u8,
    ops: Vec<Op>,
}

fn entry(m: &Msix, v: u16) -> [u32; 4] {
    let mut e = [0u32; 4];
    for (i, w) in e.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        m.table_read(u64::from(v) * 16 + 4 * i as u64, &mut b);
        *w = u32::from_le_bytes(b);
    }
    e
}

fuzz_target!(|input: Input| {
    let target = Arc::new(Recorder::default());
    let mut m = Msix::new(u16::from(input.vectors), target.clone());
    let n = m.vectors();
    let ids = PciIds {
        vendor: 0x1af4,
        device: 0x1042,
        revision: 1,
        class: (1, 0, 0),
        subsystem: (0, 0),
    };
    let mut config = ConfigSpace::new(ids);
    m.install(&mut config, 0x40, 0, 1, 0, 0x800);
    let sizes = [1usize, 2, 4, 8];
    for op in input.ops.into_iter().take(500) {
        let sent_before = target.0.lock().unwrap().len();
        let mut expect_send: Option<MsiMessage> = None;
        match op {
            Op::TableWrite {
                offset,
                size,
                value,
            } => {
                let len = sizes[usize::from(size % 4)];
                m.table_write(u64::from(offset), &value.to_le_bytes()[..len]);
            }
            Op::TableRead { offset, size } => {
                let mut b = [0u8; 8];
                m.table_read(u64::from(offset), &mut b[..sizes[usize::from(size % 4)]]);
            }
            Op::PbaRead { offset, size } => {
                let mut b = [0u8; 8];
                m.pba_read(u64::from(offset), &mut b[..sizes[usize::from(size % 4)]]);
            }
            Op::Control { value } => {
                config.write(0x42, &value.to_le_bytes());
                m.config_written(&config);
            }
            Op::Notify { vector } => {
                let v = vector % (n + 1);
                let control = config.read_u16(0x42);
                let enabled = control & 0x8000 != 0;
                let fmask = control & 0x4000 != 0;
                let took = m.notify(v);
                assert_eq!(took, enabled && v < n);
                if took {
                    let e = entry(&m, v);
                    if fmask || e[3] & 1 != 0 {
                        assert!(m.is_pending(v), "masked vector not pending");
                    } else {
                        expect_send = Some(MsiMessage {
                            address: u64::from(e[1]) << 32 | u64::from(e[0]),
                            data: e[2],
                        });
                    }
                }
            }
        }
        let sent = target.0.lock().unwrap();
        if let Some(msg) = expect_send {
            assert_eq!(sent.len(), sent_before + 1);
            assert_eq!(sent.last(), Some(&msg));
        }
        if !m.enabled() {
            assert_eq!(sent.len(), sent_before, "sent while disabled");
        }
    }
});
