//! The guest page-table walker: translates a guest linear address to a
//! guest-physical address the way the guest's MMU would, in every paging
//! mode (none, 32-bit, PAE, 4-level, 5-level), checking U/S, R/W, NX, SMEP,
//! SMAP, WP and protection keys, setting accessed and dirty bits, and
//! returning the exact #PF error code when the access faults.
//!
//! The instruction emulator uses it for every guest memory access; shadow
//! paging uses the same walker to read the guest's tables.
//!
//! Differences from hardware, on purpose: PAE PDPTEs are read from memory at
//! every walk (hardware caches them when CR3 is loaded), and accessed/dirty
//! bits are set only once the whole access is known not to fault (hardware
//! may set accessed bits on a walk that then faults). Supervisor protection
//! keys (CR4.PKS) are not modelled.

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.EM: no x87/SSE (SSE instructions raise #UD).
pub const CR0_EM: u64 = 1 << 2;
/// CR0.NE: x87 errors are reported as #MF (not through FERR#).
pub const CR0_NE: u64 = 1 << 5;
/// CR0.TS: task switched (SSE instructions raise #NM).
pub const CR0_TS: u64 = 1 << 3;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.AM: alignment checking allowed (with RFLAGS.AC at CPL 3).
pub const CR0_AM: u64 = 1 << 18;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.DE: debug extensions (DR7 R/W = 10 means I/O breakpoints).
pub const CR4_DE: u64 = 1 << 3;
/// CR4.PAE: 64-bit page-table entries.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR: the OS supports SSE (otherwise SSE instructions raise #UD).
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXSAVE: XSAVE and extended state (AVX) enabled by the OS.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.SMEP: supervisor-mode execution prevention.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: supervisor-mode access prevention.
pub const CR4_SMAP: u64 = 1 << 21;
/// CR4.PKE: protection keys for user-mode pages.
pub const CR4_PKE: u64 = 1 << 22;
/// EFER.LME: long mode enabled.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the execute-disable bit exists.
pub const EFER_NXE: u64 = 1 << 11;

/// #PF error code: the page was present (a protection or reserved-bit fault).
pub const PF_PRESENT: u32 = 1 << 0;
/// #PF error code: the access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// #PF error code: the access was a user-mode access.
pub const PF_USER: u32 = 1 << 2;
/// #PF error code: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u32 = 1 << 3;
/// #PF error code: the access was an instruction fetch (reported only with
/// NX enabled in PAE/4-level/5-level paging, or with SMEP).
pub const PF_FETCH: u32 = 1 << 4;
/// #PF error code: a protection key forbade the access.
pub const PF_PK: u32 = 1 << 5;

/// The size of a small page.
pub const PAGE_SIZE: u64 = 4096;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;

/// The control registers that decide how the guest translates addresses
/// (and, for the emulator, which instructions are allowed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlRegisters {
    /// CR0.
    pub cr0: u64,
    /// CR3: the root of the page tables.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

impl ControlRegisters {
    /// The paging mode these registers select.
    pub fn paging_mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 || self.cr0 & CR0_PE == 0 {
            PagingMode::Disabled
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & EFER_LMA == 0 {
            PagingMode::Pae
        } else if self.cr4 & CR4_LA57 == 0 {
            PagingMode::Level4
        } else {
            PagingMode::Level5
        }
    }
}

/// How linear addresses are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// No paging: linear addresses are physical addresses.
    Disabled,
    /// 32-bit paging (2 levels, 4-byte entries, 4 MiB pages with CR4.PSE).
    Bits32,
    /// PAE paging (4 PDPTEs, 2 levels of 8-byte entries).
    Pae,
    /// 4-level paging (IA-32e).
    Level4,
    /// 5-level paging (CR4.LA57).
    Level5,
}

/// What the access does with the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write (or a read-modify-write).
    Write,
    /// An instruction fetch.
    Execute,
}

/// One access to translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// The current privilege level (0 to 3).
    pub cpl: u8,
    /// An implicit supervisor-mode access (descriptor tables, the TSS):
    /// supervisor even at CPL 3.
    pub implicit_supervisor: bool,
    /// RFLAGS.AC, which lifts SMAP for explicit accesses at CPL < 3.
    pub ac: bool,
}

