//! Shared by the IDE integration tests: a PC-shaped test VM with the IDE
//! controller on its legacy ports, and a driver that talks to it only
//! through port I/O and guest memory, the way a BIOS or an OS driver does.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::block::{
    check_transfer, BlockBackend, BlockError, MemoryImage, CD_SECTOR_SIZE, DISK_SECTOR_SIZE,
};
use vmm_devices::ide::{Drive, IdeChannel, IdeSlot, LegacyIde};

/// Bus-master register block base used by the tests.
pub const BM: u16 = 0xc000;
/// Guest RAM size.
pub const RAM: u64 = 2 << 20;
/// A ROM at the top of the 4 GiB space.
pub const ROM_BASE: u64 = 0xffff_0000;
/// An MMIO hole nothing claims.
pub const HOLE: u64 = 0xfec0_0000;
/// Where tests put PRD tables.
pub const PRD_AT: u64 = 0x1000;
/// Where tests put DMA buffers.
pub const BUF_AT: u64 = 0x1_0000;

pub const PRIMARY: u16 = 0x1f0;
pub const SECONDARY: u16 = 0x170;
pub const PRIMARY_CTL: u16 = 0x3f6;
pub const SECONDARY_CTL: u16 = 0x376;

pub struct Rig {
    pub vm: Vm,
    pub irq14: Arc<TestIrqLine>,
    pub irq15: Arc<TestIrqLine>,
}

/// Build a VM with `drives` attached.
pub fn rig(drives: Vec<(IdeSlot, Drive)>) -> Rig {
    let irq14 = TestIrqLine::new();
    let irq15 = TestIrqLine::new();
    let mut ide = LegacyIde::new(Box::new(irq14.clone()), Box::new(irq15.clone()), Some(BM));
    for (slot, d) in drives {
        ide.controller_mut().attach(slot, d).unwrap();
    }
    let claims = ide.port_claims();
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .rom(ROM_BASE, &[0x5a; 0x1_0000])
        .mmio_hole(HOLE, 0x1000)
        .device(ide, &claims, &[])
        .build()
        .unwrap();
    Rig { vm, irq14, irq15 }
}

pub fn cdrom(bytes: Vec<u8>) -> Drive {
    Drive::cdrom(Some(Box::new(
        MemoryImage::read_only("test.iso", bytes, CD_SECTOR_SIZE).unwrap(),
    )))
    .unwrap()
}

