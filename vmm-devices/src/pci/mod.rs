//! PCI: configuration mechanism #1, the bus that owns the functions, and the
//! header model (BARs, command register, interrupt pin/line) functions share.
//!
//! # How a PCI device plugs in
//!
//! 1. Write a type that implements [`PciFunction`]. It embeds a
//!    [`ConfigSpace`] built from its [`PciIds`], declares its BARs with
//!    [`ConfigSpace::set_bar`] and its INTx pin with
//!    [`ConfigSpace::set_interrupt_pin`], and returns that header from
//!    [`PciFunction::config`] / [`PciFunction::config_mut`].
//! 2. Implement the access handlers it needs: [`PciFunction::io_read`] /
//!    [`PciFunction::io_write`] for I/O BARs, [`PciFunction::mmio_read`] /
//!    [`PciFunction::mmio_write`] for memory BARs. They receive the
//!    [`RegionId`] (which BAR) and the offset inside it, never an absolute
//!    address, so the function does not care where the guest put the BAR.
//! 3. Fixed legacy ranges (IDE compatibility ports 0x1f0..) are decoded by
//!    overriding [`PciFunction::decoded_regions`]: append
//!    [`RegionId::Fixed`] regions to what [`ConfigSpace::decoded_bars`]
//!    gives, depending on the function's own enable bits.
//! 4. Add it to a [`PciBus`] with [`PciBus::add`] at a device/function
//!    number. The bus is the [`Device`] the VM sees: it answers 0xcf8-0xcff,
//!    and after every configuration write it recomputes the regions each
//!    function decodes, releases and claims ports and MMIO for itself with
//!    `VmRequest::ReleasePorts/ClaimPorts/ReleaseMmio/ClaimMmio`, and calls
//!    [`PciFunction::regions_changed`] so the function can react. A function
//!    must not send claim requests itself (they would route to the bus
//!    without it knowing which function they belong to).
//! 5. Interrupts: the platform gives the function an `IrqLine` when it is
//!    built; for INTx that is [`piix3::PirqRouter::intx_line`] for its slot
//!    and pin, which follows the PIIX3 PIRQ routing registers.
//! 6. Work over time (DMA completion) goes in [`PciFunction::poll`], which
//!    the bus's timer side calls; DMA goes through `ctx.dma` as for any
//!    device.
//! 7. State the VM must learn at power-on (the host bridge's memory map) is
//!    sent from [`PciFunction::power_on`], which the bus calls at its first
//!    call with a context after it was built, reset, or given a function
//!    (the run loop's first timer poll, or the guest's first access);
//!    the power-on claims of fixed regions are made then too.
//! 8. Tests and embedders reach a function again with
//!    [`PciBus::function_mut`] (through `DeviceManager::device_mut::<PciBus>`).
//!
//! Functions in this crate: [`i440fx::I440fx`] (host bridge, PAM),
//! [`piix3::Piix3`] (ISA bridge, PIRQ routing), [`piix4_pm::Piix4Pm`]
//! (ACPI PM block placed by PMBA).
//!
//! Only regions inside the bus's I/O and memory windows are claimed (BIOS
//! sizing writes all-ones to BARs; real chipsets route addresses below the
//! top of RAM to RAM anyway), and a region overlapping one already claimed
//! by another function of the bus is not decoded.

mod config;
pub mod i440fx;
pub mod msix;
pub mod piix3;
pub mod piix4_pm;

pub use config::{
    Bar, BarKind, ConfigError, ConfigSpace, InterruptPin, PciIds, PciRegion, RegionId, Space,
    COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MEMORY, REG_BAR0, REG_COMMAND,
    REG_INTERRUPT_LINE, REG_INTERRUPT_PIN, REG_ROM_ADDRESS, REG_STATUS, ROM_ENABLE,
    STATUS_INTERRUPT,
};

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{
    Device, DeviceContext, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo, Timer, VmRequest,
};

/// The configuration address port (dword accesses only).
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The first configuration data port (0xcfc-0xcff).
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// The PIIX reset control register, which shares the 0xcf8 dword.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;

