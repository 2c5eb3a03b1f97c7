//! Bad PRD tables: the checking function refuses them before any byte
//! moves. The command fails as after a PCI master abort (bus-master Error and
//! Interrupt set, Active clear; the drive reports an aborted command), the
//! engine's state machine stays where it was, and no byte of RAM or ROM
//! changes.

mod ide_support;
use ide_support::*;
use vmm_devices::ide::{DmaState, IdeChannel, IdeSlot, PrdFault};

fn cd_rig() -> Rig {
    let mut iso = vec![0u8; 64 * 2048];
    for (i, s) in iso.chunks_mut(2048).enumerate() {
        s.fill(i as u8 | 0x80);
    }
    rig(vec![
        (IdeSlot::SecondaryMaster, cdrom(iso)),
        (IdeSlot::PrimaryMaster, disk(256)),
    ])
}

/// Issue READ(10) of `sectors` by DMA with the table already in memory and
/// check that it failed without touching memory or moving the engine.
fn expect_refused(r: &mut Rig, sectors: u16, fault: impl Fn(PrdFault) -> bool) {
    let before = r.snapshot();
    let denials = r.ide().controller().dma_denials(IdeChannel::Secondary);
    r.bm_setup(SECONDARY, true);
    r.select(SECONDARY, 0);
    r.outb(SECONDARY + 1, 1);
    r.outb(SECONDARY + 7, 0xa0);
    r.write_data(SECONDARY, &read10(0, sectors));
    let edges = r.irq15.rising_edges();
    let bms = r.bm_start(SECONDARY, true);
    assert_eq!(
        r.dma_state(SECONDARY),
        DmaState::PrdProgrammed,
        "state unchanged"
    );
    assert_eq!(
        bms & 0x07,
        0x06,
        "bus master: Error and Interrupt, not Active"
    );
    assert_eq!(r.irq15.rising_edges(), edges + 1, "the drive interrupts");
    let st = r.status(SECONDARY);
    assert_eq!(st & 0x89, 0x01, "drive status ERR, not BSY/DRQ: {st:#x}");
    assert_eq!(
        r.error(SECONDARY),
        0xb4,
        "error: ABORTED COMMAND sense key, ABRT"
    );
    assert_eq!(
        r.inb(SECONDARY + 2) & 3,
        3,
        "interrupt reason: command complete"
    );
    assert_eq!(
        r.ide().controller().dma_denials(IdeChannel::Secondary),
        denials + 1,
        "one denied transition"
    );
    let f = r
        .ide()
        .controller()
        .last_prd_fault(IdeChannel::Secondary)
        .unwrap();
    assert!(fault(f), "unexpected fault {f:?}");
    assert!(before == r.snapshot(), "no byte of RAM or ROM changed");
    // REQUEST SENSE agrees.
    let (sense, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x03, 0, 0, 0, 18]), 0xfffe);
    assert_eq!(sense[2] & 0x0f, 0x0b);
    r.bm_stop(SECONDARY);
    assert_eq!(r.dma_state(SECONDARY), DmaState::Idle);
}

#[test]
fn prd_pointing_at_rom_is_refused() {
    let mut r = cd_rig();
    r.write_prd(&[(ROM_BASE as u32, 2048)]);
    expect_refused(&mut r, 1, |f| f == PrdFault::TargetNotRam { index: 0 });
}

#[test]
fn prd_pointing_at_an_mmio_hole_is_refused() {
    let mut r = cd_rig();
    r.write_prd(&[(BUF_AT as u32, 2048), (HOLE as u32, 2048)]);
    expect_refused(&mut r, 2, |f| f == PrdFault::TargetNotRam { index: 1 });
}

#[test]
fn prd_running_past_ram_is_refused() {
    let mut r = cd_rig();
    // The last KiB of RAM, then the first KiB past its end.
    r.write_prd(&[((RAM - 1024) as u32, 1024), (RAM as u32, 1024)]);
    expect_refused(&mut r, 1, |f| f == PrdFault::TargetNotRam { index: 1 });
    r.write_prd(&[(0x4000_0000, 2048)]);
    expect_refused(&mut r, 1, |f| f == PrdFault::TargetNotRam { index: 0 });
}

#[test]
fn unterminated_prd_table_is_refused() {
    let mut r = cd_rig();
    // 8192 valid entries up to the 64 KiB boundary, none with EOT.
    for i in 0..8192u64 {
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&(0x2_0000u32 + 0x800 * (i as u32 % 16)).to_le_bytes());
        e[4..6].copy_from_slice(&0x800u16.to_le_bytes());
        r.vm.memory_mut().write(PRD_AT + 8 * i, &e).unwrap_or(());
    }
    // PRD_AT is 0x1000, so the boundary is at 0x10000: 7680 entries fit.
    expect_refused(&mut r, 1, |f| f == PrdFault::Unterminated);
}