impl Access {
    /// An explicit access of `kind` at privilege level `cpl` with RFLAGS.AC
    /// clear.
    pub fn new(kind: AccessKind, cpl: u8) -> Self {
        Self {
            kind,
            cpl,
            implicit_supervisor: false,
            ac: false,
        }
    }

    fn user_mode(&self) -> bool {
        self.cpl == 3 && !self.implicit_supervisor
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address of the translated byte.
    pub gpa: u64,
    /// The size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB;
    /// 4 KiB when paging is off).
    pub page_size: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// Not execute-disabled at any level.
    pub executable: bool,
}

/// One paging-structure entry a walk read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracedEntry {
    /// The entry's guest-physical address.
    pub gpa: u64,
    /// An 8-byte entry (PAE, 4-level, 5-level); 4 bytes otherwise.
    pub wide: bool,
    /// The entry's value after the walk (accessed and dirty bits set).
    pub value: u64,
}

/// The entries a successful walk used, top level first, and what it left
/// in the leaf (see [`Walker::translate_traced`]). Empty when paging is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkTrace {
    entries: [TracedEntry; 5],
    len: usize,
    /// The leaf entry's dirty bit after the walk's own update.
    pub leaf_dirty: bool,
}

impl WalkTrace {
    /// The entries, top level first.
    pub fn entries(&self) -> &[TracedEntry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }
}

/// A page fault the guest must receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (the guest's CR2).
    pub address: u64,
    /// The error code pushed with the fault (`PF_*` bits).
    pub error_code: u32,
}

/// Why a walk did not produce a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The guest takes a page fault.
    PageFault(PageFault),
    /// A paging-structure entry lies where the walker cannot read or write
    /// it (not RAM, outside the guest): the VM cannot continue.
    TableUnreachable {
        /// The guest-physical address of the entry.
        gpa: u64,
    },
}

impl core::fmt::Display for WalkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WalkError::PageFault(pf) => write!(
                f,
                "#PF at {:#x}, error code {:#x}",
                pf.address, pf.error_code
            ),
            WalkError::TableUnreachable { gpa } => {
                write!(
                    f,
                    "page-table entry at {gpa:#x} is not readable guest memory"
                )
            }
        }
    }
}

/// Where the walker reads and updates paging-structure entries.
pub trait PageTableMemory {
    /// Read the 4-byte entry at `gpa`; `None` if it cannot be read.
    fn read_u32(&mut self, gpa: u64) -> Option<u32>;
    /// Read the 8-byte entry at `gpa`; `None` if it cannot be read.
    fn read_u64(&mut self, gpa: u64) -> Option<u64>;
    /// Write the 4-byte entry at `gpa`; `false` if it cannot be written.
    fn write_u32(&mut self, gpa: u64, value: u32) -> bool;
    /// Write the 8-byte entry at `gpa`; `false` if it cannot be written.
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool;
}

impl PageTableMemory for crate::memory::GuestMemory {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        crate::memory::GuestMemory::read_u32(self, gpa).ok()
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        crate::memory::GuestMemory::read_u64(self, gpa).ok()
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> bool {
        crate::memory::GuestMemory::write_u32(self, gpa, value).is_ok()
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        crate::memory::GuestMemory::write_u64(self, gpa, value).is_ok()
    }
}

/// A page-table walker for one vCPU's paging state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walker {
    /// CR0, CR3, CR4 and EFER.
    pub control: ControlRegisters,
    /// The guest's MAXPHYADDR: physical-address bits above it are reserved.
    pub max_phys_bits: u8,
    /// PKRU, consulted for user pages when CR4.PKE is set.
    pub pkru: u32,
}

/// One paging-structure entry met during a walk, for the A/D update.
#[derive(Clone, Copy, Default)]
struct Visited {
    gpa: u64,
    value: u64,
    wide: bool,
    leaf: bool,
}

