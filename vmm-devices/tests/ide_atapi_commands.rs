//! ATAPI packet commands and their sense errors, sent by PIO through the
//! registers: no medium (NOT READY, 3A/00), invalid field in the packet
//! (ILLEGAL REQUEST, 24/00), LBA out of range (ILLEGAL REQUEST, 21/00),
//! invalid opcode (ILLEGAL REQUEST, 20/00), and what the successful commands
//! return.

mod ide_support;
use ide_support::*;
use vmm_devices::ide::{Drive, IdeSlot};

const SECTORS: usize = 100;

fn cd() -> Rig {
    let mut iso = vec![0u8; SECTORS * 2048];
    for (i, s) in iso.chunks_mut(2048).enumerate() {
        s[..4].copy_from_slice(&(i as u32).to_le_bytes());
    }
    rig(vec![(IdeSlot::SecondaryMaster, cdrom(iso))])
}

fn empty_cd() -> Rig {
    rig(vec![(
        IdeSlot::SecondaryMaster,
        Drive::cdrom(None).unwrap(),
    )])
}

/// Run `cdb`, expect CHECK CONDITION with `key`/`asc`/`ascq`, confirm with
/// REQUEST SENSE, and that the sense is cleared afterwards.
fn expect_sense(r: &mut Rig, cdb: [u8; 12], key: u8, asc: u8, ascq: u8) {
    let edges = r.irq15.rising_edges();
    let (data, st, err) = r.packet_pio(SECONDARY, 0, &cdb, 0xfffe);
    assert!(data.is_empty(), "no data on error");
    assert_eq!(st & 0x01, 0x01, "ERR set for opcode {:#x}", cdb[0]);
    assert_eq!(err >> 4, key, "sense key in the error register");
    assert_eq!(
        r.irq15.rising_edges(),
        edges + 1,
        "one interrupt at completion"
    );
    let (sense, st, _) = r.packet_pio(SECONDARY, 0, &request_sense(), 0xfffe);
    assert_eq!(st & 1, 0);
    assert_eq!(sense.len(), 18);
    assert_eq!(sense[0], 0x70, "fixed format, current");
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (key, asc, ascq));
    let (sense, _, _) = r.packet_pio(SECONDARY, 0, &request_sense(), 0xfffe);
    assert_eq!(sense[2] & 0x0f, 0, "REQUEST SENSE cleared the sense");
}

fn request_sense() -> [u8; 12] {
    cdb(&[0x03, 0, 0, 0, 18])
}

#[test]
fn no_medium_is_not_ready_3a() {
    let mut r = empty_cd();
    expect_sense(&mut r, cdb(&[0x00]), 0x02, 0x3a, 0);
    expect_sense(&mut r, cdb(&[0x25]), 0x02, 0x3a, 0);
    expect_sense(&mut r, read10(0, 1), 0x02, 0x3a, 0);
    expect_sense(
        &mut r,
        cdb(&[0xa8, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        0x02,
        0x3a,
        0,
    );
    expect_sense(&mut r, cdb(&[0x43, 0, 0, 0, 0, 0, 0, 0, 12]), 0x02, 0x3a, 0);
    expect_sense(&mut r, cdb(&[0x51, 0, 0, 0, 0, 0, 0, 0, 34]), 0x02, 0x3a, 0);
    // INQUIRY still works without a medium.
    let (inq, st, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x12, 0, 0, 0, 36]), 0xfffe);
    assert_eq!(st & 1, 0);
    assert_eq!(inq[0] & 0x1f, 5);
}

#[test]
fn ejected_tray_is_no_medium_until_loaded() {
    let mut r = cd();
    let (_, st, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x00]), 0xfffe);
    assert_eq!(st & 1, 0, "medium present");
    // Prevent removal, then try to eject: refused.
    r.packet_pio(SECONDARY, 0, &cdb(&[0x1e, 0, 0, 0, 1]), 0xfffe);
    expect_sense(&mut r, cdb(&[0x1b, 0, 0, 0, 0x02]), 0x05, 0x53, 0x02);
    r.packet_pio(SECONDARY, 0, &cdb(&[0x1e, 0, 0, 0, 0]), 0xfffe);
    let (_, st, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x1b, 0, 0, 0, 0x02]), 0xfffe);
    assert_eq!(st & 1, 0);
    expect_sense(&mut r, cdb(&[0x00]), 0x02, 0x3a, 0);
    r.packet_pio(SECONDARY, 0, &cdb(&[0x1b, 0, 0, 0, 0x03]), 0xfffe);
    let (_, st, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x00]), 0xfffe);
    assert_eq!(st & 1, 0, "loaded again");
}

