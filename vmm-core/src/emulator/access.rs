//! The path of every guest access the emulator makes: segmentation (base,
//! limit, rights, canonical form), alignment checking, paging through the
//! shared walker, then the physical access on the bus, split at page
//! boundaries with both halves translated before either is touched.

use super::cpu::{BusError, CpuMode, CpuState, GuestBus, Segment, SegmentRegister, RFLAGS_AC};
use super::error::{EmulateError, Exception};
use crate::paging::{
    Access, AccessKind, ControlRegisters, PageTableMemory, PagingMode, WalkError, Walker, CR0_AM,
    CR4_LA57, PAGE_SIZE,
};

/// The page tables, read and updated through the bus.
struct BusTables<'b, B: GuestBus>(&'b mut B);

impl<B: GuestBus> PageTableMemory for BusTables<'_, B> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.0.read_physical(gpa, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        self.0.read_u64_physical(gpa).ok()
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> bool {
        self.0.write_physical(gpa, &value.to_le_bytes()).is_ok()
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        self.0.write_physical(gpa, &value.to_le_bytes()).is_ok()
    }
}

/// The guest-physical location of an access: one piece, or two when it
/// crosses a page boundary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PhysRange {
    first: u64,
    first_len: usize,
    second: u64,
    len: usize,
}

impl PhysRange {
    /// The pieces as (gpa, start, end) within the access.
    fn pieces(&self) -> [(u64, usize, usize); 2] {
        let first_len = self.first_len.min(self.len);
        [
            (self.first, 0, first_len),
            (self.second, first_len, self.len),
        ]
    }

    /// The whole access lies in one page.
    pub(crate) fn single(&self) -> Option<u64> {
        (self.first_len >= self.len).then_some(self.first)
    }
}

/// One instruction's view of the vCPU and the machine.
pub(crate) struct Context<'a, S: CpuState, B: GuestBus> {
    pub state: &'a mut S,
    pub bus: &'a mut B,
    pub mode: CpuMode,
    pub control: ControlRegisters,
    pub cpl: u8,
    /// Where a control transfer sends RIP when the instruction retires
    /// (`None`: past the instruction).
    pub branch: Option<u64>,
    /// The model-dependent instructions the guest's CPU has.
    pub instructions: super::OptionalInstructions,
    /// The guest's data breakpoints.
    pub breakpoints: super::Breakpoints,
    /// DR6.B0-B3 of the data breakpoints this instruction's accesses hit.
    pub breakpoint_hits: u64,
    /// The instruction loaded SS with MOV or POP (an interrupt shadow).
    pub mov_ss_shadow: bool,
    /// Operand `n` as already worked out for an access hint (the
    /// instruction's only memory operand), so that it is not decoded
    /// again.
    pub operand_memo: Option<(u32, super::operand::Operand)>,
    walker: Walker,
    /// Translations made during this instruction (a REP instruction walks
    /// each page once, as a hardware TLB would).
    tlb: [Option<TlbEntry>; TLB_ENTRIES],
    tlb_next: usize,
}

const TLB_ENTRIES: usize = 4;

/// A cached translation: linear page, physical page, and the access it
/// was made for (a write translation also serves reads; dirty bits need a
/// write walk).
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    page: u64,
    frame: u64,
    kind: AccessKind,
}

impl<'a, S: CpuState, B: GuestBus> Context<'a, S, B> {
    pub fn new(state: &'a mut S, bus: &'a mut B, max_phys_bits: u8) -> Self {
        let control = state.control();
        let cs = state.segment(Segment::Cs);
        let mode = CpuMode::of(&control, state.rflags(), &cs);
        let cpl = state.cpl() & 3;
        let walker = Walker {
            control,
            max_phys_bits,
            pkru: state.pkru(),
        };
        Self {
            state,
            bus,
            mode,
            control,
            cpl,
            branch: None,
            instructions: super::OptionalInstructions::ALL,
            breakpoints: super::Breakpoints::NONE,
            breakpoint_hits: 0,
            mov_ss_shadow: false,
            operand_memo: None,
            walker,
            tlb: [None; TLB_ENTRIES],
            tlb_next: 0,
        }
    }

    fn segment_fault(seg: Segment) -> Exception {
        if seg == Segment::Ss {
            Exception::StackFault(0)
        } else {
            Exception::GeneralProtection(0)
        }
    }

