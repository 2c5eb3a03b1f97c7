//! MSI-X (PCI Local Bus 3.0, 6.8.2): the capability in configuration space,
//! the vector table and the pending bit array (PBA) in a memory BAR, and
//! the delivery of a vector's message to an [`MsiTarget`].
//!
//! A function embeds an [`Msix`], writes its capability with
//! [`Msix::install`], routes accesses to the table and PBA to
//! [`Msix::table_read`]/[`Msix::table_write`]/[`Msix::pba_read`], calls
//! [`Msix::config_written`] after every configuration write, and asks
//! [`Msix::notify`] to signal a vector. A vector that is masked (its own
//! mask bit, or the function mask) is held pending in the PBA and sent when
//! unmasked. Every entry is masked at power-on. Table accesses must be
//! dword or aligned qword accesses; others read all-ones and are dropped,
//! as the specification leaves them undefined. Nothing a guest writes can
//! make the function deliver anything but a memory write to the target,
//! which decides what the address means.

use super::ConfigSpace;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Bytes of the capability.
pub const CAP_LEN: u8 = 12;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked.
pub const VECTOR_MASKED: u32 = 1;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// The most vectors a function has.
pub const MAX_VECTORS: u16 = 2048;

/// One message: a dword write of `data` at `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (0xFEEx_xxxx for a local APIC on x86).
    pub address: u64,
    /// Data.
    pub data: u32,
}

/// Where a function's MSIs go: the platform's interrupt controller.
pub trait MsiTarget: Send + Sync {
    /// Deliver `msg`. A message the target cannot take (an address that
    /// names no interrupt controller) is dropped.
    fn send(&self, msg: MsiMessage);
}

/// An MSI target that drops every message (a function whose MSIs are not
/// wired).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMsi;

impl MsiTarget for NoMsi {
    fn send(&self, _msg: MsiMessage) {}
}

/// The MSI-X state of one function.
pub struct Msix {
    /// Per vector: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    pending: Vec<bool>,
    /// Offset of the capability in configuration space (0 before install).
    cap: u8,
    enabled: bool,
    function_mask: bool,
    target: Arc<dyn MsiTarget>,
}

impl core::fmt::Debug for Msix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.table.len())
            .field("enabled", &self.enabled)
            .field("function_mask", &self.function_mask)
            .finish()
    }
}

impl Msix {
    /// `vectors` vectors (1 to [`MAX_VECTORS`]) delivering to `target`.
    pub fn new(vectors: u16, target: Arc<dyn MsiTarget>) -> Self {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        Self {
            table: vec![[0, 0, 0, VECTOR_MASKED]; n],
            pending: vec![false; n],
            cap: 0,
            enabled: false,
            function_mask: false,
            target,
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.table.len() as u16
    }

    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64 * ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_len(&self) -> u64 {
        self.table.len().div_ceil(64) as u64 * 8
    }

    /// Whether MSI-X is enabled (INTx is then not used).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Write the capability at `at` (linked to `next`), with the table at
    /// `table_offset` and the PBA at `pba_offset` (8-byte aligned) in BAR
    /// `bar`.
    pub fn install(
        &mut self,
        config: &mut ConfigSpace,
        at: u8,
        next: u8,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) {
        self.cap = at;
        config.set_u8(at, CAP_ID_MSIX);
        config.set_u8(at + 1, next);
        config.set_u16(at + 2, self.vectors() - 1);
        config.set_write_mask(at + 2, 2, u32::from(CONTROL_ENABLE | CONTROL_FUNCTION_MASK));
        config.set_u32(at + 4, (table_offset & !7) | u32::from(bar & 7));
        config.set_u32(at + 8, (pba_offset & !7) | u32::from(bar & 7));
        config.snapshot_power_on();
    }

    /// Follow the message control register after a configuration write:
    /// vectors unmasked by it send what they held pending.
    pub fn config_written(&mut self, config: &ConfigSpace) {
        if self.cap == 0 {
            return;
        }
        let control = config.read_u16(self.cap + 2);
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_mask = control & CONTROL_FUNCTION_MASK != 0;
        for v in 0..self.table.len() {
            self.deliver_pending(v);
        }
    }

    fn masked(&self, v: usize) -> bool {
        self.function_mask || self.table.get(v).is_none_or(|e| e[3] & VECTOR_MASKED != 0)
    }

    fn deliver_pending(&mut self, v: usize) {
        if self.enabled && self.pending.get(v) == Some(&true) && !self.masked(v) {
            self.pending[v] = false;
            self.send(v);
        }
    }

    fn send(&self, v: usize) {
        if let Some(e) = self.table.get(v) {
            self.target.send(MsiMessage {
                address: u64::from(e[1]) << 32 | u64::from(e[0]),
                data: e[2],
            });
        }
    }

    /// Signal `vector`: sent now, or held pending while masked. Returns
    /// false if MSI-X is disabled or there is no such vector (the caller
    /// then has nothing to send it with).
    pub fn notify(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.table.len() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.send(v);
        }
        true
    }