/// A doorbell: a guest-physical address where a write only signals the
/// function, which does the same whatever was written (a virtio queue
/// notify). A host may catch such writes without leaving its kernel
/// (KVM_IOEVENTFD) and hand each over later as a two-byte write of
/// `data` at `gpa`; the function must report its doorbells again
/// whenever they may have changed (a BAR moved, a queue was enabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Doorbell {
    /// Guest-physical address of the write.
    pub gpa: u64,
    /// What to write when handing it over (little-endian, two bytes).
    pub data: u16,
}

/// One function of a PCI device, as the bus sees it.
///
/// Every method has a default except the header accessors; see the module
/// documentation for how a device plugs in.
pub trait PciFunction: Any + Send {
    /// A short name for logs ("i440fx", "piix3-ide").
    fn name(&self) -> &str;

    /// The configuration header.
    fn config(&self) -> &ConfigSpace;

    /// The configuration header, mutably.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// The guest reads configuration space. `offset + data.len()` stays
    /// within one dword.
    fn config_read(&mut self, ctx: &mut DeviceContext<'_>, offset: u8, data: &mut [u8]) {
        let _ = ctx;
        self.config().read(offset, data);
    }

    /// The guest writes configuration space. `offset + data.len()` stays
    /// within one dword. The bus re-evaluates decoded regions afterwards.
    fn config_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u8, data: &[u8]) {
        let _ = ctx;
        self.config_mut().write(offset, data);
    }

    /// Append every region the function decodes now. The default is the
    /// BARs enabled in the command register.
    fn decoded_regions(&self, out: &mut Vec<PciRegion>) {
        self.config().decoded_bars(out);
    }

    /// Append the function's doorbells now ([`Doorbell`]). The default
    /// is none.
    fn doorbells(&self, out: &mut Vec<Doorbell>) {
        let _ = out;
    }

    /// The regions the bus routes to this function changed (a BAR moved,
    /// decoding was switched on or off). `regions` is the new set.
    fn regions_changed(&mut self, ctx: &mut DeviceContext<'_>, regions: &[PciRegion]) {
        let _ = (ctx, regions);
    }

    /// Called once with a context after the bus was built or reset, before
    /// any other access: a function that must tell the VM about its power-on
    /// state (the host bridge's memory map) does it here.
    fn power_on(&mut self, ctx: &mut DeviceContext<'_>) {
        let _ = ctx;
    }

    /// The guest reads `data.len()` ports at `offset` in I/O region `region`.
    fn io_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        let _ = (ctx, region, offset);
        data.fill(0xff);
    }

    /// The guest reads the port at `offset` in I/O region `region`
    /// `data.len() / size` times in a row (REP INS), `size` bytes each. The
    /// default reads element by element.
    fn io_read_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        size: usize,
        data: &mut [u8],
    ) {
        for element in data.chunks_mut(size.max(1)) {
            self.io_read(ctx, region, offset, element);
        }
    }

    /// The guest writes ports at `offset` in I/O region `region`.
    fn io_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        let _ = (ctx, region, offset, data);
    }

    /// The guest reads at `offset` in memory region `region`.
    fn mmio_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        let _ = (ctx, region, offset);
        data.fill(0xff);
    }

    /// The guest writes at `offset` in memory region `region`.
    fn mmio_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        let _ = (ctx, region, offset, data);
    }

    /// Do what is due at `ctx.now_ns()`; return when to be polled next.
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let _ = ctx;
        None
    }

    /// Return to the power-on state. The default resets the header.
    fn reset(&mut self) {
        self.config_mut().reset();
    }

    /// The function's save and restore side, if it has state the guest can
    /// see. The bus saves it inside its own state; the bus re-establishes
    /// the function's claims after a restore, so a function does not.
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        None
    }
}

/// One function's part of the bus's saved state.
#[derive(Serialize, Deserialize)]
struct FunctionState {
    device: u8,
    function: u8,
    version: u32,
    bytes: Vec<u8>,
}

/// Saved state of the PCI bus, version [`PCI_BUS_STATE_VERSION`]: the
/// configuration address and reset control registers, and the state of
/// every function that has one, in slot order.
#[derive(Serialize, Deserialize)]
struct PciBusState {
    address: u32,
    reset_control: u8,
    functions: Vec<FunctionState>,
}