    /// Whether `la` is canonical for the current paging mode.
    fn canonical(&self, la: u64) -> bool {
        let bits = if self.control.cr4 & CR4_LA57 != 0 {
            57
        } else {
            48
        };
        let shift = 64 - bits;
        ((la << shift) as i64 >> shift) as u64 == la
    }

    /// The linear address of `size` bytes at `seg:offset`, after the
    /// segment checks of the current mode. `offset` is already truncated to
    /// the address size.
    pub fn linear(
        &self,
        seg: Segment,
        offset: u64,
        size: usize,
        kind: AccessKind,
    ) -> Result<u64, Exception> {
        let sr = self.state.segment(seg);
        let last_off = (size as u64).saturating_sub(1);
        if self.mode == CpuMode::Long64 {
            let base = if matches!(seg, Segment::Fs | Segment::Gs) {
                sr.base
            } else {
                0
            };
            let la = base.wrapping_add(offset);
            let last = la.wrapping_add(last_off);
            if !self.canonical(la) || !self.canonical(last) {
                return Err(Self::segment_fault(seg));
            }
            return Ok(la);
        }
        self.check_segment(seg, &sr, offset, last_off, kind)?;
        Ok(sr.base.wrapping_add(offset) & 0xffff_ffff)
    }

    fn check_segment(
        &self,
        seg: Segment,
        sr: &SegmentRegister,
        offset: u64,
        last_off: u64,
        kind: AccessKind,
    ) -> Result<(), Exception> {
        let fault = Self::segment_fault(seg);
        let last = offset.checked_add(last_off).ok_or(fault)?;
        let ty = sr.segment_type();
        if self.mode.protected() {
            if !sr.present() || !sr.is_code_or_data() {
                return Err(fault);
            }
            match kind {
                AccessKind::Write if sr.is_code() || ty & 2 == 0 => return Err(fault),
                AccessKind::Read if sr.is_code() && ty & 2 == 0 => return Err(fault),
                _ => {}
            }
            if !sr.is_code() && ty & 4 != 0 {
                // Expand-down: valid offsets lie above the limit.
                let upper = if sr.default_big() {
                    0xffff_ffff
                } else {
                    0xffff
                };
                if offset <= u64::from(sr.limit) || last > upper {
                    return Err(fault);
                }
                return Ok(());
            }
        }
        if last > u64::from(sr.limit) {
            return Err(fault);
        }
        Ok(())
    }

    /// The guest's MAXPHYADDR.
    pub fn max_phys_bits(&self) -> u8 {
        self.walker.max_phys_bits
    }

    /// Take the page of `la` to be mapped to the frame of `gpa` for
    /// accesses of `kind` (a write translation also serves reads) for the
    /// rest of this instruction, as if a walk had found it: a translation
    /// the hardware reported with the exit. Nothing changes with paging
    /// off, where no walk happens.
    pub fn seed_translation(&mut self, la: u64, gpa: u64, kind: AccessKind) {
        if self.walker.mode() == PagingMode::Disabled || kind == AccessKind::Execute {
            return;
        }
        let entry = TlbEntry {
            page: la >> 12,
            frame: gpa & !(PAGE_SIZE - 1),
            kind,
        };
        if let Some(slot) = self.tlb.get_mut(self.tlb_next % TLB_ENTRIES) {
            *slot = Some(entry);
        }
        self.tlb_next = self.tlb_next.wrapping_add(1);
    }

    /// Translate a linear address; page faults become guest exceptions.
    #[inline]
    fn translate(&mut self, la: u64, kind: AccessKind) -> Result<u64, EmulateError> {
        if self.walker.mode() == PagingMode::Disabled {
            return Ok(la);
        }
        let page = la >> 12;
        let offset = la & (PAGE_SIZE - 1);
        let hit = self.tlb.iter().flatten().find(|e| {
            e.page == page
                && (e.kind == kind || (kind == AccessKind::Read && e.kind == AccessKind::Write))
        });
        if let Some(e) = hit {
            return Ok(e.frame | offset);
        }
        self.translate_missed(la, kind)
    }

