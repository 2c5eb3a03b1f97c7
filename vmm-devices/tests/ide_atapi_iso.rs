//! Reading an ISO 9660 image (made by xorriso) from the ATAPI CD-ROM on the
//! secondary master, by PIO and by bus-master DMA, as a driver does:
//! primary volume descriptor at sector 16, El Torito boot record at 17, the
//! boot catalog it points to, and the boot image the catalog names.

mod ide_support;
use ide_support::*;
use vmm_devices::ide::{DmaState, IdeSlot};

struct Iso {
    bytes: Vec<u8>,
}

fn iso(name: &str) -> Iso {
    let dir = temp_dir(name);
    let bytes = make_iso(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Iso { bytes }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Check what a boot loader checks, reading sectors with `read`.
fn walk_iso(iso: &Iso, mut read: impl FnMut(u32, u16) -> Vec<u8>) {
    let pvd = read(16, 1);
    assert_eq!(pvd.len(), 2048);
    assert_eq!(pvd[0], 1, "primary volume descriptor type");
    assert_eq!(&pvd[1..6], b"CD001");
    assert_eq!(&pvd[40..47], b"VMMTEST", "volume identifier");
    assert_eq!(
        pvd,
        iso.bytes[16 * 2048..17 * 2048],
        "sector 16 as in the image"
    );
    // Volume space size (both-endian, LE half) matches the image.
    assert_eq!(le32(&pvd, 80) as usize * 2048, iso.bytes.len());

    let brvd = read(17, 1);
    assert_eq!(brvd[0], 0, "boot record volume descriptor type");
    assert_eq!(&brvd[1..6], b"CD001");
    assert_eq!(&brvd[7..30], b"EL TORITO SPECIFICATION");
    let catalog_lba = le32(&brvd, 0x47);
    let catalog = read(catalog_lba, 1);
    assert_eq!(catalog[0], 1, "validation entry header");
    assert_eq!(
        &catalog[30..32],
        &[0x55, 0xaa],
        "validation entry key bytes"
    );
    let sum = catalog[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    assert_eq!(sum, 0, "validation entry checksum");
    assert_eq!(catalog[32], 0x88, "initial entry is bootable");
    assert_eq!(catalog[33], 0, "no emulation");
    let boot_lba = le32(&catalog, 32 + 8);
    // Read two sectors at once to cross a sector boundary in one command.
    let boot = read(boot_lba, 2);
    assert_eq!(boot.len(), 4096);
    assert_eq!(&boot[..BOOT_MARKER.len()], BOOT_MARKER);
    assert_eq!(
        boot[..],
        iso.bytes[boot_lba as usize * 2048..boot_lba as usize * 2048 + 4096]
    );
}

#[test]
fn iso_descriptors_and_boot_image_by_pio() {
    let iso = iso("pio");
    let mut r = rig(vec![(IdeSlot::SecondaryMaster, cdrom(iso.bytes.clone()))]);
    walk_iso(&iso, |lba, n| {
        let (data, st, _) = r.packet_pio(SECONDARY, 0, &read10(lba, n), 0xfffe);
        assert_eq!(st & 0x01, 0, "no error");
        data
    });
    assert!(r.irq15.rising_edges() > 0);
    assert_eq!(r.irq14.rising_edges(), 0);
}

#[test]
fn pio_honours_a_small_byte_count_limit() {
    let iso = iso("limit");
    let mut r = rig(vec![(IdeSlot::SecondaryMaster, cdrom(iso.bytes.clone()))]);
    // 1000 bytes per DRQ block: blocks end in the middle of sectors.
    let (data, st, _) = r.packet_pio(SECONDARY, 0, &read10(16, 2), 1000);
    assert_eq!(st & 1, 0);
    assert_eq!(data, iso.bytes[16 * 2048..18 * 2048]);
}

#[test]
fn iso_descriptors_and_boot_image_by_dma() {
    let iso = iso("dma");
    let mut r = rig(vec![(IdeSlot::SecondaryMaster, cdrom(iso.bytes.clone()))]);
    walk_iso(&iso, |lba, n| {
        let len = n as u32 * 2048;
        // Two PRD entries, so the transfer is split across them.
        r.write_prd(&[(BUF_AT as u32, 1024), (BUF_AT as u32 + 0x2000, len - 1024)]);
        let (bms, st, err) = r.packet_dma(SECONDARY, 0, &read10(lba, n));
        assert_eq!(
            st & 0x89,
            0,
            "drive done without error (status {st:#x}, error {err:#x})"
        );
        assert_eq!(
            bms & 0x07,
            0x04,
            "bus master: interrupt, not active, no error"
        );
        let mut data = r.read_mem(BUF_AT, 1024);
        data.extend(r.read_mem(BUF_AT + 0x2000, len as usize - 1024));
        data
    });
    assert_eq!(r.dma_state(SECONDARY), DmaState::Idle);
}

#[test]
fn dma_with_a_longer_table_leaves_the_engine_active() {
    let iso = iso("longer");
    let mut r = rig(vec![(IdeSlot::SecondaryMaster, cdrom(iso.bytes.clone()))]);
    r.write_prd(&[(BUF_AT as u32, 0x8000)]);
    r.bm_setup(SECONDARY, true);
    r.select(SECONDARY, 0);
    r.outb(SECONDARY + 1, 1);
    r.outb(SECONDARY + 7, 0xa0);
    r.write_data(SECONDARY, &read10(16, 1));
    // The drive waits for the engine: DRQ set, nothing moved yet.
    assert_ne!(r.inb(SECONDARY_CTL) & 0x08, 0);
    assert_eq!(r.read_mem(BUF_AT, 6), [0; 6]);
    let bms = r.bm_start(SECONDARY, true);
    // SFF-8038i: interrupt with Active still set when the table was larger.
    assert_eq!(bms & 0x07, 0x05);
    assert_eq!(r.dma_state(SECONDARY), DmaState::Done);
    assert_eq!(&r.read_mem(BUF_AT + 1, 5), b"CD001");
    r.bm_stop(SECONDARY);
    assert_eq!(r.dma_state(SECONDARY), DmaState::Idle);
}

#[test]
fn dma_started_before_the_command_runs_when_the_packet_arrives() {
    let iso = iso("early");
    let mut r = rig(vec![(IdeSlot::SecondaryMaster, cdrom(iso.bytes.clone()))]);
    r.write_prd(&[(BUF_AT as u32, 2048)]);
    r.bm_setup(SECONDARY, true);
    r.bm_start(SECONDARY, true);
    assert_eq!(r.dma_state(SECONDARY), DmaState::PrdProgrammed);
    r.select(SECONDARY, 0);
    r.outb(SECONDARY + 1, 1);
    r.outb(SECONDARY + 7, 0xa0);
    r.write_data(SECONDARY, &read10(16, 1));
    assert_eq!(r.inb(Rig::bm(SECONDARY) + 2) & 0x07, 0x04);
    assert_eq!(r.status(SECONDARY) & 0x89, 0);
    assert_eq!(&r.read_mem(BUF_AT + 1, 5), b"CD001");
}
