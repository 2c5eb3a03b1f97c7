//! The hardware half of [`ExtendedState`]: XSAVE/XRSTOR (or
//! FXSAVE/FXRSTOR) and XSETBV around guest entry, and the host set-up they
//! need. The only `unsafe` of the extended-state code.

use super::{Area, ExtendedState};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Per physical CPU (as `Host::current_cpu` numbers them): the token of the
/// vCPU whose extended state its registers hold since that vCPU's last
/// exit, or 0.
static LIVE: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
/// The next token.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A token no other `ExtendedState` has.
pub(super) fn new_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// CR4.OSFXSR.
const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;
/// CR0.TS and CR0.EM: either makes FXSAVE/XSAVE fault.
const CR0_TS_EM: u64 = (1 << 3) | (1 << 2);
/// EFER.FFXSR: AMD's fast FXSAVE, which skips the XMM registers at CPL 0.
const EFER_FFXSR: u64 = 1 << 14;
const MSR_EFER: u32 = x86::msr::IA32_EFER;

/// Make this CPU able to save and restore guests' extended state: CR4.OSFXSR
/// (and CR4.OSXSAVE where the CPU has XSAVE), CR0.TS and CR0.EM clear, and
/// EFER.FFXSR clear so FXSAVE always includes the XMM registers. Ring 0
/// only; the hardware backends call it from `Svm::enable`/`Vmx::enable`,
/// before any vCPU reads the host's CR4 for its host state.
pub fn prepare_host_cpu() {
    let xsave = crate::host_cpu::cpuid(1).ecx & (1 << 26) != 0;
    // SAFETY: ring 0 (the callers run there); the bits set only make
    // SSE/XSAVE instructions available and the bits cleared only stop them
    // from faulting; no memory is touched. EFER exists on every x86-64 CPU
    // and FFXSR only changes how FXSAVE treats XMM at CPL 0.
    unsafe {
        let mut cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        cr4 |= CR4_OSFXSR;
        if xsave {
            cr4 |= CR4_OSXSAVE;
        }
        asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack));
        let mut cr0: u64;
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        if cr0 & CR0_TS_EM != 0 {
            asm!("mov cr0, {}", in(reg) cr0 & !CR0_TS_EM, options(nomem, nostack));
        }
        let (lo, hi): (u32, u32);
        asm!("rdmsr", in("ecx") MSR_EFER, out("eax") lo, out("edx") hi, options(nomem, nostack));
        let efer = (u64::from(hi) << 32) | u64::from(lo);
        if efer & EFER_FFXSR != 0 {
            let efer = efer & !EFER_FFXSR;
            asm!("wrmsr", in("ecx") MSR_EFER, in("eax") efer as u32, in("edx") (efer >> 32) as u32, options(nostack));
        }
    }
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called when the CPU has XSAVE and `prepare_host_cpu`
    // set CR4.OSXSAVE; XGETBV reads a register.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Load XCR0.
///
/// # Safety
///
/// The CPU has XSAVE, CR4.OSXSAVE is set and `value` is a valid XCR0 for
/// it (a union of valid values is valid).
unsafe fn xsetbv0(value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
    };
}

/// XSAVE the components `mask` (also limited by XCR0) into `area`, or
/// FXSAVE when `xsave` is false.
///
/// # Safety
///
/// CR4.OSFXSR (and CR4.OSXSAVE for XSAVE) set, CR0.TS/EM clear; for XSAVE
/// the area is large enough for every component of `mask & XCR0` in the
/// standard format.
unsafe fn save(area: &mut Area, xsave: bool, mask: u64) {
    let ptr = area.chunks.as_mut_ptr().cast::<u8>();
    // SAFETY: `Area` is a Vec of 64-byte aligned chunks, so `ptr` is
    // aligned as XSAVE and FXSAVE require and the whole area is writable;
    // the caller guarantees the size and the control-register state.
    unsafe {
        if xsave {
            asm!("xsave64 [{}]", in(reg) ptr, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack));
        } else {
            asm!("fxsave64 [{}]", in(reg) ptr, options(nostack));
        }
    }
}