    /// [`Context::translate`] for a page not in this instruction's TLB:
    /// the vCPU's translation cache, else a walk.
    fn translate_missed(&mut self, la: u64, kind: AccessKind) -> Result<u64, EmulateError> {
        let access = self.access_of(kind);
        if let Some(cache) = self.state.translation_cache() {
            if let Some(gpa) = cache.lookup(self.bus, &self.walker, access, la) {
                self.remember(la >> 12, gpa, kind);
                return Ok(gpa);
            }
        }
        self.walk(la, kind, access)
    }

    /// The paging checks of an explicit access of `kind` by this
    /// instruction.
    #[inline]
    fn access_of(&self, kind: AccessKind) -> Access {
        Access {
            kind,
            cpl: self.cpl,
            implicit_supervisor: false,
            ac: self.state.rflags() & RFLAGS_AC != 0,
        }
    }

    /// Walk the page tables for a page neither this instruction's TLB
    /// nor the vCPU's translation cache holds; the walk is kept in both.
    fn walk(&mut self, la: u64, kind: AccessKind, access: Access) -> Result<u64, EmulateError> {
        let walker = &self.walker;
        let walked = match self.state.translation_cache() {
            Some(cache) => walker
                .translate_traced(&mut BusTables(self.bus), la, access)
                .map(|(t, trace)| {
                    cache.insert(walker, access, la, t.gpa, &trace);
                    t.gpa
                }),
            None => walker
                .translate(&mut BusTables(self.bus), la, access)
                .map(|t| t.gpa),
        };
        match walked {
            Ok(gpa) => {
                self.remember(la >> 12, gpa, kind);
                Ok(gpa)
            }
            Err(WalkError::PageFault(pf)) => Err(Exception::PageFault(pf).into()),
            Err(WalkError::TableUnreachable { gpa }) => Err(BusError::Memory { gpa }.into()),
        }
    }

    /// Keep linear page `page` mapped to the frame of `gpa` for accesses
    /// of `kind` in this instruction's TLB.
    #[inline]
    fn remember(&mut self, page: u64, gpa: u64, kind: AccessKind) {
        let frame = gpa & !(PAGE_SIZE - 1);
        if let Some(slot) = self.tlb.get_mut(self.tlb_next % TLB_ENTRIES) {
            *slot = Some(TlbEntry { page, frame, kind });
        }
        self.tlb_next = self.tlb_next.wrapping_add(1);
    }

    /// Fetch `buf.len()` code bytes at linear `la`, all in one page: what
    /// [`Context::translate_range`] for execution and then
    /// [`Context::bus_read`] do, in the same order and with the same
    /// faults, except that a page this instruction's TLB does not hold
    /// but the vCPU's translation cache does has its walk's entries
    /// checked and its bytes read in one go
    /// ([`TranslationCache::lookup_then_read`](super::translation_cache::TranslationCache::lookup_then_read)).
    #[inline]
    pub fn fetch_in_page(&mut self, la: u64, buf: &mut [u8]) -> Result<(), EmulateError> {
        let kind = AccessKind::Execute;
        let in_page = (la & (PAGE_SIZE - 1)) + buf.len() as u64 <= PAGE_SIZE;
        if in_page && !buf.is_empty() && self.walker.mode() != PagingMode::Disabled {
            let page = la >> 12;
            let tlb_miss = !self
                .tlb
                .iter()
                .flatten()
                .any(|e| e.page == page && e.kind == kind);
            if tlb_miss {
                let access = self.access_of(kind);
                let read = self.state.translation_cache().and_then(|cache| {
                    cache.lookup_then_read(self.bus, &self.walker, access, la, buf)
                });
                let gpa = match read {
                    Some(Ok(gpa)) => {
                        self.remember(page, gpa, kind);
                        return Ok(());
                    }
                    // The instruction stops here: its TLB is not used again.
                    Some(Err(e)) => return Err(e.into()),
                    // No cached walk holds (a stale one is gone): walk,
                    // then read as `bus_read` does an access in one piece.
                    None => self.walk(la, kind, access)?,
                };
                return Ok(self.bus.read_physical(gpa, buf)?);
            }
        }
        let range = self.translate_range(la, buf.len(), kind)?;
        self.bus_read(&range, buf)
    }