#[test]
fn lba_out_of_range_is_illegal_request_21() {
    let mut r = cd();
    expect_sense(&mut r, read10(SECTORS as u32, 1), 0x05, 0x21, 0);
    expect_sense(&mut r, read10(SECTORS as u32 - 1, 2), 0x05, 0x21, 0);
    expect_sense(&mut r, read10(u32::MAX, 0xffff), 0x05, 0x21, 0);
    expect_sense(
        &mut r,
        cdb(&[0xa8, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        0x05,
        0x21,
        0,
    );
    // The last sector is fine.
    let (d, st, _) = r.packet_pio(SECONDARY, 0, &read10(SECTORS as u32 - 1, 1), 0xfffe);
    assert_eq!(st & 1, 0);
    assert_eq!(d[..4], (SECTORS as u32 - 1).to_le_bytes());
}

#[test]
fn invalid_fields_are_illegal_request_24() {
    let mut r = cd();
    // INQUIRY with EVPD.
    expect_sense(&mut r, cdb(&[0x12, 1, 0x80, 0, 36]), 0x05, 0x24, 0);
    // MODE SENSE of a page the drive does not have.
    expect_sense(
        &mut r,
        cdb(&[0x5a, 0, 0x05, 0, 0, 0, 0, 0, 64]),
        0x05,
        0x24,
        0,
    );
    // READ TOC format 5 and starting track 2 of a one-track disc.
    expect_sense(&mut r, cdb(&[0x43, 0, 5, 0, 0, 0, 0, 0, 64]), 0x05, 0x24, 0);
    expect_sense(&mut r, cdb(&[0x43, 0, 0, 0, 0, 0, 2, 0, 64]), 0x05, 0x24, 0);
    // GET EVENT STATUS NOTIFICATION without the polled bit.
    expect_sense(
        &mut r,
        cdb(&[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8]),
        0x05,
        0x24,
        0,
    );
    // GET CONFIGURATION with reserved RT 3.
    expect_sense(&mut r, cdb(&[0x46, 3, 0, 0, 0, 0, 0, 0, 64]), 0x05, 0x24, 0);
    // READ DISC INFORMATION with a data type other than 0.
    expect_sense(&mut r, cdb(&[0x51, 1, 0, 0, 0, 0, 0, 0, 34]), 0x05, 0x24, 0);
    // Saved mode pages.
    expect_sense(
        &mut r,
        cdb(&[0x5a, 0, 0xea, 0, 0, 0, 0, 0, 64]),
        0x05,
        0x39,
        0,
    );
}

#[test]
fn unknown_opcode_is_illegal_request_20() {
    let mut r = cd();
    expect_sense(&mut r, cdb(&[0xff]), 0x05, 0x20, 0);
    expect_sense(&mut r, cdb(&[0xbe]), 0x05, 0x20, 0);
}

#[test]
fn inquiry_capacity_toc_and_friends() {
    let mut r = cd();
    let (inq, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x12, 0, 0, 0, 36]), 0xfffe);
    assert_eq!(inq.len(), 36);
    assert_eq!(inq[0], 0x05, "CD/DVD device");
    assert_eq!(inq[1] & 0x80, 0x80, "removable");
    assert_eq!(&inq[8..11], b"VMM");
    // Allocation length cuts the reply.
    let (short, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x12, 0, 0, 0, 8]), 0xfffe);
    assert_eq!(short, inq[..8]);

    let (cap, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x25]), 0xfffe);
    assert_eq!(cap, [0, 0, 0, SECTORS as u8 - 1, 0, 0, 8, 0]);

    let (toc, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x43, 0, 0, 0, 0, 0, 0, 0, 0xff]),
        0xfffe,
    );
    assert_eq!(toc.len(), 20);
    assert_eq!(&toc[..4], &[0, 18, 1, 1]);
    assert_eq!(
        &toc[4..12],
        &[0, 0x14, 1, 0, 0, 0, 0, 0],
        "track 1 at LBA 0"
    );
    assert_eq!(
        &toc[12..20],
        &[0, 0x14, 0xaa, 0, 0, 0, 0, SECTORS as u8],
        "lead-out"
    );
    // MSF: LBA 0 is 00:02:00.
    let (toc, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x43, 2, 0, 0, 0, 0, 1, 0, 0xff]),
        0xfffe,
    );
    assert_eq!(&toc[8..12], &[0, 0, 2, 0]);
    // Session info.
    let (ses, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x43, 0, 1, 0, 0, 0, 0, 0, 12]), 0xfffe);
    assert_eq!(&ses[..4], &[0, 10, 1, 1]);

    let (cfg, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x46, 0, 0, 0, 0, 0, 0, 0, 0xff]),
        0xfffe,
    );
    assert_eq!(&cfg[6..8], &[0, 8], "current profile CD-ROM");
    let (ev, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8]),
        0xfffe,
    );
    assert_eq!(ev, [0, 6, 4, 0x10, 2, 2, 0, 0], "new media, present");
    let (ev, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8]),
        0xfffe,
    );
    assert_eq!(ev[4], 0, "the event is reported once");

    let (di, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x51, 0, 0, 0, 0, 0, 0, 0, 34]), 0xfffe);
    assert_eq!(di.len(), 34);
    assert_eq!(di[2], 0x0e, "complete disc");

    let (ms, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 0xff]),
        0xfffe,
    );
    assert_eq!(u16::from_be_bytes([ms[0], ms[1]]) as usize, ms.len() - 2);
    assert_eq!(ms[8], 0x2a, "capabilities page");
    let (ms6, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x1a, 0, 0x3f, 0, 0xff]), 0xfffe);
    assert_eq!(ms6[0] as usize, ms6.len() - 1);

    for c in [
        cdb(&[0xbb, 0, 0xff, 0xff]),
        cdb(&[0x1e, 0, 0, 0, 0]),
        cdb(&[0x00]),
    ] {
        let (d, st, _) = r.packet_pio(SECONDARY, 0, &c, 0xfffe);
        assert!(d.is_empty());
        assert_eq!(st & 1, 0, "opcode {:#x}", c[0]);
    }
}

