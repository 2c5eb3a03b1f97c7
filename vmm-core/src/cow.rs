//! Copy-on-write RAM: many VMs share one frozen block of guest RAM until
//! they write.
//!
//! [`SharedRam`] is a block of host memory that no VM writes any more (the
//! RAM of a VM at the moment it was forked). A [`CowMemory`] is one VM's
//! view of it: every page reads from the shared block until the VM writes
//! it; the first write (a nested-paging write fault, or the emulator or a
//! device writing through [`crate::memory::GuestMemory`]) copies the page
//! into a page of the VM's own, which from then on is read and written
//! instead. Nested page tables map a shared page read-only at the shared
//! block's frame and an own page read-write at its own frame
//! ([`crate::memory::GuestMemory::page_frame`]), so reads of shared memory
//! cost no exits and each page costs one fault the first time it is
//! written.
//!
//! A VM's private memory is then the pages it wrote, one 4 KiB host page
//! each, plus a 4-byte index entry per page of the block.

use crate::host::{Host, HostMemory, HostPhysAddr};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// Bytes in a page.
pub const PAGE: usize = 0x1000;
/// "No page of its own" in [`CowMemory`]'s index.
const SHARED: u32 = u32::MAX;

/// A block of RAM frozen for sharing between the VMs forked from it; cheap
/// to clone (a reference count).
#[derive(Clone)]
pub struct SharedRam {
    mem: Arc<spin::Mutex<Box<dyn HostMemory>>>,
    len: usize,
}

impl SharedRam {
    /// Freeze `mem`: from now on nobody writes it.
    pub fn new(mem: Box<dyn HostMemory>) -> Self {
        let len = mem.as_slice().len();
        Self {
            mem: Arc::new(spin::Mutex::new(mem)),
            len,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many views share it (the VMs forked from it, while they live).
    pub fn sharers(&self) -> usize {
        Arc::strong_count(&self.mem)
    }

    /// A 64-bit fingerprint of the block's bytes (FNV-1a over its 8-byte
    /// words): two equal fingerprints taken at different times say that,
    /// short of a collision, nobody wrote the block in between (what a host
    /// checks to show that no clone's write reached its parent's RAM).
    pub fn fingerprint(&self) -> u64 {
        const PRIME: u64 = 0x0100_0000_01b3;
        let mem = self.mem.lock();
        let bytes = mem.as_slice();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(PRIME);
        }
        for &b in words.remainder() {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
        hash
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        let mem = self.mem.lock();
        if let Some(src) = mem.as_slice().get(offset..offset + buf.len()) {
            buf.copy_from_slice(src);
        }
    }

    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        self.mem.lock().host_phys(offset)
    }
}

/// Why a page could not be copied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CowError {
    /// The host had no page for the copy.
    OutOfMemory,
    /// The offset lies outside the block.
    OutOfRange,
}

/// One VM's copy-on-write view of a [`SharedRam`].
pub struct CowMemory {
    shared: SharedRam,
    host: Arc<dyn Host>,
    /// Per page of the block: the index in `pages` of its own copy, or
    /// `SHARED`.
    index: Vec<u32>,
    pages: Vec<Box<dyn HostMemory>>,
}

impl CowMemory {
    /// A view of `shared` whose copies come from `host`.
    pub fn new(shared: SharedRam, host: Arc<dyn Host>) -> Self {
        let pages = shared.len().div_ceil(PAGE);
        Self {
            shared,
            host,
            index: vec![SHARED; pages],
            pages: Vec::new(),
        }
    }

    /// The block's length in bytes.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    /// The pages this view copied (written since the fork).
    pub fn own_pages(&self) -> usize {
        self.pages.len()
    }

    /// Host bytes this view holds of its own: the copied pages and the
    /// index.
    pub fn private_bytes(&self) -> usize {
        self.pages.len() * PAGE + self.index.len() * core::mem::size_of::<u32>()
    }

    /// Whether the page holding `offset` is still the shared one.
    pub fn is_shared(&self, offset: usize) -> bool {
        self.index.get(offset / PAGE) == Some(&SHARED)
    }

    /// The frame behind `offset` and whether it is this view's own (so may
    /// be mapped writable): `None` outside the block or on a host without
    /// physical addresses.
    pub fn frame(&self, offset: usize) -> Option<(HostPhysAddr, bool)> {
        match *self.index.get(offset / PAGE)? {
            SHARED => self.shared.host_phys(offset).map(|p| (p, false)),
            own => self
                .pages
                .get(own as usize)?
                .host_phys(offset % PAGE)
                .map(|p| (p, true)),
        }
    }

