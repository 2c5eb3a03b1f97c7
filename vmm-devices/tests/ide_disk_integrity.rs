//! What a guest is told about its writes is true: with the write cache off
//! every write is durable before it completes; a failed flush fails the
//! disk for good (a retried FLUSH never reports success); failed writes
//! are reported; a read-only disk answers writes as a write-protected
//! medium does. Driven through the registers against a fault-injection
//! backend that keeps what was written apart from what a flush made
//! durable.

mod ide_support;
use ide_support::*;
use std::sync::{Arc, Mutex};
use vmm_devices::ide::IdeSlot;

const SECTORS: usize = 256;
/// Status bits the tests look at: BSY, DRDY, DF, DRQ, ERR.
const MASK: u8 = 0xe9;
const OK: u8 = 0x40;
const FAULT: u8 = 0x61;

fn faulty_rig(read_only: bool) -> (Rig, Arc<Mutex<FaultState>>) {
    let (disk, state) = FaultyDisk::new(SECTORS, read_only);
    let r = rig(vec![(IdeSlot::PrimaryMaster, disk_on(Box::new(disk)))]);
    (r, state)
}

fn lba28(r: &mut Rig, lba: u32, count: u8) {
    r.outb(PRIMARY + 2, count);
    r.outb(PRIMARY + 3, lba as u8);
    r.outb(PRIMARY + 4, (lba >> 8) as u8);
    r.outb(PRIMARY + 5, (lba >> 16) as u8);
    r.outb(PRIMARY + 6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
}

/// WRITE SECTORS of `data` at `lba` by PIO; the final status and error.
fn pio_write(r: &mut Rig, lba: u32, data: &[u8]) -> (u8, u8) {
    lba28(r, lba, (data.len() / 512) as u8);
    r.outb(PRIMARY + 7, 0x30);
    for block in data.chunks(512) {
        let st = r.inb(PRIMARY_CTL);
        if st & 0x08 == 0 {
            break;
        }
        r.write_data(PRIMARY, block);
    }
    (r.status(PRIMARY) & MASK, r.error(PRIMARY))
}

/// WRITE DMA of `data` at `lba`; (bus-master status, drive status, error).
fn dma_write(r: &mut Rig, lba: u32, data: &[u8]) -> (u8, u8, u8) {
    r.vm.memory_mut().write(BUF_AT, data).unwrap();
    r.write_prd(&[(BUF_AT as u32, data.len() as u32)]);
    r.bm_setup(PRIMARY, false);
    lba28(r, lba, (data.len() / 512) as u8);
    r.outb(PRIMARY + 7, 0xca);
    let bms = r.bm_start(PRIMARY, false) & 7;
    let st = r.status(PRIMARY) & MASK;
    let err = r.error(PRIMARY);
    r.bm_stop(PRIMARY);
    (bms, st, err)
}

fn pio_read(r: &mut Rig, lba: u32, count: u8) -> Vec<u8> {
    lba28(r, lba, count);
    r.outb(PRIMARY + 7, 0x20);
    let mut v = Vec::new();
    for _ in 0..count {
        assert_eq!(r.status(PRIMARY) & 0x89, 0x08, "DRQ");
        v.extend(r.read_data(PRIMARY, 512));
    }
    v
}

fn command(r: &mut Rig, op: u8) -> (u8, u8) {
    r.select(PRIMARY, 0);
    r.outb(PRIMARY + 7, op);
    assert!(r.irq14.level(), "command {op:#x} interrupts");
    (r.status(PRIMARY) & MASK, r.error(PRIMARY))
}

fn set_features(r: &mut Rig, sub: u8) -> (u8, u8) {
    r.outb(PRIMARY + 1, sub);
    command(r, 0xef)
}

/// IDENTIFY words 82 and 85.
fn cache_words(r: &mut Rig) -> (u16, u16) {
    r.select(PRIMARY, 0);
    r.outb(PRIMARY + 7, 0xec);
    assert_eq!(r.status(PRIMARY) & 0x89, 0x08);
    let id = r.read_data(PRIMARY, 512);
    let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    (w(82), w(85))
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn durable(state: &Arc<Mutex<FaultState>>, lba: usize, n: usize) -> Vec<u8> {
    state.lock().unwrap().durable[lba * 512..(lba + n) * 512].to_vec()
}

#[test]
fn identify_reports_the_write_cache_state() {
    let (mut r, _) = faulty_rig(false);
    let (w82, w85) = cache_words(&mut r);
    assert_ne!(w82 & 0x20, 0, "word 82: write cache supported");
    assert_ne!(w85 & 0x20, 0, "word 85: write cache on at power-on");
    assert_eq!(set_features(&mut r, 0x82), (OK, 0));
    let (w82, w85) = cache_words(&mut r);
    assert_ne!(w82 & 0x20, 0, "still supported");
    assert_eq!(w85 & 0x20, 0, "word 85: write cache off");
    assert_eq!(set_features(&mut r, 0x02), (OK, 0));
    assert_ne!(cache_words(&mut r).1 & 0x20, 0, "on again");
}

#[test]
fn with_the_write_cache_on_writes_are_durable_after_flush_cache() {
    let (mut r, state) = faulty_rig(false);
    let data = pattern(1, 2 * 512);
    assert_eq!(pio_write(&mut r, 10, &data), (OK, 0));
    assert_eq!(pio_read(&mut r, 10, 2), data, "the guest reads it back");
    assert_ne!(durable(&state, 10, 2), data, "not yet durable");
    assert_eq!(command(&mut r, 0xe7), (OK, 0), "FLUSH CACHE");
    assert_eq!(durable(&state, 10, 2), data);
}

#[test]
fn with_the_write_cache_off_each_write_is_durable_when_it_completes() {
    let (mut r, state) = faulty_rig(false);
    let cached = pattern(2, 512);
    assert_eq!(pio_write(&mut r, 1, &cached), (OK, 0));
    // Turning the cache off makes what it held durable.
    assert_eq!(set_features(&mut r, 0x82), (OK, 0));
    assert_eq!(durable(&state, 1, 1), cached);

    let pio = pattern(3, 3 * 512);
    assert_eq!(pio_write(&mut r, 20, &pio), (OK, 0));
    assert_eq!(
        durable(&state, 20, 3),
        pio,
        "PIO write durable at completion"
    );

    let dma = pattern(4, 4 * 512);
    assert_eq!(dma_write(&mut r, 40, &dma), (4, OK, 0));
    assert_eq!(
        durable(&state, 40, 4),
        dma,
        "DMA write durable at completion"
    );

    // Back on: writes complete before they are durable again.
    assert_eq!(set_features(&mut r, 0x02), (OK, 0));
    let later = pattern(5, 512);
    assert_eq!(pio_write(&mut r, 60, &later), (OK, 0));
    assert_ne!(durable(&state, 60, 1), later);
}

#[test]
fn a_failed_sync_of_a_write_with_the_cache_off_is_a_device_fault() {
    let (mut r, state) = faulty_rig(false);
    assert_eq!(set_features(&mut r, 0x82), (OK, 0));
    state.lock().unwrap().fail_flushes = true;
    assert_eq!(pio_write(&mut r, 5, &pattern(6, 512)), (FAULT, 0x04));
    let (_, st, err) = dma_write(&mut r, 6, &pattern(7, 512));
    assert_eq!((st, err), (FAULT, 0x04), "DMA write after the failure");
    let ide = r.ide();
    assert!(ide
        .controller()
        .drive(IdeSlot::PrimaryMaster)
        .unwrap()
        .failed());
}

#[test]
fn after_a_failed_flush_no_flush_or_write_succeeds_again() {
    let (mut r, state) = faulty_rig(false);
    let data = pattern(8, 512);
    assert_eq!(pio_write(&mut r, 3, &data), (OK, 0));
    state.lock().unwrap().fail_flushes = true;
    assert_eq!(command(&mut r, 0xe7), (FAULT, 0x04), "FLUSH CACHE fails");
    // The host's storage recovers (as a Linux fsync may succeed after an
    // earlier one lost the data): the disk must still not say "durable".
    state.lock().unwrap().fail_flushes = false;
    let flushes = state.lock().unwrap().flushes;
    assert_eq!(command(&mut r, 0xe7), (FAULT, 0x04), "retried FLUSH CACHE");
    assert_eq!(command(&mut r, 0xea), (FAULT, 0x04), "FLUSH CACHE EXT");
    let writes = state.lock().unwrap().writes;
    assert_eq!(pio_write(&mut r, 4, &pattern(9, 512)), (FAULT, 0x04));
    let (_, st, err) = dma_write(&mut r, 4, &pattern(9, 512));
    assert_eq!((st, err), (FAULT, 0x04));
    assert_eq!(set_features(&mut r, 0x82), (FAULT, 0x04), "cache off");
    let s = state.lock().unwrap();
    assert_eq!(s.flushes, flushes, "no flush reached the image again");
    assert_eq!(s.writes, writes, "no write reached the image again");
    assert_ne!(s.durable[3 * 512..4 * 512], data[..]);
    drop(s);
    // Reads still work, and so does the rest of the command set.
    assert_eq!(pio_read(&mut r, 3, 1), data);
    assert_eq!(command(&mut r, 0xe5).0, OK, "CHECK POWER MODE");
    // A VM reset does not bring lost data back either.
    r.vm.devices_mut().reset_all();
    assert_eq!(command(&mut r, 0xe7), (FAULT, 0x04), "after VM reset");
}

#[test]
fn failed_writes_are_reported_and_the_disk_goes_on() {
    let (mut r, state) = faulty_rig(false);
    state.lock().unwrap().fail_writes = true;
    assert_eq!(pio_write(&mut r, 7, &pattern(10, 2 * 512)), (OK | 1, 0x04));
    let (bms, st, err) = dma_write(&mut r, 7, &pattern(10, 512));
    assert_eq!((st, err), (OK | 1, 0x04), "bus-master status {bms:#x}");
    state.lock().unwrap().fail_writes = false;
    let data = pattern(11, 512);
    assert_eq!(pio_write(&mut r, 7, &data), (OK, 0));
    assert_eq!(command(&mut r, 0xe7), (OK, 0));
    assert_eq!(durable(&state, 7, 1), data);
}

#[test]
fn a_read_only_disk_answers_writes_as_write_protected() {
    let (mut r, state) = faulty_rig(true);
    // WP (bit 6 of a write's error register) and ABRT, with ERR.
    assert_eq!(pio_write(&mut r, 0, &pattern(12, 512)), (OK | 1, 0x44));
    for op in [0x34u8, 0x31, 0x35] {
        r.outb(PRIMARY + 7, op);
        assert_eq!(r.status(PRIMARY) & MASK, OK | 1, "op {op:#x}");
        assert_eq!(r.error(PRIMARY), 0x44, "op {op:#x}");
    }
    let (_, st, err) = dma_write(&mut r, 0, &pattern(12, 512));
    assert_eq!((st, err), (OK | 1, 0x44));
    assert!(state.lock().unwrap().volatile.iter().all(|b| *b == 0));
    // Reads and flushes are fine.
    assert_eq!(pio_read(&mut r, 0, 1), vec![0; 512]);
    assert_eq!(command(&mut r, 0xe7), (OK, 0));
}