#[test]
fn identify_packet_device_and_signature() {
    let mut r = cd();
    // After reset an ATAPI drive shows its signature and clears DRDY.
    r.select(SECONDARY, 0);
    assert_eq!((r.inb(SECONDARY + 4), r.inb(SECONDARY + 5)), (0x14, 0xeb));
    // IDENTIFY DEVICE is aborted, and the signature stays.
    r.outb(SECONDARY + 7, 0xec);
    assert_eq!(r.status(SECONDARY) & 1, 1);
    assert_eq!(r.error(SECONDARY), 0x04);
    assert_eq!((r.inb(SECONDARY + 4), r.inb(SECONDARY + 5)), (0x14, 0xeb));
    r.outb(SECONDARY + 7, 0xa1);
    assert_eq!(r.status(SECONDARY) & 0x08, 0x08);
    let id = r.read_data(SECONDARY, 512);
    let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    assert_eq!(w(0) >> 14, 2, "ATAPI device");
    assert_eq!((w(0) >> 8) & 0x1f, 5, "CD-ROM");
    assert_eq!(w(0) & 3, 0, "12-byte packets");
    assert_ne!(w(49) & 0x0100, 0, "DMA supported");
    assert_eq!(r.status(SECONDARY) & 0x08, 0, "DRQ clear after the block");
    // The empty slave reads as zeros; the absent primary channel as 0xff.
    r.select(SECONDARY, 1);
    assert_eq!(r.inb(SECONDARY + 7), 0);
    assert_eq!(r.inb(PRIMARY + 7), 0xff);
}

#[test]
fn read_12_and_a_medium_the_host_inserts() {
    let mut r = empty_cd();
    let (ev, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8]),
        0xfffe,
    );
    assert_eq!(ev, [0, 6, 4, 0x10, 0, 0, 0, 0], "no event, no medium");
    let (cfg, _, _) = r.packet_pio(SECONDARY, 0, &cdb(&[0x46, 0, 0, 0, 0, 0, 0, 0, 8]), 0xfffe);
    assert_eq!(&cfg[6..8], &[0, 0], "no current profile without a medium");
    // The host inserts a disc.
    let mut iso = vec![0u8; 8 * 2048];
    iso[5 * 2048..5 * 2048 + 4].copy_from_slice(b"five");
    let image = vmm_devices::block::MemoryImage::read_only("new.iso", iso, 2048).unwrap();
    let ide =
        r.vm.devices_mut()
            .device_mut::<vmm_devices::ide::LegacyIde>(vmm_core::device::DeviceId(0))
            .unwrap();
    assert!(ide
        .controller_mut()
        .change_medium(IdeSlot::SecondaryMaster, Some(Box::new(image)))
        .is_none());
    let (ev, _, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8]),
        0xfffe,
    );
    assert_eq!(&ev[4..6], &[2, 2], "new media, present");
    let (d, st, _) = r.packet_pio(
        SECONDARY,
        0,
        &cdb(&[0xa8, 0, 0, 0, 0, 5, 0, 0, 0, 1]),
        0xfffe,
    );
    assert_eq!(st & 1, 0);
    assert_eq!(d.len(), 2048);
    assert_eq!(&d[..4], b"five");
    // A zero-length read succeeds with no data phase.
    let (d, st, _) = r.packet_pio(SECONDARY, 0, &read10(7, 0), 0xfffe);
    assert!(d.is_empty());
    assert_eq!(st & 1, 0);
}
