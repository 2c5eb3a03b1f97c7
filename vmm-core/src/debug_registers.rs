//! The guest's DR0-DR3 (and DR6 where the VMCS does not hold it) while it
//! does not run.
//!
//! Neither VMRUN nor VM entry switches DR0-DR3 (SVM keeps DR6 and DR7 in
//! the VMCB, VMX only DR7 in the VMCS), and the guest reads and writes
//! them without exits. [`GuestDebugRegisters`] holds them between runs:
//! loaded into the CPU right before an entry, read back right after the
//! exit, so they can be saved and restored, and no guest sees another's.
//! The host never enables a breakpoint (its DR7 is 0x400 after every
//! exit), so the guest's addresses in DR0-DR3 do nothing while it runs.

use core::arch::asm;

/// The guest's DR0-DR3 and DR6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDebugRegisters {
    /// DR0-DR3 (canonical addresses: loading any other faults).
    pub dr: [u64; 4],
    /// DR6 (bits 63:32 clear), switched only by backends whose entry does
    /// not load it.
    pub dr6: u64,
}

impl Default for GuestDebugRegisters {
    fn default() -> Self {
        Self {
            dr: [0; 4],
            dr6: crate::vcpu::DebugRegisters::default().dr6,
        }
    }
}

impl GuestDebugRegisters {
    /// Load the registers into the CPU (DR6 too with `with_dr6`), right
    /// before an entry. Every value was checked when it was set
    /// ([`crate::vcpu::check_debug_registers`]) or read from the CPU.
    pub fn load(&self, with_dr6: bool) {
        let [d0, d1, d2, d3] = self.dr;
        // SAFETY: ring 0 (the only place guests are entered from); DR0-3
        // hold canonical addresses and DR6 has bits 63:32 clear, so no MOV
        // faults; the host's DR7 enables no breakpoint, so the values have
        // no effect until the guest runs with its own DR7.
        unsafe {
            asm!(
                "mov dr0, {0}",
                "mov dr1, {1}",
                "mov dr2, {2}",
                "mov dr3, {3}",
                in(reg) d0, in(reg) d1, in(reg) d2, in(reg) d3,
                options(nomem, nostack, preserves_flags)
            );
            if with_dr6 {
                asm!("mov dr6, {}", in(reg) self.dr6 & 0xffff_ffff, options(nomem, nostack, preserves_flags));
            }
        }
    }

    /// Read the registers back from the CPU (DR6 too with `with_dr6`),
    /// right after an exit.
    pub fn save(&mut self, with_dr6: bool) {
        let (d0, d1, d2, d3): (u64, u64, u64, u64);
        // SAFETY: ring 0; reading debug registers has no side effect.
        unsafe {
            asm!(
                "mov {0}, dr0",
                "mov {1}, dr1",
                "mov {2}, dr2",
                "mov {3}, dr3",
                out(reg) d0, out(reg) d1, out(reg) d2, out(reg) d3,
                options(nomem, nostack, preserves_flags)
            );
            if with_dr6 {
                let dr6: u64;
                asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack, preserves_flags));
                self.dr6 = dr6;
            }
        }
        self.dr = [d0, d1, d2, d3];
    }
}