/// Format version of the [`PciBus`]'s saved state.
pub const PCI_BUS_STATE_VERSION: u32 = 1;

impl SaveRestore for PciBus {
    fn state_version(&self) -> u32 {
        PCI_BUS_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let mut functions = Vec::new();
        for slot in &mut self.slots {
            if let Some(sr) = slot.inner.save_restore() {
                functions.push(FunctionState {
                    device: slot.device,
                    function: slot.function,
                    version: sr.state_version(),
                    bytes: sr.save_state(ctx)?,
                });
            }
        }
        save_restore::encode(&PciBusState {
            address: self.address,
            reset_control: self.reset_control,
            functions,
        })
    }

    /// Every function with state must be where the saved one was; each
    /// then checks its own state before it changes. The claims of every
    /// function are then moved to what the restored headers decode.
    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: PciBusState = save_restore::decode_version(version, PCI_BUS_STATE_VERSION, bytes)?;
        check(s.address & !0x80ff_fffc == 0, "pci config address")?;
        check(s.reset_control & !0x0a == 0, "pci reset control")?;
        let mut with_state = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.inner.save_restore().is_some() {
                with_state.push((i, slot.device, slot.function));
            }
        }
        if with_state.len() != s.functions.len()
            || with_state
                .iter()
                .zip(&s.functions)
                .any(|(&(_, d, f), saved)| d != saved.device || f != saved.function)
        {
            return Err(StateError::Mismatch {
                what: "pci functions",
            });
        }
        // Power-on work is replaced by the restored state.
        self.needs_power_on = false;
        self.regions_dirty = false;
        for (&(i, _, _), saved) in with_state.iter().zip(&s.functions) {
            if let Some(sr) = self.slots[i].inner.save_restore() {
                sr.restore_state(ctx, saved.version, &saved.bytes)?;
            }
        }
        self.address = s.address;
        self.reset_control = s.reset_control;
        for slot in &mut self.slots {
            for old in core::mem::take(&mut slot.claimed) {
                ctx.request(release_request(&old));
            }
        }
        for i in 0..self.slots.len() {
            self.sync_regions(ctx, i);
        }
        Ok(())
    }
}

/// Why a function could not be added to the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// Device number above 31 or function number above 7.
    BadAddress {
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
    /// Something already sits at that device/function.
    Occupied {
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::BadAddress { device, function } => {
                write!(f, "bad PCI address 00:{device:02x}.{function}")
            }
            PciError::Occupied { device, function } => {
                write!(
                    f,
                    "PCI address 00:{device:02x}.{function} is already in use"
                )
            }
        }
    }
}

struct Slot {
    device: u8,
    function: u8,
    inner: Box<dyn PciFunction>,
    /// Regions claimed for this function right now.
    claimed: Vec<PciRegion>,
}

/// PCI bus 0 behind configuration mechanism #1: owns its functions and routes
/// their BAR accesses. Claim [`PciBus::CONFIG_PORTS`] for it.
pub struct PciBus {
    address: u32,
    reset_control: u8,
    slots: Vec<Slot>,
    io_window: (u16, u16),
    mmio_window: (u64, u64),
    needs_power_on: bool,
    /// A function was handed out mutably: re-evaluate what every function
    /// decodes at the next call with a context.
    regions_dirty: bool,
}