impl Walker {
    /// A walker for `control` with a 46-bit physical address width and
    /// PKRU zero.
    pub fn new(control: ControlRegisters) -> Self {
        Self {
            control,
            max_phys_bits: 46,
            pkru: 0,
        }
    }

    /// The paging mode.
    pub fn mode(&self) -> PagingMode {
        self.control.paging_mode()
    }

    /// Bits 51:MAXPHYADDR, reserved in 8-byte entries.
    fn phys_reserved(&self) -> u64 {
        let bits = u32::from(self.max_phys_bits.clamp(32, 52));
        ((1u64 << 52) - 1) & !((1u64 << bits) - 1)
    }

    fn nxe(&self) -> bool {
        self.control.efer & EFER_NXE != 0
    }

    /// The error-code bits describing `access`, without P, RSVD or PK.
    fn access_bits(&self, access: &Access, mode: PagingMode) -> u32 {
        let mut code = 0;
        match access.kind {
            AccessKind::Write => code |= PF_WRITE,
            AccessKind::Execute => {
                let nx = self.nxe() && mode != PagingMode::Bits32;
                if nx || self.control.cr4 & CR4_SMEP != 0 {
                    code |= PF_FETCH;
                }
            }
            AccessKind::Read => {}
        }
        if access.user_mode() {
            code |= PF_USER;
        }
        code
    }

    /// Translate `linear` for `access`, setting accessed (and, for writes,
    /// dirty) bits in the entries used when the access is allowed.
    pub fn translate<M: PageTableMemory + ?Sized>(
        &self,
        mem: &mut M,
        linear: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        self.walk::<M, false>(mem, linear, access).map(|(t, _)| t)
    }

    /// Like [`Walker::translate`], and also say which paging-structure
    /// entries the walk used and the leaf's final dirty bit: what shadow
    /// paging needs to keep its entries coherent with the guest's.
    pub fn translate_traced<M: PageTableMemory + ?Sized>(
        &self,
        mem: &mut M,
        linear: u64,
        access: Access,
    ) -> Result<(Translation, WalkTrace), WalkError> {
        self.walk::<M, true>(mem, linear, access)
    }