pub fn disk(sectors: usize) -> Drive {
    // Each sector holds its own number, so reads show where they came from.
    let mut bytes = vec![0u8; sectors * DISK_SECTOR_SIZE];
    for (i, s) in bytes.chunks_mut(DISK_SECTOR_SIZE).enumerate() {
        s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    Drive::disk(Box::new(
        MemoryImage::writable("disk.img", bytes, DISK_SECTOR_SIZE).unwrap(),
    ))
    .unwrap()
}

pub fn disk_on(backend: Box<dyn BlockBackend>) -> Drive {
    Drive::disk(backend).unwrap()
}

impl Rig {
    pub fn outb(&mut self, port: u16, v: u8) {
        self.vm.port_write(port, &[v]);
    }
    pub fn outw(&mut self, port: u16, v: u16) {
        self.vm.port_write(port, &v.to_le_bytes());
    }
    pub fn outl(&mut self, port: u16, v: u32) {
        self.vm.port_write(port, &v.to_le_bytes());
    }
    pub fn inb(&mut self, port: u16) -> u8 {
        let mut b = [0u8; 1];
        self.vm.port_read(port, &mut b);
        b[0]
    }
    pub fn inw(&mut self, port: u16) -> u16 {
        let mut b = [0u8; 2];
        self.vm.port_read(port, &mut b);
        u16::from_le_bytes(b)
    }
    pub fn inl(&mut self, port: u16) -> u32 {
        let mut b = [0u8; 4];
        self.vm.port_read(port, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn ide(&self) -> &LegacyIde {
        self.vm
            .devices()
            .device::<LegacyIde>(vmm_core::device::DeviceId(0))
            .unwrap()
    }

    pub fn irq(&self, base: u16) -> &TestIrqLine {
        if base == PRIMARY {
            &self.irq14
        } else {
            &self.irq15
        }
    }

    /// Select device `dev` (0/1) on the channel at `base`, LBA mode.
    pub fn select(&mut self, base: u16, dev: u8) {
        self.outb(base + 6, 0xe0 | dev << 4);
    }

    /// Status (clears the interrupt).
    pub fn status(&mut self, base: u16) -> u8 {
        self.inb(base + 7)
    }

    pub fn error(&mut self, base: u16) -> u8 {
        self.inb(base + 1)
    }

    /// Read `n` bytes from the data register in 16-bit accesses.
    pub fn read_data(&mut self, base: u16, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n / 2 {
            v.extend_from_slice(&self.inw(base).to_le_bytes());
        }
        v
    }

    pub fn write_data(&mut self, base: u16, data: &[u8]) {
        for w in data.chunks(2) {
            self.outw(base, u16::from_le_bytes([w[0], w[1]]));
        }
    }

    /// Send an ATAPI packet by PIO and collect the data the drive returns,
    /// as an ATAPI driver does: PACKET, wait for DRQ with CoD, write the
    /// packet, then for each DRQ block read the byte count and that many
    /// bytes. Returns (data, final status, error register).
    pub fn packet_pio(
        &mut self,
        base: u16,
        dev: u8,
        cdb: &[u8; 12],
        limit: u16,
    ) -> (Vec<u8>, u8, u8) {
        self.select(base, dev);
        self.outb(base + 1, 0); // PIO
        self.outb(base + 4, limit as u8);
        self.outb(base + 5, (limit >> 8) as u8);
        self.outb(base + 7, 0xa0);
        let st = self.inb(base + 7);
        assert_eq!(st & 0x88, 0x08, "DRQ after PACKET, status {st:#x}");
        assert_eq!(self.inb(base + 2) & 3, 1, "interrupt reason CoD");
        self.write_data(base, cdb);
        let mut data = Vec::new();
        loop {
            let st = self.status(base);
            if st & 0x08 == 0 {
                let reason = self.inb(base + 2) & 3;
                assert_eq!(reason, 3, "interrupt reason at completion");
                let err = self.error(base);
                return (data, st, err);
            }
            assert_eq!(self.inb(base + 2) & 3, 2, "interrupt reason data-in");
            let n = self.inb(base + 4) as usize | (self.inb(base + 5) as usize) << 8;
            assert!(
                n > 0 && n <= limit.max(2) as usize,
                "byte count {n} within limit {limit}"
            );
            data.extend(self.read_data(base, n));
        }
    }

    /// Write a PRD table at `PRD_AT`: `(address, byte count)` entries, the
    /// last one with EOT.
    pub fn write_prd(&mut self, entries: &[(u32, u32)]) {
        for (i, (addr, len)) in entries.iter().enumerate() {
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&addr.to_le_bytes());
            e[4..6].copy_from_slice(&((*len & 0xffff) as u16).to_le_bytes());
            if i + 1 == entries.len() {
                e[7] = 0x80;
            }
            self.vm
                .memory_mut()
                .write(PRD_AT + 8 * i as u64, &e)
                .unwrap();
        }
    }

    /// Bus-master block of the channel at `base`.
    pub fn bm(base: u16) -> u16 {
        if base == PRIMARY {
            BM
        } else {
            BM + 8
        }
    }

    /// Program the engine as a driver does before issuing a DMA command:
    /// table address, clear Error/Interrupt, direction.
    pub fn bm_setup(&mut self, base: u16, to_memory: bool) {
        let bm = Self::bm(base);
        self.outl(bm + 4, PRD_AT as u32);
        self.outb(bm + 2, 0x06);
        self.outb(bm, if to_memory { 0x08 } else { 0 });
    }

    /// Start the engine; returns its status afterwards.
    pub fn bm_start(&mut self, base: u16, to_memory: bool) -> u8 {
        let bm = Self::bm(base);
        self.outb(bm, if to_memory { 0x09 } else { 0x01 });
        self.inb(bm + 2)
    }

    pub fn bm_stop(&mut self, base: u16) {
        let bm = Self::bm(base);
        let cmd = self.inb(bm);
        self.outb(bm, cmd & !1);
    }

    /// Send an ATAPI packet with DMA into the table already written.
    /// Returns (bus-master status, drive status, error).
    pub fn packet_dma(&mut self, base: u16, dev: u8, cdb: &[u8; 12]) -> (u8, u8, u8) {
        self.bm_setup(base, true);
        self.select(base, dev);
        self.outb(base + 1, 1); // DMA
        self.outb(base + 7, 0xa0);
        assert_eq!(self.inb(base + 2) & 3, 1, "interrupt reason CoD");
        self.write_data(base, cdb);
        let bms = self.bm_start(base, true);
        let st = self.status(base);
        let err = self.error(base);
        self.bm_stop(base);
        (bms, st, err)
    }

    pub fn read_mem(&self, gpa: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.vm.memory().read(gpa, &mut v).unwrap();
        v
    }

    /// Every byte of RAM and ROM, to prove nothing changed.
    pub fn snapshot(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.read_mem(0, RAM as usize),
            self.read_mem(ROM_BASE, 0x1_0000),
        )
    }

    pub fn dma_state(&self, base: u16) -> vmm_devices::ide::DmaState {
        self.ide().controller().dma_state(channel(base))
    }
}

pub fn channel(base: u16) -> IdeChannel {
    if base == PRIMARY {
        IdeChannel::Primary
    } else {
        IdeChannel::Secondary
    }
}

pub fn read10(lba: u32, count: u16) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&count.to_be_bytes());
    c
}