    /// The guest reads the table at `offset`.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some((v, word)) = self.table_index(offset, data.len()) else {
            return;
        };
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            if let Some(w) = self.table.get(v).and_then(|e| e.get(word + i)) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
        }
    }

    /// The guest writes the table at `offset`.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let Some((v, word)) = self.table_index(offset, data.len()) else {
            return;
        };
        for (i, chunk) in data.chunks(4).enumerate() {
            let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if let Some(slot) = self.table.get_mut(v).and_then(|e| e.get_mut(word + i)) {
                *slot = if word + i == 3 { w & VECTOR_MASKED } else { w };
            }
        }
        self.deliver_pending(v);
    }

    /// Entry and dword of an access of `len` bytes at `offset`, if it is a
    /// dword or an aligned qword inside the table.
    fn table_index(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let aligned = matches!(len, 4 if offset.is_multiple_of(4))
            || matches!(len, 8 if offset.is_multiple_of(8));
        if !aligned || offset + len as u64 > self.table_len() {
            return None;
        }
        Some((
            (offset / ENTRY_SIZE) as usize,
            (offset % ENTRY_SIZE / 4) as usize,
        ))
    }

    /// The guest reads the PBA at `offset` (read-only; writes are dropped).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let byte = offset.saturating_add(i as u64);
            *d = (0..8)
                .filter(|bit| {
                    let v = byte.saturating_mul(8).saturating_add(*bit);
                    usize::try_from(v).ok().and_then(|v| self.pending.get(v)) == Some(&true)
                })
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }

    /// Whether `vector` is pending (for tests).
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending.get(usize::from(vector)) == Some(&true)
    }

    /// Back to power-on: every vector masked, nothing pending, disabled.
    /// (The capability's control register is reset with the header.)
    pub fn reset(&mut self) {
        self.table
            .iter_mut()
            .for_each(|e| *e = [0, 0, 0, VECTOR_MASKED]);
        self.pending.iter_mut().for_each(|p| *p = false);
        self.enabled = false;
        self.function_mask = false;
    }

    /// The table and pending bits, for a snapshot.
    pub fn save(&self) -> (Vec<[u32; 4]>, Vec<bool>) {
        (self.table.clone(), self.pending.clone())
    }

    /// Restore what [`Msix::save`] gave; refused, changing nothing, unless
    /// the sizes are this function's. Call [`Msix::config_written`] with the
    /// restored header afterwards.
    pub fn restore(
        &mut self,
        table: &[[u32; 4]],
        pending: &[bool],
    ) -> Result<(), vmm_core::device::StateError> {
        if table.len() != self.table.len() || pending.len() != self.pending.len() {
            return Err(vmm_core::device::StateError::Mismatch {
                what: "MSI-X vectors",
            });
        }
        self.table = table
            .iter()
            .map(|e| [e[0], e[1], e[2], e[3] & VECTOR_MASKED])
            .collect();
        self.pending = pending.to_vec();
        Ok(())
    }
}