    /// The walk behind [`Walker::translate`] and
    /// [`Walker::translate_traced`]; without `TRACE` the trace stays empty
    /// (and, inlined into `translate`, costs nothing).
    #[inline(always)]
    fn walk<M: PageTableMemory + ?Sized, const TRACE: bool>(
        &self,
        mem: &mut M,
        linear: u64,
        access: Access,
    ) -> Result<(Translation, WalkTrace), WalkError> {
        let mode = self.mode();
        let fault = |extra: u32| {
            WalkError::PageFault(PageFault {
                address: linear,
                error_code: self.access_bits(&access, mode) | extra,
            })
        };
        let mut visited = [Visited::default(); 5];
        // PAE PDPTEs have no accessed bit, so they are not in `visited`.
        let mut pdpte_at: Option<(u64, u64)> = None;
        let mut nvisited = 0usize;
        let mut writable = true;
        let mut user = true;
        let mut executable = true;
        let (gpa, page_size, leaf) = match mode {
            PagingMode::Disabled => {
                return Ok((
                    Translation {
                        gpa: linear,
                        page_size: PAGE_SIZE,
                        writable: true,
                        user: true,
                        executable: true,
                    },
                    WalkTrace::default(),
                ))
            }
            PagingMode::Bits32 => {
                let la = linear & 0xffff_ffff;
                let pde_gpa = (self.control.cr3 & 0xffff_f000) + ((la >> 22) << 2);
                let pde = u64::from(
                    mem.read_u32(pde_gpa)
                        .ok_or(WalkError::TableUnreachable { gpa: pde_gpa })?,
                );
                if pde & PTE_P == 0 {
                    return Err(fault(0));
                }
                writable &= pde & PTE_RW != 0;
                user &= pde & PTE_US != 0;
                let big = pde & PTE_PS != 0 && self.control.cr4 & CR4_PSE != 0;
                if big {
                    // Bits 20:13 hold physical bits 39:32; bit 21 and the
                    // bits above MAXPHYADDR are reserved.
                    let high_bits = u32::from(self.max_phys_bits.clamp(32, 40)) - 32;
                    let reserved =
                        (1u64 << 21) | (0xffu64 << 13 & !(((1u64 << high_bits) - 1) << 13));
                    if pde & reserved != 0 {
                        return Err(fault(PF_PRESENT | PF_RSVD));
                    }
                    visited[0] = Visited {
                        gpa: pde_gpa,
                        value: pde,
                        wide: false,
                        leaf: true,
                    };
                    nvisited = 1;
                    let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
                    (base | (la & 0x3f_ffff), 0x40_0000, pde)
                } else {
                    visited[0] = Visited {
                        gpa: pde_gpa,
                        value: pde,
                        wide: false,
                        leaf: false,
                    };
                    let pte_gpa = (pde & 0xffff_f000) + (((la >> 12) & 0x3ff) << 2);
                    let pte = u64::from(
                        mem.read_u32(pte_gpa)
                            .ok_or(WalkError::TableUnreachable { gpa: pte_gpa })?,
                    );
                    if pte & PTE_P == 0 {
                        return Err(fault(0));
                    }
                    writable &= pte & PTE_RW != 0;
                    user &= pte & PTE_US != 0;
                    visited[1] = Visited {
                        gpa: pte_gpa,
                        value: pte,
                        wide: false,
                        leaf: true,
                    };
                    nvisited = 2;
                    ((pte & 0xffff_f000) | (la & 0xfff), PAGE_SIZE, pte)
                }
            }
            PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5 => {
                let rsvd_phys = self.phys_reserved();
                let xd_reserved = if self.nxe() { 0 } else { PTE_XD };
                // Reserved bits common to every 8-byte entry; PAE paging
                // also reserves bits 62:52.
                let common = rsvd_phys
                    | xd_reserved
                    | if mode == PagingMode::Pae {
                        0x7ff0_0000_0000_0000
                    } else {
                        0
                    };
                let addr_mask = 0x000f_ffff_ffff_f000u64 & !rsvd_phys;
                let (mut table, first_shift) = match mode {
                    PagingMode::Pae => {
                        let la = linear & 0xffff_ffff;
                        let pdpte_gpa = (self.control.cr3 & 0xffff_ffe0) + ((la >> 30) << 3);
                        let pdpte = mem
                            .read_u64(pdpte_gpa)
                            .ok_or(WalkError::TableUnreachable { gpa: pdpte_gpa })?;
                        if pdpte & PTE_P == 0 {
                            return Err(fault(0));
                        }
                        pdpte_at = Some((pdpte_gpa, pdpte));
                        // PDPTEs reserve bits 2:1, 8:5, 63 and 62:MAXPHYADDR.
                        let reserved = 0x1e6 | PTE_XD | 0x7ff0_0000_0000_0000 | rsvd_phys;
                        if pdpte & reserved != 0 {
                            return Err(fault(PF_PRESENT | PF_RSVD));
                        }
                        (pdpte & addr_mask, 21u32)
                    }
                    PagingMode::Level4 => (self.control.cr3 & addr_mask, 39u32),
                    _ => (self.control.cr3 & addr_mask, 48u32),
                };
                let mut shift = first_shift;
                loop {
                    let index = (linear >> shift) & 0x1ff;
                    let entry_gpa = table + index * 8;
                    let entry = mem
                        .read_u64(entry_gpa)
                        .ok_or(WalkError::TableUnreachable { gpa: entry_gpa })?;
                    if entry & PTE_P == 0 {
                        return Err(fault(0));
                    }
                    let ps = entry & PTE_PS != 0;
                    let mut reserved = common;
                    if shift >= 39 {
                        // PML5E/PML4E: PS is reserved.
                        reserved |= PTE_PS;
                    } else if ps && shift > 12 {
                        // 1 GiB or 2 MiB page: bits (shift-1):13 reserved.
                        reserved |= ((1u64 << shift) - 1) & !0x1fff;
                    }
                    if entry & reserved != 0 {
                        return Err(fault(PF_PRESENT | PF_RSVD));
                    }
                    writable &= entry & PTE_RW != 0;
                    user &= entry & PTE_US != 0;
                    executable &= !(self.nxe() && entry & PTE_XD != 0);
                    let is_leaf = shift == 12 || (ps && shift <= 30);
                    if let Some(slot) = visited.get_mut(nvisited) {
                        *slot = Visited {
                            gpa: entry_gpa,
                            value: entry,
                            wide: true,
                            leaf: is_leaf,
                        };
                        nvisited += 1;
                    }
                    if is_leaf {
                        let size = 1u64 << shift;
                        let base = entry & addr_mask & !(size - 1);
                        break (base | (linear & (size - 1)), size, entry);
                    }
                    table = entry & addr_mask;
                    shift -= 9;
                }
            }
        };

        self.check_rights(&access, mode, writable, user, executable, leaf)
            .map_err(fault)?;

        // The access is allowed: set accessed bits on the way, dirty on the
        // leaf for a write.
        let mut trace = WalkTrace::default();
        if let (true, Some((gpa, value))) = (TRACE, pdpte_at) {
            trace.entries[0] = TracedEntry {
                gpa,
                wide: true,
                value,
            };
            trace.len = 1;
        }
        for v in visited.iter().take(nvisited) {
            let mut new = v.value | PTE_A;
            if v.leaf && access.kind == AccessKind::Write {
                new |= PTE_D;
            }
            if TRACE {
                if let Some(slot) = trace.entries.get_mut(trace.len) {
                    *slot = TracedEntry {
                        gpa: v.gpa,
                        wide: v.wide,
                        value: new,
                    };
                    trace.len += 1;
                }
                if v.leaf {
                    trace.leaf_dirty = new & PTE_D != 0;
                }
            }
            if new != v.value {
                let ok = if v.wide {
                    mem.write_u64(v.gpa, new)
                } else {
                    mem.write_u32(v.gpa, new as u32)
                };
                if !ok {
                    return Err(WalkError::TableUnreachable { gpa: v.gpa });
                }
            }
        }
        Ok((
            Translation {
                gpa,
                page_size,
                writable,
                user,
                executable,
            },
            trace,
        ))
    }

