//! Shadow paging over RAM shared copy-on-write (`crate::cow`): a clone's
//! pages are read from frames every clone of the same parent maps, until
//! the clone writes one and gets a copy of its own.
//!
//! - A fill for a read or a fetch maps a shared frame **read-only** and
//!   records the leaf in the coherence's shared reverse map.
//! - A fill for a write copies the page first
//!   ([`GuestMemory::copy_on_write`]) and maps the copy writable.
//! - Any other copy (the emulator writing the page, a device's DMA, a
//!   walk setting accessed and dirty bits in a page table that lives in
//!   shared RAM) is logged by the memory map
//!   ([`GuestMemory::copied_pages_since`]); before the next entry
//!   ([`ShadowPager::ensure`]) and at every fault the pager takes away
//!   every leaf still mapping the shared frame of a copied page, in every
//!   tree, so no vCPU goes on reading the frame the VM no longer uses.
//!
//! No shadow leaf ever maps a shared frame writable, so a write never
//! reaches another VM's memory.
//!
//! With the rest of the pager:
//! - A leaf page table goes out of sync (`unsync`) only once it is the
//!   VM's own: the write fault that would let it copies a shared page
//!   first, and a frame still shared is never let out of sync (its write
//!   is emulated). A frame out of sync is therefore never copied again
//!   (only shared pages are); and its copy, like every dependency record,
//!   is kept by guest-physical address, which a copy leaves unchanged
//!   (the bytes are the same at the copy), so nothing needs to follow the
//!   new frame but the leaves, which this module takes away (and were an
//!   out-of-sync frame ever copied, it is brought back in sync first).
//! - Leaves inside a subtree shared between 4-level trees (`subtrees`)
//!   are recorded under the subtree's serial number, and its slot notes
//!   the frame (for its eviction), so the reverse map finds and removes
//!   them there, for every tree that links it.
//! - RAM that becomes shared moves the memory map's generation: the next
//!   entry flushes every tree, out-of-sync tables included.

use super::error::ShadowError;
use super::ShadowPager;
use crate::memory::{BlockId, GuestMemory};

impl ShadowPager {
    /// Take away the leaves on the shared frames of pages the VM copied
    /// since the last call (or since this pager first saw `memory`).
    pub(super) fn sync_copied(&mut self, memory: &GuestMemory) {
        let now = memory.copied_pages();
        if let Some(seen) = self.copied_seen.filter(|seen| *seen != now) {
            for gpa in memory.copied_pages_since(seen) {
                let mut leaves = self.leaf_list();
                self.coherence.take_shared(gpa, &mut leaves);
                for &leaf in &leaves {
                    self.zap(leaf);
                }
                self.give_leaf_list(leaves);
                // An out-of-sync table is the VM's own and so never
                // copied; should one be, it is brought back in sync (and
                // its writable leaves taken) rather than left writable on
                // a frame the VM no longer uses.
                if self.unsync.contains(gpa) {
                    self.resync_frame(memory, gpa, false);
                }
            }
        }
        self.copied_seen = Some(now);
    }

    /// The frame to map for the page at byte `offset` of `block` (the
    /// guest page `page`), and whether it is the VM's own (may be mapped
    /// writable). For a `write` to a page still shared, the page is copied
    /// first and the copy is returned.
    pub(super) fn frame_for(
        &mut self,
        memory: &mut GuestMemory,
        block: BlockId,
        offset: u64,
        page: u64,
        write: bool,
    ) -> Result<(u64, bool), ShadowError> {
        let (frame, own) = memory
            .page_frame(block, offset)
            .ok_or(ShadowError::NoHostPhys)?;
        if own || !write {
            return Ok((frame.0, own));
        }
        memory
            .copy_on_write(page)
            .map_err(|_| ShadowError::CopyOnWrite { gpa: page })?;
        self.stats.cow_copies += 1;
        self.sync_copied(memory);
        let (frame, own) = memory
            .page_frame(block, offset)
            .ok_or(ShadowError::NoHostPhys)?;
        Ok((frame.0, own))
    }
}