    /// The guest-physical address of linear `at` for an implicit
    /// supervisor access (a descriptor table): paging checks as at CPL 0
    /// whatever the CPL, not through this instruction's TLB.
    fn system_gpa(&mut self, at: u64, kind: AccessKind) -> Result<u64, EmulateError> {
        if self.walker.mode() == PagingMode::Disabled {
            return Ok(at);
        }
        let access = Access {
            kind,
            cpl: self.cpl,
            implicit_supervisor: true,
            ac: false,
        };
        match self.walker.translate(&mut BusTables(self.bus), at, access) {
            Ok(t) => Ok(t.gpa),
            Err(WalkError::PageFault(pf)) => Err(Exception::PageFault(pf).into()),
            Err(WalkError::TableUnreachable { gpa }) => Err(BusError::Memory { gpa }.into()),
        }
    }

    /// The pieces of `len` bytes at linear `la`, split at page boundaries:
    /// (linear address, start, end) within the access.
    fn system_pieces(&self, la: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let long = self.mode == CpuMode::Long64;
        let mut done = 0;
        core::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = la.wrapping_add(done as u64);
            let at = if long { at } else { at & 0xffff_ffff };
            let in_page = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(len - done);
            let piece = (at, done, done + n);
            done += n;
            Some(piece)
        })
    }

    /// Read `buf.len()` bytes at linear `la` as an implicit supervisor
    /// access (a descriptor table): paging checks as at CPL 0 whatever the
    /// CPL, split at a page boundary, not through this instruction's TLB.
    pub fn read_system(&mut self, la: u64, buf: &mut [u8]) -> Result<(), EmulateError> {
        let pieces: [Option<(u64, usize, usize)>; 2] = {
            let mut it = self.system_pieces(la, buf.len());
            [it.next(), it.next()]
        };
        for (at, start, end) in pieces.into_iter().flatten() {
            let gpa = self.system_gpa(at, AccessKind::Read)?;
            if let Some(part) = buf.get_mut(start..end) {
                self.bus.read_physical(gpa, part)?;
            }
        }
        Ok(())
    }

    /// Write `data` at linear `la` as an implicit supervisor access (the
    /// accessed bit of a descriptor), translated like [`Self::read_system`]
    /// but for writing; both pages are translated before either is written.
    pub fn write_system(&mut self, la: u64, data: &[u8]) -> Result<(), EmulateError> {
        let pieces: [Option<(u64, usize, usize)>; 2] = {
            let mut it = self.system_pieces(la, data.len());
            [it.next(), it.next()]
        };
        let mut gpas = [None, None];
        for (slot, piece) in gpas.iter_mut().zip(pieces.iter()) {
            if let Some((at, start, end)) = piece {
                *slot = Some((self.system_gpa(*at, AccessKind::Write)?, *start, *end));
            }
        }
        for (gpa, start, end) in gpas.into_iter().flatten() {
            if let Some(part) = data.get(start..end) {
                self.bus.write_physical(gpa, part)?;
            }
        }
        Ok(())
    }

    /// What the emulation owes the guest after `completion`.
    pub fn traced(&self, completion: super::Completion) -> super::Traced {
        super::Traced {
            completion,
            breakpoint_hits: self.breakpoint_hits,
            mov_ss_shadow: self.mov_ss_shadow,
        }
    }

    /// Translate `len` bytes at linear `la` for a data access or a fetch,
    /// both pages when it crosses; a data access is matched against the
    /// guest's data breakpoints.
    #[inline]
    pub fn translate_range(
        &mut self,
        la: u64,
        len: usize,
        kind: AccessKind,
    ) -> Result<PhysRange, EmulateError> {
        let range = self.translate_range_unwatched(la, len, kind)?;
        if kind != AccessKind::Execute {
            self.breakpoint_hits |= self
                .breakpoints
                .data_hits(la, len, kind == AccessKind::Write);
        }
        Ok(range)
    }

    /// [`Context::translate_range`] for what no data breakpoint sees (the
    /// address check of a cache-line flush).
    #[inline]
    pub fn translate_range_unwatched(
        &mut self,
        la: u64,
        len: usize,
        kind: AccessKind,
    ) -> Result<PhysRange, EmulateError> {
        let in_page = (PAGE_SIZE - (la & (PAGE_SIZE - 1))) as usize;
        let first = self.translate(la, kind)?;
        let (first_len, second) = if len > in_page {
            let next = if self.mode == CpuMode::Long64 {
                la.wrapping_add(in_page as u64)
            } else {
                la.wrapping_add(in_page as u64) & 0xffff_ffff
            };
            (in_page, self.translate(next, kind)?)
        } else {
            (len, 0)
        };
        Ok(PhysRange {
            first,
            first_len,
            second,
            len,
        })
    }

    /// Segment, alignment and paging checks for a data access of `size`
    /// bytes at `seg:offset`; returns where it goes.
    #[inline]
    pub fn prepare(
        &mut self,
        seg: Segment,
        offset: u64,
        size: usize,
        kind: AccessKind,
    ) -> Result<PhysRange, EmulateError> {
        let la = self.linear(seg, offset, size, kind)?;
        if matches!(size, 2 | 4 | 8 | 16)
            && la & (size as u64 - 1) != 0
            && self.cpl == 3
            && self.control.cr0 & CR0_AM != 0
            && self.state.rflags() & RFLAGS_AC != 0
        {
            return Err(Exception::AlignmentCheck.into());
        }
        self.translate_range(la, size, kind)
    }

    /// Whether every byte of a prepared range has nothing behind it.
    pub fn range_unassigned(&self, range: &PhysRange) -> bool {
        range
            .pieces()
            .iter()
            .filter(|(_, start, end)| end > start)
            .all(|&(gpa, start, end)| self.bus.is_unassigned(gpa, end - start))
    }

    /// Read through a prepared range.
    #[inline]
    pub fn bus_read(&mut self, range: &PhysRange, buf: &mut [u8]) -> Result<(), EmulateError> {
        // The common case: one piece, the whole buffer.
        if range.first_len >= range.len && buf.len() == range.len && !buf.is_empty() {
            return Ok(self.bus.read_physical(range.first, buf)?);
        }
        self.bus_read_pieces(range, buf)
    }

    /// [`Context::bus_read`] piece by piece.
    fn bus_read_pieces(&mut self, range: &PhysRange, buf: &mut [u8]) -> Result<(), EmulateError> {
        for (gpa, start, end) in range.pieces() {
            if let Some(part) = buf.get_mut(start..end) {
                if !part.is_empty() {
                    self.bus.read_physical(gpa, part)?;
                }
            }
        }
        Ok(())
    }

    /// Write through a prepared range.
    #[inline]
    pub fn bus_write(&mut self, range: &PhysRange, data: &[u8]) -> Result<(), EmulateError> {
        // The common case: one piece, the whole data.
        if range.first_len >= range.len && data.len() == range.len && !data.is_empty() {
            return Ok(self.bus.write_physical(range.first, data)?);
        }
        self.bus_write_pieces(range, data)
    }

    /// [`Context::bus_write`] piece by piece.
    fn bus_write_pieces(&mut self, range: &PhysRange, data: &[u8]) -> Result<(), EmulateError> {
        for (gpa, start, end) in range.pieces() {
            if let Some(part) = data.get(start..end) {
                if !part.is_empty() {
                    self.bus.write_physical(gpa, part)?;
                }
            }
        }
        Ok(())
    }

    /// Read `size` (at most 8) bytes at `seg:offset` as a little-endian value.
    #[inline]
    pub fn read_value(
        &mut self,
        seg: Segment,
        offset: u64,
        size: usize,
    ) -> Result<u64, EmulateError> {
        let range = self.prepare(seg, offset, size, AccessKind::Read)?;
        self.read_prepared(&range, size)
    }

    /// Read a value through a prepared range.
    #[inline]
    pub fn read_prepared(&mut self, range: &PhysRange, size: usize) -> Result<u64, EmulateError> {
        let mut b = [0u8; 8];
        let n = size.min(8);
        self.bus_read(range, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write the low `size` (at most 8) bytes of `value` through a prepared range.
    #[inline]
    pub fn write_prepared(
        &mut self,
        range: &PhysRange,
        value: u64,
        size: usize,
    ) -> Result<(), EmulateError> {
        let b = value.to_le_bytes();
        self.bus_write(range, &b[..size.min(8)])
    }

    /// Write the low `size` (at most 8) bytes of `value` at `seg:offset`.
    #[inline]
    pub fn write_value(
        &mut self,
        seg: Segment,
        offset: u64,
        size: usize,
        value: u64,
    ) -> Result<(), EmulateError> {
        let range = self.prepare(seg, offset, size, AccessKind::Write)?;
        self.write_prepared(&range, value, size)
    }
}
