//! What a passed-through device's model is made of: the host's access to
//! the real ports, the windows the guest sees them through, and the
//! per-guest monitor each device type supplies.

use crate::dma::DmaGuard;

/// The host's access to a physical device's ports (`in`/`out` on bare
/// metal; a fake register file in tests). `data` is 1, 2 or 4 bytes,
/// little-endian.
pub trait PhysicalPorts: Send {
    /// Read `data.len()` bytes from host port `port`.
    fn read(&mut self, port: u16, data: &mut [u8]);
    /// Write `data` to host port `port`.
    fn write(&mut self, port: u16, data: &[u8]);
}

/// A run of the device's ports: where the guest sees them and where they
/// are on the host. Only identity windows (`guest == host`) can be
/// unhooked: the I/O permission map lets the guest's own port number
/// through. Remapped windows always exit and are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortWindow {
    /// First port as the guest sees it.
    pub guest: u16,
    /// First port on the host.
    pub host: u16,
    /// Number of ports (non-zero; the window must not wrap past 0xffff).
    pub count: u16,
}

impl PortWindow {
    /// A window the guest sees at the device's real address.
    pub const fn identity(first: u16, count: u16) -> Self {
        Self {
            guest: first,
            host: first,
            count,
        }
    }

    /// Whether the window is well formed (non-empty, not wrapping).
    pub fn is_valid(&self) -> bool {
        self.count > 0
            && u32::from(self.guest) + u32::from(self.count) <= 0x1_0000
            && u32::from(self.host) + u32::from(self.count) <= 0x1_0000
    }

    /// Whether the guest port `port` lies in the window.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.guest && u32::from(port) < u32::from(self.guest) + u32::from(self.count)
    }

    /// The host port behind guest port `port`.
    pub fn host_port(&self, port: u16) -> Option<u16> {
        if self.contains(port) {
            self.host.checked_add(port - self.guest)
        } else {
            None
        }
    }

    /// Whether the guest sees the ports at their real address.
    pub fn is_identity(&self) -> bool {
        self.guest == self.host
    }

    /// The guest ports of the window.
    pub fn guest_ports(&self) -> impl Iterator<Item = u16> {
        let first = u32::from(self.guest);
        let end = (first + u32::from(self.count)).min(0x1_0000);
        (first..end).map(|p| p as u16)
    }
}

/// The physical device as a monitor reaches it: by guest port numbers,
/// translated through the device's windows.
pub struct HwPorts<'a> {
    ports: &'a mut dyn PhysicalPorts,
    windows: &'a [PortWindow],
}

impl<'a> HwPorts<'a> {
    /// The device behind `ports`, seen through `windows`.
    pub fn new(ports: &'a mut dyn PhysicalPorts, windows: &'a [PortWindow]) -> Self {
        Self { ports, windows }
    }

    /// The host port behind an access of `len` bytes at guest port `port`,
    /// if the whole access lies in one window.
    fn host_port(&self, port: u16, len: usize) -> Option<u16> {
        let last = port.checked_add(u16::try_from(len.max(1) - 1).ok()?)?;
        self.windows
            .iter()
            .find(|w| w.contains(port) && w.contains(last))
            .and_then(|w| w.host_port(port))
    }

    /// Read the hardware behind guest port `port`. An access not entirely
    /// inside one window reads all-ones and touches nothing.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match self.host_port(port, data.len()) {
            Some(p) => self.ports.read(p, data),
            None => data.fill(0xff),
        }
    }

    /// Write the hardware behind guest port `port`. An access not entirely
    /// inside one window is dropped.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        if let Some(p) = self.host_port(port, data.len()) {
            self.ports.write(p, data);
        }
    }

    /// Read one byte.
    pub fn read_u8(&mut self, port: u16) -> u8 {
        let mut b = [0u8; 1];
        self.read(port, &mut b);
        b[0]
    }

    /// Write one byte.
    pub fn write_u8(&mut self, port: u16, value: u8) {
        self.write(port, &[value]);
    }

    /// Write a 16-bit value.
    pub fn write_u16(&mut self, port: u16, value: u16) {
        self.write(port, &value.to_le_bytes());
    }

    /// Write a 32-bit value.
    pub fn write_u32(&mut self, port: u16, value: u32) {
        self.write(port, &value.to_le_bytes());
    }
}

/// What a monitor gets for a hooked access: the hardware, and this guest's
/// memory through the DMA guard (to read descriptor tables and to turn an
/// approved plan into host-physical addresses).
pub struct MonitorIo<'a, 'm> {
    /// The physical device.
    pub hw: HwPorts<'a>,
    /// This guest's memory.
    pub dma: &'a DmaGuard<'m>,
}

/// One guest's model of a passed-through device: the state machine of the
/// device as this guest drives it, its checking function, and the hooked
/// I/O list that goes with the state. Each device type supplies one
/// (`vmm_devices::dmm` has the NE2000's and the PIIX IDE bus master's).
///
/// A monitor is only called while its guest holds the device.
pub trait Monitor: Send + 'static {
    /// Whether guest port `port` is on the hooked I/O list now. Ports of the
    /// device's windows that are not hooked are unhooked: the guest reaches
    /// them without an exit.
    fn is_hooked(&self, port: u16) -> bool;

    /// Whether the device, as this guest left it, can be handed to another
    /// guest (no transfer in flight, no interrupt pending, nothing
    /// buffered that belongs to this guest).
    fn is_reusable(&self) -> bool;

    /// The guest reads a hooked port.
    fn read(&mut self, io: &mut MonitorIo<'_, '_>, port: u16, data: &mut [u8]);

    /// The guest writes a hooked port. Anything the checking function
    /// denies must not reach the hardware.
    fn write(&mut self, io: &mut MonitorIo<'_, '_>, port: u16, data: &[u8]);

    /// This guest takes the device. `handoff` is true when another guest
    /// held it before: clear what it left in the device and put back this
    /// guest's configuration.
    fn acquire(&mut self, hw: &mut HwPorts<'_>, handoff: bool);

    /// The physical device raised its interrupt while this guest holds it;
    /// returns whether to deliver it (an edge on the guest's line).
    fn interrupt(&mut self, hw: &mut HwPorts<'_>) -> bool;

    /// Whether an interrupt delivered to this guest is not yet acknowledged
    /// (the host keeps the physical line masked meanwhile).
    fn irq_pending(&self) -> bool;

    /// Transitions denied so far.
    fn denials(&self) -> u64;
}
