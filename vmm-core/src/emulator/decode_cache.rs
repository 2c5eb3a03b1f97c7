//! A vCPU's cache of decoded instructions: the few instructions that keep
//! exiting (the local APIC's EOI write, a driver's register accesses) are
//! decoded once, not at every exit.
//!
//! Decoding is a function of the mode's bitness, RIP and the instruction's
//! bytes alone (x86 decodes from the first byte on; what follows an
//! instruction does not change it), and the emulator still fetches the
//! bytes at CS:RIP through segmentation and paging at every exit. A cached
//! decode is reused only when those freshly fetched bytes begin with the
//! cached instruction's bytes, at the same RIP and bitness: code the guest
//! rewrote, remapped or moved is decoded again. A decode that failed is
//! not kept.

use super::decode::Decoded;

/// Instructions kept per vCPU: enough for the loops run-on emulates
/// (`crate::vcpu::run_on`) besides the instructions that keep exiting.
const ENTRIES: usize = 16;

const EMPTY: Option<Entry> = None;

/// A vCPU's cache of decoded instructions (see the module documentation);
/// a [`super::CpuState`] that keeps one across exits offers it through
/// [`super::CpuState::decode_cache`]. It holds no architectural state: two
/// caches always compare equal.
#[derive(Clone, Default)]
pub struct DecodeCache {
    entries: [Option<Entry>; ENTRIES],
    next: u8,
    hits: u64,
}

#[derive(Clone)]
struct Entry {
    bitness: u32,
    rip: u64,
    /// The instruction's bytes as a little-endian number (15 bytes at
    /// most, the rest zero), and how many there are: compared in one go.
    word: u128,
    len: usize,
    decoded: Decoded,
}

/// Up to 15 bytes as a little-endian number, the rest zero.
fn word_of(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = bytes.len().min(15);
    if let (Some(to), Some(from)) = (b.get_mut(..n), bytes.get(..n)) {
        to.copy_from_slice(from);
    }
    u128::from_le_bytes(b)
}

/// The low `len` bytes of a number (`len` at most 15).
fn low_bytes(word: u128, len: usize) -> u128 {
    word & ((1u128 << (8 * len.min(15))) - 1)
}

impl core::fmt::Debug for DecodeCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let held = self.entries.iter().flatten().count();
        f.debug_struct("DecodeCache")
            .field("held", &held)
            .field("hits", &self.hits)
            .finish()
    }
}

impl PartialEq for DecodeCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DecodeCache {}

impl DecodeCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            entries: [EMPTY; ENTRIES],
            next: 0,
            hits: 0,
        }
    }

    /// Decodes served from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Forget every instruction.
    pub fn clear(&mut self) {
        self.entries = [EMPTY; ENTRIES];
    }

    /// The instruction the first `have` bytes of `fetched` (the bytes at
    /// CS:RIP just fetched, as many as the page and the CS limit allow)
    /// begin with, if it was decoded before at this RIP and bitness.
    pub(crate) fn lookup(
        &mut self,
        bitness: u32,
        rip: u64,
        fetched: &[u8; 15],
        have: usize,
    ) -> Option<&Decoded> {
        let mut padded = [0u8; 16];
        if let Some(to) = padded.get_mut(..15) {
            to.copy_from_slice(fetched);
        }
        let word = u128::from_le_bytes(padded);
        // `fetched` begins with the entry's bytes: as many, and the same.
        let e = self.entries.iter().flatten().find(|e| {
            e.rip == rip
                && e.bitness == bitness
                && e.len <= have
                && low_bytes(word, e.len) == e.word
        })?;
        self.hits += 1;
        Some(&e.decoded)
    }

    /// Keep `decoded`, decoded at `rip` with `bitness`.
    pub(crate) fn insert(&mut self, bitness: u32, rip: u64, decoded: &Decoded) {
        if decoded.bytes.as_slice().is_empty() {
            return;
        }
        let at = usize::from(self.next) % ENTRIES;
        self.next = self.next.wrapping_add(1);
        if let Some(slot) = self.entries.get_mut(at) {
            let bytes = decoded.bytes.as_slice();
            *slot = Some(Entry {
                bitness,
                rip,
                word: word_of(bytes),
                len: bytes.len(),
                decoded: decoded.clone(),
            });
        }
    }
}
