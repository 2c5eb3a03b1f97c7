//! The ATA disk on the primary master, driven through its registers:
//! IDENTIFY, PIO and DMA reads and writes with LBA28, LBA48 and CHS
//! addresses, READ/WRITE MULTIPLE, errors, FLUSH CACHE, SET FEATURES, soft
//! reset and nIEN.

mod ide_support;
use ide_support::*;
use vmm_devices::ide::IdeSlot;

const SECTORS: usize = 2048;

fn disk_rig() -> Rig {
    rig(vec![(IdeSlot::PrimaryMaster, disk(SECTORS))])
}

/// Sector number stored at the start of each sector of the test disk.
fn tag(sector: &[u8]) -> u64 {
    u64::from_le_bytes(sector[..8].try_into().unwrap())
}

fn lba28(r: &mut Rig, lba: u32, count: u8) {
    r.outb(PRIMARY + 2, count);
    r.outb(PRIMARY + 3, lba as u8);
    r.outb(PRIMARY + 4, (lba >> 8) as u8);
    r.outb(PRIMARY + 5, (lba >> 16) as u8);
    r.outb(PRIMARY + 6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
}

fn lba48(r: &mut Rig, lba: u64, count: u16) {
    r.outb(PRIMARY + 6, 0x40);
    r.outb(PRIMARY + 2, (count >> 8) as u8);
    r.outb(PRIMARY + 3, (lba >> 24) as u8);
    r.outb(PRIMARY + 4, (lba >> 32) as u8);
    r.outb(PRIMARY + 5, (lba >> 40) as u8);
    r.outb(PRIMARY + 2, count as u8);
    r.outb(PRIMARY + 3, lba as u8);
    r.outb(PRIMARY + 4, (lba >> 8) as u8);
    r.outb(PRIMARY + 5, (lba >> 16) as u8);
}

/// Read `n` sectors by PIO after a read command, one DRQ block of `per`
/// sectors per interrupt.
fn pio_in(r: &mut Rig, n: usize, per: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut left = n;
    while left > 0 {
        assert!(r.irq14.level(), "interrupt before each block");
        let st = r.status(PRIMARY);
        assert_eq!(st & 0x89, 0x08, "DRQ, no error: {st:#x}");
        let k = per.min(left);
        v.extend(r.read_data(PRIMARY, k * 512));
        left -= k;
    }
    let st = r.inb(PRIMARY_CTL);
    assert_eq!(st & 0x89, 0, "done: {st:#x}");
    v
}

fn pio_out(r: &mut Rig, data: &[u8], per: usize) {
    for (i, block) in data.chunks(per * 512).enumerate() {
        if i > 0 {
            assert!(r.irq14.level(), "interrupt before each later block");
        }
        let st = r.status(PRIMARY);
        assert_eq!(st & 0x89, 0x08, "DRQ: {st:#x}");
        r.write_data(PRIMARY, block);
    }
    assert!(r.irq14.level(), "interrupt at completion");
    assert_eq!(r.status(PRIMARY) & 0x89, 0);
}

#[test]
fn identify_device_describes_the_disk() {
    let mut r = disk_rig();
    r.select(PRIMARY, 0);
    assert_eq!(r.status(PRIMARY) & 0x40, 0x40, "DRDY");
    assert_eq!(
        (r.inb(PRIMARY + 4), r.inb(PRIMARY + 5)),
        (0, 0),
        "ATA signature"
    );
    r.outb(PRIMARY + 7, 0xec);
    let id = pio_in(&mut r, 1, 1);
    let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    assert_eq!(w(0) & 0x8000, 0, "ATA device");
    assert_eq!(u32::from(w(60)) | u32::from(w(61)) << 16, SECTORS as u32);
    assert_eq!(u64::from(w(100)) | u64::from(w(101)) << 16, SECTORS as u64);
    assert_ne!(w(83) & (1 << 10), 0, "LBA48");
    assert_ne!(w(83) & (1 << 12), 0, "FLUSH CACHE");
    assert_ne!(w(49) & 0x0300, 0, "LBA and DMA");
    let model: String = (27..47)
        .flat_map(|i| w(i).to_be_bytes())
        .map(char::from)
        .collect();
    assert!(model.starts_with("VMM Virtual ATA Disk"), "{model:?}");
    // IDENTIFY PACKET DEVICE and PACKET are aborted by a disk.
    for op in [0xa1, 0xa0] {
        r.outb(PRIMARY + 7, op);
        assert_eq!(r.status(PRIMARY) & 1, 1);
        assert_eq!(r.error(PRIMARY), 0x04);
    }
}

#[test]
fn pio_read_and_write_with_lba28_lba48_and_chs() {
    let mut r = disk_rig();
    lba28(&mut r, 10, 3);
    r.outb(PRIMARY + 7, 0x20);
    let d = pio_in(&mut r, 3, 1);
    assert_eq!([tag(&d[..]), tag(&d[512..]), tag(&d[1024..])], [10, 11, 12]);

    lba48(&mut r, 1000, 2);
    r.outb(PRIMARY + 7, 0x24);
    let d = pio_in(&mut r, 2, 1);
    assert_eq!([tag(&d[..]), tag(&d[512..])], [1000, 1001]);

    // Write 2 sectors at 500 by LBA48, read them back by LBA28.
    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    lba48(&mut r, 500, 2);
    r.outb(PRIMARY + 7, 0x34);
    pio_out(&mut r, &data, 1);
    lba28(&mut r, 500, 2);
    r.outb(PRIMARY + 7, 0x20);
    assert_eq!(pio_in(&mut r, 2, 1), data);

    // CHS: default translation 16 heads x 63 sectors: C/H/S 1/2/4 is
    // LBA (1*16+2)*63+3.
    r.outb(PRIMARY + 2, 1);
    r.outb(PRIMARY + 3, 4);
    r.outb(PRIMARY + 4, 1);
    r.outb(PRIMARY + 5, 0);
    r.outb(PRIMARY + 6, 0xa0 | 2);
    r.outb(PRIMARY + 7, 0x20);
    assert_eq!(tag(&pio_in(&mut r, 1, 1)), (16 + 2) * 63 + 3);
    // INITIALIZE DEVICE PARAMETERS: 4 heads, 17 sectors per track.
    r.outb(PRIMARY + 2, 17);
    r.outb(PRIMARY + 6, 0xa0 | 3);
    r.outb(PRIMARY + 7, 0x91);
    assert_eq!(r.status(PRIMARY) & 1, 0);
    r.outb(PRIMARY + 2, 1);
    r.outb(PRIMARY + 3, 4);
    r.outb(PRIMARY + 4, 1);
    r.outb(PRIMARY + 5, 0);
    r.outb(PRIMARY + 6, 0xa0 | 2);
    r.outb(PRIMARY + 7, 0x20);
    assert_eq!(tag(&pio_in(&mut r, 1, 1)), (4 + 2) * 17 + 3);
    // Sector 0 does not exist in CHS.
    r.outb(PRIMARY + 3, 0);
    r.outb(PRIMARY + 7, 0x20);
    assert_eq!(r.status(PRIMARY) & 1, 1);
    assert_eq!(r.error(PRIMARY), 0x10, "IDNF");
}

#[test]
fn thirty_two_bit_pio_moves_four_bytes_per_access() {
    let mut r = disk_rig();
    lba28(&mut r, 7, 1);
    r.outb(PRIMARY + 7, 0x20);
    r.status(PRIMARY);
    let mut d = Vec::new();
    for _ in 0..128 {
        d.extend_from_slice(&r.inl(PRIMARY).to_le_bytes());
    }
    assert_eq!(tag(&d), 7);
    assert_eq!(r.status(PRIMARY) & 0x08, 0);
}

#[test]
fn read_and_write_multiple_use_the_block_size_set() {
    let mut r = disk_rig();
    // Before SET MULTIPLE, READ MULTIPLE is aborted.
    lba28(&mut r, 0, 8);
    r.outb(PRIMARY + 7, 0xc4);
    assert_eq!(r.status(PRIMARY) & 1, 1);
    // A block size that is not a power of two is refused.
    r.outb(PRIMARY + 2, 3);
    r.outb(PRIMARY + 7, 0xc6);
    assert_eq!(r.status(PRIMARY) & 1, 1);
    r.outb(PRIMARY + 2, 4);
    r.outb(PRIMARY + 7, 0xc6);
    assert_eq!(r.status(PRIMARY) & 1, 0);
    lba28(&mut r, 20, 10);
    r.outb(PRIMARY + 7, 0xc4);
    let d = pio_in(&mut r, 10, 4);
    assert_eq!(tag(&d[9 * 512..]), 29);
    let data = vec![0x3c; 6 * 512];
    lba28(&mut r, 40, 6);
    r.outb(PRIMARY + 7, 0xc5);
    pio_out(&mut r, &data, 4);
    lba48(&mut r, 40, 6);
    r.outb(PRIMARY + 7, 0x29);
    assert_eq!(pio_in(&mut r, 6, 4), data);
}

#[test]
fn dma_read_and_write() {
    let mut r = disk_rig();
    // Read 16 sectors at 100 into two PRD regions.
    r.write_prd(&[(BUF_AT as u32, 4096), (BUF_AT as u32 + 0x4000, 4096)]);
    r.bm_setup(PRIMARY, true);
    lba28(&mut r, 100, 16);
    r.outb(PRIMARY + 7, 0xc8);
    assert_eq!(r.bm_start(PRIMARY, true) & 7, 4);
    assert!(r.irq14.level());
    assert_eq!(r.status(PRIMARY) & 0x89, 0);
    r.bm_stop(PRIMARY);
    assert_eq!(tag(&r.read_mem(BUF_AT, 8)), 100);
    assert_eq!(tag(&r.read_mem(BUF_AT + 0x4000 + 7 * 512, 8)), 115);

    // Write 4 sectors at 300 from memory by WRITE DMA EXT, read back by PIO.
    let data: Vec<u8> = (0..2048).map(|i| (i % 251) as u8).collect();
    r.vm.memory_mut().write(BUF_AT, &data).unwrap();
    r.write_prd(&[(BUF_AT as u32, 2048)]);
    r.bm_setup(PRIMARY, false);
    lba48(&mut r, 300, 4);
    r.outb(PRIMARY + 7, 0x35);
    assert_eq!(r.bm_start(PRIMARY, false) & 7, 4);
    assert_eq!(r.status(PRIMARY) & 0x89, 0);
    r.bm_stop(PRIMARY);
    lba28(&mut r, 300, 4);
    r.outb(PRIMARY + 7, 0x20);
    assert_eq!(pio_in(&mut r, 4, 1), data);
}

#[test]
fn out_of_range_is_idnf_and_unknown_commands_abort() {
    let mut r = disk_rig();
    lba28(&mut r, SECTORS as u32 - 1, 2);
    r.outb(PRIMARY + 7, 0x20);
    assert_eq!(r.status(PRIMARY) & 0x89, 0x01);
    assert_eq!(r.error(PRIMARY), 0x10);
    lba48(&mut r, 1 << 40, 1);
    r.outb(PRIMARY + 7, 0x25);
    assert_eq!(r.error(PRIMARY), 0x10);
    r.outb(PRIMARY + 7, 0x00);
    assert_eq!(r.status(PRIMARY) & 1, 1);
    assert_eq!(r.error(PRIMARY), 0x04);
    // The next good command clears the error.
    r.outb(PRIMARY + 7, 0xe7);
    assert_eq!(r.status(PRIMARY) & 0x89, 0);
    assert_eq!(r.error(PRIMARY), 0);
}

#[test]
fn set_features_selects_transfer_modes() {
    let mut r = disk_rig();
    r.select(PRIMARY, 0);
    r.outb(PRIMARY + 1, 0x03);
    r.outb(PRIMARY + 2, 0x45); // UDMA 5
    r.outb(PRIMARY + 7, 0xef);
    assert_eq!(r.status(PRIMARY) & 1, 0);
    r.outb(PRIMARY + 7, 0xec);
    let id = pio_in(&mut r, 1, 1);
    assert_eq!(
        u16::from_le_bytes([id[176], id[177]]),
        0x203f,
        "word 88: UDMA 5 selected"
    );
    r.outb(PRIMARY + 1, 0x03);
    r.outb(PRIMARY + 2, 0x47); // UDMA 7 does not exist
    r.outb(PRIMARY + 7, 0xef);
    assert_eq!(r.status(PRIMARY) & 1, 1);
    r.outb(PRIMARY + 1, 0x77); // unknown subcommand
    r.outb(PRIMARY + 7, 0xef);
    assert_eq!(r.error(PRIMARY), 0x04);
}

#[test]
fn soft_reset_and_nien() {
    let mut r = rig(vec![
        (IdeSlot::PrimaryMaster, disk(64)),
        (IdeSlot::PrimarySlave, cdrom(vec![0; 2048])),
    ]);
    // nIEN masks the line; the BM interrupt bit does not latch either.
    r.outb(PRIMARY_CTL, 0x02);
    r.outb(Rig::bm(PRIMARY) + 2, 0x06);
    r.select(PRIMARY, 0);
    r.outb(PRIMARY + 7, 0xe7);
    assert!(!r.irq14.level());
    assert_eq!(r.inb(Rig::bm(PRIMARY) + 2) & 4, 0);
    // Enabling interrupts shows the pending one; reading status clears it,
    // reading alternate status does not.
    r.outb(PRIMARY_CTL, 0x00);
    assert!(r.irq14.level());
    r.inb(PRIMARY_CTL);
    assert!(r.irq14.level());
    r.status(PRIMARY);
    assert!(!r.irq14.level());
    // Soft reset: BSY while SRST is set, then signatures per drive.
    r.outb(PRIMARY + 4, 0x55);
    r.outb(PRIMARY_CTL, 0x04);
    assert_eq!(r.inb(PRIMARY_CTL) & 0x80, 0x80);
    r.outb(PRIMARY_CTL, 0x00);
    assert_eq!(r.status(PRIMARY), 0x50, "disk ready");
    assert_eq!(r.error(PRIMARY), 0x01, "diagnostic passed");
    assert_eq!((r.inb(PRIMARY + 4), r.inb(PRIMARY + 5)), (0, 0));
    r.select(PRIMARY, 1);
    assert_eq!(
        (r.inb(PRIMARY + 4), r.inb(PRIMARY + 5)),
        (0x14, 0xeb),
        "ATAPI signature"
    );
    assert_eq!(r.status(PRIMARY), 0x00, "ATAPI clears DRDY after reset");
}

#[test]
fn a_read_only_disk_refuses_writes() {
    use vmm_devices::block::MemoryImage;
    let img = MemoryImage::read_only("ro.img", vec![0; 64 * 512], 512).unwrap();
    let mut r = rig(vec![(IdeSlot::PrimaryMaster, disk_on(Box::new(img)))]);
    lba28(&mut r, 0, 1);
    r.outb(PRIMARY + 7, 0x30);
    assert_eq!(r.status(PRIMARY) & 0x89, 0x01);
    assert_eq!(r.error(PRIMARY), 0x44, "WP and ABRT");
}

#[test]
fn hob_reads_the_previous_lba48_bytes() {
    let mut r = disk_rig();
    r.select(PRIMARY, 0);
    lba48(&mut r, 0x0605_0403_0201, 0x0a0b);
    assert_eq!(
        [
            r.inb(PRIMARY + 2),
            r.inb(PRIMARY + 3),
            r.inb(PRIMARY + 4),
            r.inb(PRIMARY + 5)
        ],
        [0x0b, 1, 2, 3]
    );
    r.outb(PRIMARY_CTL, 0x80);
    assert_eq!(
        [
            r.inb(PRIMARY + 2),
            r.inb(PRIMARY + 3),
            r.inb(PRIMARY + 4),
            r.inb(PRIMARY + 5)
        ],
        [0x0a, 4, 5, 6]
    );
    // Writing any task-file register clears HOB.
    r.outb(PRIMARY + 1, 0);
    assert_eq!(r.inb(PRIMARY + 3), 1);
}

/// A string read (what REP INSW becomes) of the data register gives exactly
/// what the same number of single word reads gives: across DRQ block
/// boundaries (with the interrupt and status changes between blocks) and
/// past the end of the transfer, where the register reads all-ones.
#[test]
fn string_reads_of_the_data_register_match_single_reads() {
    let read = |string: bool| {
        let mut r = disk_rig();
        r.outb(PRIMARY + 2, 2);
        r.outb(PRIMARY + 7, 0xc6); // SET MULTIPLE: 2 sectors per block
        lba28(&mut r, 7, 5);
        r.outb(PRIMARY + 7, 0xc4); // READ MULTIPLE
                                   // 5 sectors and 3 words more.
        let mut out = vec![0u8; 5 * 512 + 6];
        if string {
            r.vm.port_read_string(PRIMARY, 2, &mut out);
        } else {
            for w in out.chunks_mut(2) {
                r.vm.port_read(PRIMARY, w);
            }
        }
        (out, r.status(PRIMARY), r.irq14.level())
    };
    let (bulk, bulk_status, bulk_irq) = read(true);
    let (single, single_status, single_irq) = read(false);
    assert_eq!(tag(&bulk[4 * 512..]), 11, "the fifth sector is LBA 11");
    assert_eq!(&bulk[5 * 512..], &[0xff; 6], "past the transfer: all-ones");
    assert!(bulk == single, "string and single reads differ");
    assert_eq!((bulk_status, bulk_irq), (single_status, single_irq));
}