#[test]
fn prd_table_in_rom_or_beyond_ram_is_refused() {
    let mut r = cd_rig();
    r.write_prd(&[(BUF_AT as u32, 2048)]);
    // Point the engine at a table in ROM.
    let bm = Rig::bm(SECONDARY);
    let before = r.snapshot();
    r.outl(bm + 4, ROM_BASE as u32);
    r.outb(bm + 2, 6);
    r.outb(bm, 0x08);
    r.select(SECONDARY, 0);
    r.outb(SECONDARY + 1, 1);
    r.outb(SECONDARY + 7, 0xa0);
    r.write_data(SECONDARY, &read10(0, 1));
    let bms = r.bm_start(SECONDARY, true);
    assert_eq!(bms & 7, 6);
    assert_eq!(r.dma_state(SECONDARY), DmaState::PrdProgrammed);
    assert!(matches!(
        r.ide().controller().last_prd_fault(IdeChannel::Secondary),
        Some(PrdFault::TableNotRam { gpa: 0xffff_0000 })
    ));
    assert_eq!(r.status(SECONDARY) & 1, 1);
    assert!(before == r.snapshot());
}

#[test]
fn misaligned_or_boundary_crossing_entries_are_refused() {
    let mut r = cd_rig();
    r.write_prd(&[(BUF_AT as u32 + 1, 2048)]);
    expect_refused(&mut r, 1, |f| f == PrdFault::OddAddress { index: 0 });
    r.write_prd(&[(BUF_AT as u32, 1025), (BUF_AT as u32 + 0x1000, 1024)]);
    expect_refused(&mut r, 1, |f| f == PrdFault::OddLength { index: 0 });
    r.write_prd(&[(0x1_fc00, 2048)]);
    expect_refused(&mut r, 1, |f| f == PrdFault::CrossesBoundary { index: 0 });
}

#[test]
fn table_shorter_than_the_transfer_or_wrong_direction_is_refused() {
    let mut r = cd_rig();
    r.write_prd(&[(BUF_AT as u32, 2048)]);
    expect_refused(&mut r, 2, |f| {
        f == PrdFault::TooShort {
            table: 2048,
            needed: 4096,
        }
    });
    // Engine set to read memory while the drive sends data.
    let before = r.snapshot();
    r.bm_setup(SECONDARY, false);
    r.select(SECONDARY, 0);
    r.outb(SECONDARY + 1, 1);
    r.outb(SECONDARY + 7, 0xa0);
    r.write_data(SECONDARY, &read10(0, 1));
    assert_eq!(r.bm_start(SECONDARY, false) & 7, 6);
    assert_eq!(
        r.ide().controller().last_prd_fault(IdeChannel::Secondary),
        Some(PrdFault::DirectionMismatch)
    );
    assert!(before == r.snapshot());
}

#[test]
fn a_good_table_after_a_refused_one_works() {
    let mut r = cd_rig();
    r.write_prd(&[(ROM_BASE as u32, 2048)]);
    expect_refused(&mut r, 1, |_| true);
    r.write_prd(&[(BUF_AT as u32, 2048)]);
    let (bms, st, _) = r.packet_dma(SECONDARY, 0, &read10(3, 1));
    assert_eq!(bms & 7, 4);
    assert_eq!(st & 1, 0);
    assert_eq!(r.read_mem(BUF_AT, 2048), vec![0x83; 2048]);
}

#[test]
fn ata_disk_dma_read_with_a_bad_table_fails_with_abrt() {
    let mut r = cd_rig();
    r.write_prd(&[(HOLE as u32, 512)]);
    let before = r.snapshot();
    r.bm_setup(PRIMARY, true);
    r.select(PRIMARY, 0);
    r.outb(PRIMARY + 2, 1);
    r.outb(PRIMARY + 3, 5);
    r.outb(PRIMARY + 4, 0);
    r.outb(PRIMARY + 5, 0);
    r.outb(PRIMARY + 7, 0xc8);
    assert_eq!(r.bm_start(PRIMARY, true) & 7, 6);
    assert_eq!(r.dma_state(PRIMARY), DmaState::PrdProgrammed);
    assert_eq!(r.status(PRIMARY) & 0x89, 0x01);
    assert_eq!(r.error(PRIMARY), 0x04);
    assert!(before == r.snapshot());
}