impl fmt::Debug for PciBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciBus")
            .field("address", &self.address)
            .field("functions", &self.slots.len())
            .finish()
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// The ports the bus answers: 0xcf8-0xcff (with the reset control
    /// register at 0xcf9), as `(first, count)`.
    pub const CONFIG_PORTS: (u16, u16) = (CONFIG_ADDRESS_PORT, 8);

    /// A bus with I/O window 0x1000-0xffff and memory window
    /// 0xe000_0000-0xfebf_ffff.
    pub fn new() -> Self {
        Self::with_windows((0x1000, 0xffff), (0xe000_0000, 0xfec0_0000))
    }

    /// A bus that claims I/O BARs only inside ports `io.0 ..= io.1` and memory
    /// BARs only inside `[mmio.0, mmio.1)` (which must be MMIO holes in the
    /// VM's map). Fixed regions are claimed wherever they are.
    pub fn with_windows(io: (u16, u16), mmio: (u64, u64)) -> Self {
        Self {
            address: 0,
            reset_control: 0,
            slots: Vec::new(),
            io_window: io,
            mmio_window: mmio,
            needs_power_on: true,
            regions_dirty: false,
        }
    }

    /// Put `f` at `device`.`function` on bus 0.
    pub fn add(
        &mut self,
        device: u8,
        function: u8,
        f: Box<dyn PciFunction>,
    ) -> Result<(), PciError> {
        if device > 31 || function > 7 {
            return Err(PciError::BadAddress { device, function });
        }
        if self.slot_index(device, function).is_some() {
            return Err(PciError::Occupied { device, function });
        }
        self.slots.push(Slot {
            device,
            function,
            inner: f,
            claimed: Vec::new(),
        });
        self.needs_power_on = true;
        Ok(())
    }

    /// Append the doorbells of every function ([`PciFunction::doorbells`]).
    pub fn doorbells(&self, out: &mut Vec<Doorbell>) {
        for slot in &self.slots {
            slot.inner.doorbells(out);
        }
    }

    /// The function at `device`.`function`, as its concrete type.
    pub fn function<T: PciFunction>(&self, device: u8, function: u8) -> Option<&T> {
        let i = self.slot_index(device, function)?;
        let f: &dyn PciFunction = self.slots[i].inner.as_ref();
        (f as &dyn Any).downcast_ref::<T>()
    }

    /// The function at `device`.`function`, as its concrete type, mutably.
    /// Whatever the caller changes in its decoding (a BIOS-like setup done
    /// by the platform) takes effect at the bus's next call.
    pub fn function_mut<T: PciFunction>(&mut self, device: u8, function: u8) -> Option<&mut T> {
        let i = self.slot_index(device, function)?;
        self.regions_dirty = true;
        let f: &mut dyn PciFunction = self.slots[i].inner.as_mut();
        (f as &mut dyn Any).downcast_mut::<T>()
    }

    /// The regions routed to `device`.`function` right now.
    pub fn claimed_regions(&self, device: u8, function: u8) -> &[PciRegion] {
        match self.slot_index(device, function) {
            Some(i) => &self.slots[i].claimed,
            None => &[],
        }
    }

    fn slot_index(&self, device: u8, function: u8) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.device == device && s.function == function)
    }

    /// Run the power-on hooks and establish claims, once after build, reset
    /// or [`PciBus::add`], at the first call that has a context; re-evaluate
    /// claims after [`PciBus::function_mut`].
    fn ensure_powered(&mut self, ctx: &mut DeviceContext<'_>) {
        if !self.needs_power_on && !self.regions_dirty {
            return;
        }
        let power_on = core::mem::take(&mut self.needs_power_on);
        self.regions_dirty = false;
        for i in 0..self.slots.len() {
            if power_on {
                self.slots[i].inner.power_on(ctx);
            }
            self.sync_regions(ctx, i);
        }
    }

    fn in_window(&self, r: &PciRegion) -> bool {
        let Some(last) = r.len.checked_sub(1).and_then(|l| r.base.checked_add(l)) else {
            return false;
        };
        match (r.space, r.id) {
            (Space::Io, RegionId::Fixed(_)) => last <= 0xffff,
            (Space::Io, RegionId::Bar(_)) => {
                r.base >= u64::from(self.io_window.0) && last <= u64::from(self.io_window.1)
            }
            (Space::Memory, RegionId::Fixed(_)) => true,
            (Space::Io, RegionId::Rom) => false,
            (Space::Memory, RegionId::Bar(_) | RegionId::Rom) => {
                r.base >= self.mmio_window.0 && last < self.mmio_window.1
            }
        }
    }

    /// Recompute what function `i` decodes and move its claims to match.
    fn sync_regions(&mut self, ctx: &mut DeviceContext<'_>, i: usize) {
        let mut wanted = Vec::new();
        self.slots[i].inner.decoded_regions(&mut wanted);
        // Keep only regions in the windows, not overlapping each other or
        // another function's claims.
        let mut accepted: Vec<PciRegion> = Vec::with_capacity(wanted.len());
        for r in wanted {
            let clash = |o: &PciRegion| {
                o.space == r.space
                    && o.base < r.base.saturating_add(r.len)
                    && r.base < o.base.saturating_add(o.len)
            };
            let taken = accepted.iter().any(clash)
                || self
                    .slots
                    .iter()
                    .enumerate()
                    .any(|(j, s)| j != i && s.claimed.iter().any(clash));
            if self.in_window(&r) && !taken {
                accepted.push(r);
            }
        }
        let slot = &mut self.slots[i];
        if accepted == slot.claimed {
            return;
        }
        for old in slot.claimed.iter().filter(|o| !accepted.contains(o)) {
            ctx.request(release_request(old));
        }
        for new in accepted.iter().filter(|n| !slot.claimed.contains(n)) {
            ctx.request(claim_request(new));
        }
        slot.claimed = accepted;
        let Slot { inner, claimed, .. } = slot;
        inner.regions_changed(ctx, claimed);
    }

    /// The function and region that decode `addr` in `space`.
    fn route(&self, space: Space, addr: u64) -> Option<(usize, RegionId, u64)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            s.claimed
                .iter()
                .find(|r| r.space == space && addr >= r.base && addr - r.base < r.len)
                .map(|r| (i, r.id, addr - r.base))
        })
    }

    /// Target of the configuration data port at byte `lane` (0-3), if the
    /// address register is enabled and names an existing function.
    fn config_target(&self) -> Option<(usize, u8)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        if bus != 0 {
            return None;
        }
        let i = self.slot_index(device, function)?;
        Some((i, (self.address & 0xfc) as u8))
    }

    fn config_read(&mut self, ctx: &mut DeviceContext<'_>, lane: u8, data: &mut [u8]) {
        data.fill(0xff);
        let Some((i, reg)) = self.config_target() else {
            return;
        };
        // Only the bytes that fall inside the 0xcfc dword.
        let n = data.len().min(4 - usize::from(lane));
        let offset = reg + lane;
        let Some(part) = data.get_mut(..n) else {
            return;
        };
        self.slots[i].inner.config_read(ctx, offset, part);
        // Function 0 of a multi-function device reports it in the header
        // type register (0x0e, bit 7).
        let device = self.slots[i].device;
        let multi = self.slots[i].function == 0
            && self
                .slots
                .iter()
                .any(|s| s.device == device && s.function != 0);
        if multi && offset <= 0x0e && 0x0e < offset + n as u8 {
            if let Some(b) = part.get_mut(usize::from(0x0e - offset)) {
                *b |= 0x80;
            }
        }
    }

    fn config_write(&mut self, ctx: &mut DeviceContext<'_>, lane: u8, data: &[u8]) {
        let Some((i, reg)) = self.config_target() else {
            return;
        };
        let n = data.len().min(4 - usize::from(lane));
        let Some(part) = data.get(..n) else {
            return;
        };
        self.slots[i].inner.config_write(ctx, reg + lane, part);
        self.sync_regions(ctx, i);
    }
}