    /// Copy the page holding `offset` if it is still shared; `Ok(true)` if
    /// it was copied now.
    pub fn copy_page(&mut self, offset: usize) -> Result<bool, CowError> {
        let page = offset / PAGE;
        match self.index.get(page) {
            None => return Err(CowError::OutOfRange),
            Some(&SHARED) => {}
            Some(_) => return Ok(false),
        }
        let own = u32::try_from(self.pages.len()).map_err(|_| CowError::OutOfMemory)?;
        let mut mem = self
            .host
            .alloc_memory(PAGE, PAGE)
            .map_err(|_| CowError::OutOfMemory)?;
        let start = page * PAGE;
        let n = PAGE.min(self.shared.len() - start);
        self.shared.read(start, &mut mem.as_mut_slice()[..n]);
        self.pages.push(mem);
        self.index[page] = own;
        Ok(true)
    }

    /// Read `buf.len()` bytes at `offset` (inside the block: the caller
    /// checked), page by page from the shared block or this view's copies.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done;
            let n = (PAGE - at % PAGE).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.index.get(at / PAGE) {
                Some(&SHARED) => self.shared.read(at, out),
                Some(&own) => {
                    if let Some(p) = self.pages.get(own as usize) {
                        out.copy_from_slice(&p.as_slice()[at % PAGE..at % PAGE + n]);
                    }
                }
                None => out.fill(0xff),
            }
            done += n;
        }
    }

    /// Write `data` at `offset` (inside the block: the caller checked),
    /// copying every shared page it touches first; the offsets of the pages
    /// copied are pushed on `copied`. On an error, pages before the one
    /// that could not be copied are written.
    pub fn write(
        &mut self,
        offset: usize,
        data: &[u8],
        copied: &mut Vec<usize>,
    ) -> Result<(), CowError> {
        let mut done = 0;
        while done < data.len() {
            let at = offset + done;
            let n = (PAGE - at % PAGE).min(data.len() - done);
            if self.copy_page(at)? {
                copied.push(at & !(PAGE - 1));
            }
            let own = self.index[at / PAGE] as usize;
            if let Some(p) = self.pages.get_mut(own) {
                p.as_mut_slice()[at % PAGE..at % PAGE + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// The shared block this view reads from.
    pub fn shared(&self) -> &SharedRam {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_host::TestHost;

    fn shared(len: usize) -> (Arc<dyn Host>, SharedRam) {
        let host: Arc<dyn Host> = Arc::new(TestHost::new());
        let mut mem = host.alloc_memory(len, PAGE).unwrap();
        for (i, b) in mem.as_mut_slice().iter_mut().enumerate() {
            *b = (i / PAGE) as u8;
        }
        (host, SharedRam::new(mem))
    }

    #[test]
    fn views_read_the_shared_block_until_they_write() {
        let (host, ram) = shared(4 * PAGE);
        let mut a = CowMemory::new(ram.clone(), host.clone());
        let b = CowMemory::new(ram.clone(), host);
        assert_eq!(ram.sharers(), 3);
        let mut copied = Vec::new();
        // A write across pages 1 and 2 copies both, in a only.
        a.write(2 * PAGE - 2, &[9, 9, 9, 9], &mut copied).unwrap();
        assert_eq!(copied, [PAGE, 2 * PAGE]);
        assert_eq!(a.own_pages(), 2);
        let mut buf = [0u8; 6];
        a.read(2 * PAGE - 3, &mut buf);
        assert_eq!(buf, [1, 9, 9, 9, 9, 2]);
        b.read(2 * PAGE - 3, &mut buf);
        assert_eq!(buf, [1, 1, 1, 2, 2, 2]);
        assert!(b.is_shared(PAGE) && !a.is_shared(PAGE) && a.is_shared(0));
        // Frames: a's copy is its own (writable), the rest the shared one.
        let (own, writable) = a.frame(PAGE + 5).unwrap();
        assert!(writable);
        let (base, w) = b.frame(PAGE + 5).unwrap();
        assert!(!w);
        assert_ne!(own, base);
        assert_eq!(
            a.frame(3 * PAGE).unwrap(),
            (ram.host_phys(3 * PAGE).unwrap(), false)
        );
        assert_eq!(a.frame(4 * PAGE), None);
        // A second write copies nothing more.
        assert_eq!(a.copy_page(PAGE), Ok(false));
        assert_eq!(a.copy_page(4 * PAGE), Err(CowError::OutOfRange));
        assert_eq!(a.private_bytes(), 2 * PAGE + 16);
        // The views' writes never reach the shared block.
        let before = ram.fingerprint();
        a.write(0, &[0xee; 64], &mut copied).unwrap();
        assert_eq!(ram.fingerprint(), before);
        let (_, other) = shared(5 * PAGE);
        assert_ne!(other.fingerprint(), before);
    }

    #[test]
    fn a_copy_the_host_cannot_back_is_refused() {
        let host: Arc<dyn Host> = Arc::new(TestHost::with_memory_limit(0));
        let mem: Box<dyn HostMemory> = Box::new(crate::test_host::VecMemory::new(2 * PAGE));
        let mut v = CowMemory::new(SharedRam::new(mem), host);
        let mut copied = Vec::new();
        assert_eq!(v.write(0, &[1], &mut copied), Err(CowError::OutOfMemory));
        let mut b = [7u8];
        v.read(0, &mut b);
        assert_eq!(b, [0], "nothing was written");
    }
}