    /// The protection checks, given the combined rights of the walk.
    /// Returns the extra error-code bits (P, PK) on a fault.
    fn check_rights(
        &self,
        access: &Access,
        mode: PagingMode,
        writable: bool,
        user_page: bool,
        executable: bool,
        leaf: u64,
    ) -> Result<(), u32> {
        let cr0 = self.control.cr0;
        let cr4 = self.control.cr4;
        let user_mode = access.user_mode();
        match access.kind {
            AccessKind::Execute => {
                if user_mode && !user_page {
                    return Err(PF_PRESENT);
                }
                if !executable && mode != PagingMode::Bits32 {
                    return Err(PF_PRESENT);
                }
                if !user_mode && user_page && cr4 & CR4_SMEP != 0 {
                    return Err(PF_PRESENT);
                }
                Ok(())
            }
            AccessKind::Read | AccessKind::Write => {
                let write = access.kind == AccessKind::Write;
                if user_mode {
                    if !user_page || (write && !writable) {
                        return Err(PF_PRESENT);
                    }
                } else {
                    if user_page && cr4 & CR4_SMAP != 0 {
                        let lifted = access.cpl < 3 && access.ac;
                        if !lifted {
                            return Err(PF_PRESENT);
                        }
                    }
                    if write && !writable && cr0 & CR0_WP != 0 {
                        return Err(PF_PRESENT);
                    }
                }
                let ia32e = matches!(mode, PagingMode::Level4 | PagingMode::Level5);
                if user_page && ia32e && cr4 & CR4_PKE != 0 {
                    let key = ((leaf >> 59) & 0xf) as u32;
                    let ad = self.pkru >> (2 * key) & 1 != 0;
                    let wd = self.pkru >> (2 * key + 1) & 1 != 0;
                    if ad || (write && wd && (user_mode || cr0 & CR0_WP != 0)) {
                        return Err(PF_PRESENT | PF_PK);
                    }
                }
                Ok(())
            }
        }
    }
}