fn claim_request(r: &PciRegion) -> VmRequest {
    match r.space {
        // In range by construction: `in_window` keeps I/O regions below 0x10000.
        Space::Io => VmRequest::ClaimPorts {
            first: r.base as u16,
            count: r.len.min(0xffff) as u16,
        },
        Space::Memory => VmRequest::ClaimMmio {
            gpa: r.base,
            len: r.len,
        },
    }
}

fn release_request(r: &PciRegion) -> VmRequest {
    match r.space {
        Space::Io => VmRequest::ReleasePorts {
            first: r.base as u16,
            count: r.len.min(0xffff) as u16,
        },
        Space::Memory => VmRequest::ReleaseMmio {
            gpa: r.base,
            len: r.len,
        },
    }
}

fn le_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(data) {
        *d = *s;
    }
    u32::from_le_bytes(b)
}

impl PortIo for PciBus {
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        // The configuration ports are fixed; BARs are wherever the guest
        // put them: routed by absolute port, functions see offsets.
        let port = port.port();
        self.ensure_powered(ctx);
        match port {
            CONFIG_ADDRESS_PORT if data.len() == 4 => {
                data.copy_from_slice(&self.address.to_le_bytes())
            }
            RESET_CONTROL_PORT if data.len() == 1 => data[0] = self.reset_control,
            0xcfc..=0xcff => self.config_read(ctx, (port - CONFIG_DATA_PORT) as u8, data),
            _ => match self.route(Space::Io, u64::from(port)) {
                Some((i, id, off)) => self.slots[i].inner.io_read(ctx, id, off, data),
                None => data.fill(0xff),
            },
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        // The configuration ports are fixed; BARs are wherever the guest
        // put them: routed by absolute port, functions see offsets.
        let port = port.port();
        self.ensure_powered(ctx);
        match port {
            CONFIG_ADDRESS_PORT if data.len() == 4 => self.address = le_value(data) & 0x80ff_fffc,
            RESET_CONTROL_PORT if data.len() == 1 => {
                let v = data[0];
                // Bit 2 going 0 -> 1 resets the system (bit 1 selects hard
                // reset; both reset the VM here).
                if v & 0x4 != 0 && self.reset_control & 0x4 == 0 {
                    ctx.request(VmRequest::Reset);
                }
                self.reset_control = v & 0x0a;
            }
            0xcfc..=0xcff => self.config_write(ctx, (port - CONFIG_DATA_PORT) as u8, data),
            _ => {
                if let Some((i, id, off)) = self.route(Space::Io, u64::from(port)) {
                    self.slots[i].inner.io_write(ctx, id, off, data);
                }
            }
        }
        IoOutcome::Done
    }