/// XRSTOR (or FXRSTOR) `area` for the components `mask`.
///
/// # Safety
///
/// As for [`save`], and the area holds a valid image: one written by
/// `save`, or by `Area::reset` and the safe accessors (which keep MXCSR's
/// reserved bits and the header's reserved bytes zero and set XSTATE_BV
/// only within the model).
unsafe fn restore(area: &Area, xsave: bool, mask: u64) {
    let ptr = area.chunks.as_ptr().cast::<u8>();
    // SAFETY: aligned and readable as for `save`; validity guaranteed by
    // the caller.
    unsafe {
        if xsave {
            asm!("xrstor64 [{}]", in(reg) ptr, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack, readonly));
        } else {
            asm!("fxrstor64 [{}]", in(reg) ptr, options(nostack, readonly));
        }
    }
}

impl ExtendedState {
    /// Put the host's extended state aside and load this vCPU's, XCR0
    /// included. Call right before entering the guest, with interrupts
    /// disabled, on a CPU prepared by [`prepare_host_cpu`]; pair with
    /// [`ExtendedState::switch_to_host`]. `cpu` is
    /// [`crate::host::Host::current_cpu`]: where the host does not keep
    /// its own state and this vCPU's registers are still in that CPU from
    /// its last exit (no other vCPU loaded since, no emulator write, no
    /// XCR0 change in between), nothing needs loading.
    pub fn switch_to_guest(&mut self, cpu: Option<usize>) {
        if self.loaded {
            return;
        }
        let live = cpu.and_then(|c| LIVE.get(c));
        let xsave = self.model.xsave;
        let mut full = self.model.guest_mask;
        if xsave {
            self.host_xcr0 = xgetbv0();
            full |= self.host_xcr0;
            if full != self.host_xcr0 {
                // SAFETY: XSAVE present, OSXSAVE set by `prepare_host_cpu`;
                // the union of the host's XCR0 and a valid model mask is
                // valid.
                unsafe { xsetbv0(full) };
            }
            if full & !self.host_mask != 0 {
                // The host enabled components the area has no room for:
                // CPUID.(0xD,0).EBX gives the size for the XCR0 now loaded.
                let size = crate::host_cpu::cpuid_count(0xd, 0).ebx as usize;
                self.host = Area::new(size.max(self.model.area_size));
                self.host_mask = full;
            }
        }
        let xcr0_steady = !xsave || (self.host_xcr0 == full && self.guest_xcr0 == full);
        if !self.keep_host
            && !self.dirty
            && xcr0_steady
            && live.is_some_and(|l| l.load(Ordering::Relaxed) == self.token)
        {
            self.loaded = true;
            return;
        }
        // SAFETY: the host CPU was prepared (CR4.OSFXSR/OSXSAVE, TS/EM
        // clear); the host area has room for `full` (checked above), the
        // guest area for the model mask (sized from the same CPUID), and
        // the guest image is valid (see `restore`).
        unsafe {
            if self.keep_host {
                save(&mut self.host, xsave, full);
            }
            restore(&self.guest, xsave, self.model.guest_mask);
            if xsave && self.guest_xcr0 != full {
                xsetbv0(self.guest_xcr0);
            }
        }
        if let Some(l) = live {
            // After the exit the registers keep this vCPU's state only if
            // the host does not put its own back.
            l.store(
                if self.keep_host { 0 } else { self.token },
                Ordering::Relaxed,
            );
        }
        self.dirty = false;
        self.loaded = true;
    }

    /// Save this vCPU's extended state and give the host back its own,
    /// XCR0 included. Call right after the guest exits.
    pub fn switch_to_host(&mut self) {
        if !self.loaded {
            return;
        }
        let xsave = self.model.xsave;
        let full = if xsave {
            self.model.guest_mask | self.host_xcr0
        } else {
            self.model.guest_mask
        };
        // SAFETY: as in `switch_to_guest`, which loaded the guest's state
        // and XCR0 (valid: set only through `set_xcr`, or 1); the host area
        // holds the image `switch_to_guest` saved.
        unsafe {
            if xsave && self.guest_xcr0 != full {
                xsetbv0(full);
            }
            save(&mut self.guest, xsave, self.model.guest_mask);
            self.dirty = false;
            if self.keep_host {
                restore(&self.host, xsave, full);
            }
            if xsave && self.host_xcr0 != full {
                xsetbv0(self.host_xcr0);
            }
        }
        self.loaded = false;
    }
}