pub fn cdb(bytes: &[u8]) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-ide-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The boot image's marker, found at the start of the El Torito image.
pub const BOOT_MARKER: &[u8] = b"VMM-ELTORITO-BOOT-IMAGE";
/// A file's marker.
pub const FILE_MARKER: &[u8] = b"hello from the ISO";

/// Build an ISO with `xorriso -as mkisofs`: a file and a no-emulation El
/// Torito boot image.
pub fn make_iso(dir: &Path) -> Vec<u8> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let mut boot = vec![0u8; 2048];
    boot[..BOOT_MARKER.len()].copy_from_slice(BOOT_MARKER);
    std::fs::write(root.join("boot/boot.bin"), &boot).unwrap();
    std::fs::write(root.join("hello.txt"), FILE_MARKER).unwrap();
    let iso = dir.join("test.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "VMMTEST", "-o"])
        .arg(&iso)
        .args([
            "-b",
            "boot/boot.bin",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
        ])
        .arg(&root)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run xorriso ({e}): install it with `apt-get install -y xorriso` to run the ISO tests"),
    };
    assert!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&iso).unwrap()
}

/// What a [`FaultyDisk`] holds and is told to do, shared with the test.
#[derive(Default)]
pub struct FaultState {
    /// What the guest wrote (the host's page cache).
    pub volatile: Vec<u8>,
    /// What a flush made durable (what survives a host crash).
    pub durable: Vec<u8>,
    /// Writes fail with EIO while set.
    pub fail_writes: bool,
    /// Flushes fail with EIO while set.
    pub fail_flushes: bool,
    /// Flushes asked for, failed or not.
    pub flushes: u32,
    /// Writes asked for, failed or not.
    pub writes: u32,
}

/// A fault-injection disk: writes land in `volatile`, only a successful
/// flush copies them to `durable`, and writes or flushes fail on command.
pub struct FaultyDisk {
    pub state: Arc<std::sync::Mutex<FaultState>>,
    read_only: bool,
}

/// EIO, as a Linux host reports a failed write or sync.
pub const EIO: i32 = 5;

impl FaultyDisk {
    /// A disk of `sectors` zeroed sectors, and the handle to its state.
    pub fn new(sectors: usize, read_only: bool) -> (Self, Arc<std::sync::Mutex<FaultState>>) {
        let bytes = vec![0u8; sectors * DISK_SECTOR_SIZE];
        let state = Arc::new(std::sync::Mutex::new(FaultState {
            volatile: bytes.clone(),
            durable: bytes,
            ..FaultState::default()
        }));
        (
            Self {
                state: state.clone(),
                read_only,
            },
            state,
        )
    }
}

impl BlockBackend for FaultyDisk {
    fn name(&self) -> &str {
        "faulty.img"
    }
    fn sector_size(&self) -> usize {
        DISK_SECTOR_SIZE
    }
    fn sector_count(&self) -> u64 {
        (self.state.lock().unwrap().volatile.len() / DISK_SECTOR_SIZE) as u64
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let s = self.state.lock().unwrap();
        let at = check_transfer(lba, buf.len(), DISK_SECTOR_SIZE, self.sector_count_of(&s))?;
        buf.copy_from_slice(&s.volatile[at as usize..at as usize + buf.len()]);
        Ok(())
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut s = self.state.lock().unwrap();
        s.writes += 1;
        let at = check_transfer(lba, data.len(), DISK_SECTOR_SIZE, self.sector_count_of(&s))?;
        if s.fail_writes {
            return Err(BlockError::Io { code: EIO });
        }
        s.volatile[at as usize..at as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        let mut s = self.state.lock().unwrap();
        s.flushes += 1;
        if s.fail_flushes {
            return Err(BlockError::Io { code: EIO });
        }
        s.durable = s.volatile.clone();
        Ok(())
    }
}

impl FaultyDisk {
    fn sector_count_of(&self, s: &FaultState) -> u64 {
        (s.volatile.len() / DISK_SECTOR_SIZE) as u64
    }
}