    fn port_read_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        at: PortAddress,
        size: usize,
        data: &mut [u8],
    ) -> IoOutcome {
        // BARs are wherever the guest put them: routed by absolute port.
        let port = at.port();
        // Only a function's I/O BAR can hold a FIFO; the bus's own
        // registers go element by element.
        if !(0xcf8..=0xcff).contains(&port) {
            self.ensure_powered(ctx);
            match self.route(Space::Io, u64::from(port)) {
                Some((i, id, off)) => self.slots[i].inner.io_read_string(ctx, id, off, size, data),
                None => data.fill(0xff),
            }
            return IoOutcome::Done;
        }
        for element in data.chunks_mut(size.max(1)) {
            self.port_read(ctx, at, element);
        }
        IoOutcome::Done
    }
}

impl Mmio for PciBus {
    fn mmio_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let gpa = gpa.gpa();
        self.ensure_powered(ctx);
        match self.route(Space::Memory, gpa) {
            Some((i, id, off)) => self.slots[i].inner.mmio_read(ctx, id, off, data),
            None => data.fill(0xff),
        }
        IoOutcome::Done
    }

    fn mmio_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        let gpa = gpa.gpa();
        self.ensure_powered(ctx);
        if let Some((i, id, off)) = self.route(Space::Memory, gpa) {
            self.slots[i].inner.mmio_write(ctx, id, off, data);
        }
        IoOutcome::Done
    }
}

impl Timer for PciBus {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        self.ensure_powered(ctx);
        let mut next: Option<u64> = None;
        for s in &mut self.slots {
            if let Some(t) = s.inner.poll(ctx) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }
}

impl Device for PciBus {
    fn name(&self) -> &str {
        "pci"
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        Some(self)
    }
    fn reset(&mut self) {
        self.address = 0;
        self.reset_control = 0;
        for s in &mut self.slots {
            s.inner.reset();
        }
        // Claims are moved to match at the next call with a context.
        self.needs_power_on = true;
    }
    fn after_reset(&mut self, ctx: &mut DeviceContext<'_>) {
        // The host bridge's power-on memory map (BIOS ROM over the shadow
        // RAM) must be in place before the CPU fetches from F000:FFF0.
        self.ensure_powered(ctx);
    }
}
