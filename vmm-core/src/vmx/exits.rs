//! Decoding VM exits into the shared [`Exit`]s, and the exits handled
//! here at once (control registers, XSETBV, INVD, undeliverable events).

use super::entry_checks;
use super::events::{INFO_ERROR_CODE, INFO_VALID};
use super::exit_reason::{entry_failure_qualification, exit_reason_name, reason};
use super::fields;
use super::VmxVcpu;
use crate::emulator::{AccessHint, CpuState, Hints};
use crate::stats::ExitKind;
use crate::vcpu::{Event, Exit, ExitError, VcpuBackend};
use crate::vm::Vm;
use alloc::format;
use alloc::string::String;

/// CR4.OSXSAVE.
const CR4_OSXSAVE: u64 = 1 << 18;

/// An I/O instruction exit with qualification `q` (SDM table 28-5: size
/// minus one in bits 2:0, IN in bit 3, string in bit 4, port in 31:16).
/// String instructions go to the emulator.
pub fn io_exit(q: u64, next_rip: u64) -> Exit {
    if q & (1 << 4) != 0 {
        return Exit::emulate(None);
    }
    Exit::PortIo {
        port: (q >> 16) as u16,
        size: ((q & 0b111) + 1) as u8,
        write: q & (1 << 3) == 0,
        next_rip,
    }
}

/// EPT-violation qualification: a data read.
const EPT_READ: u64 = 1 << 0;
/// A data write.
const EPT_WRITE: u64 = 1 << 1;
/// An instruction fetch.
const EPT_FETCH: u64 = 1 << 2;
/// The guest-linear address field is valid.
const EPT_LINEAR_VALID: u64 = 1 << 7;
/// (With bit 7) the access was to the translation of a linear address,
/// not to a guest paging-structure entry.
const EPT_TRANSLATED: u64 = 1 << 8;

/// What an EPT violation tells the emulator (qualification `q`,
/// guest-physical address `gpa`, and the guest-linear address when bit 7
/// says the field is valid): the access's address when it was a data
/// access to the translation of a linear address (not a guest
/// paging-structure entry, not a fetch). VMX fetches no instruction bytes.
pub fn ept_violation_hints(q: u64, gpa: u64, linear: Option<u64>) -> Hints {
    let translated = q & (EPT_LINEAR_VALID | EPT_TRANSLATED) == EPT_LINEAR_VALID | EPT_TRANSLATED;
    let data = q & EPT_FETCH == 0 && q & (EPT_READ | EPT_WRITE) != 0;
    Hints {
        access: (translated && data).then_some(AccessHint {
            gpa,
            write: q & EPT_WRITE != 0,
            linear,
        }),
        bytes: None,
    }
}

impl VmxVcpu {
    /// XSETBV: #UD without CR4.OSXSAVE, #GP outside CPL 0 or for a value
    /// the model refuses; otherwise the guest's XCR0 changes (it is loaded
    /// at the next entry).
    fn xsetbv(&mut self) {
        let value = (self.gprs.rdx << 32) | (self.gprs.rax & 0xffff_ffff);
        let osxsave = self.guest_cr4() & CR4_OSXSAVE != 0;
        let cpl = self.cpl();
        match self
            .xstate
            .xsetbv(self.gprs.rcx as u32, value, osxsave, cpl)
        {
            Ok(()) => self.skip_instruction(),
            Err(e) => {
                self.inject(Event::Exception(e));
            }
        }
    }

    fn next_rip(&self) -> u64 {
        self.read(fields::GUEST_RIP)
            .wrapping_add(self.read(fields::EXIT_INSTRUCTION_LENGTH))
    }

    pub(super) fn skip_instruction(&mut self) {
        let next = self.next_rip();
        self.set_rip(next);
    }

    /// Decode the exit that just happened: `None` if it was handled here
    /// and the guest can go on at once.
    pub(super) fn decode_exit(&mut self, vm: &mut Vm) -> Option<Exit> {
        let raw = self.read(fields::EXIT_REASON);
        let basic = (raw & 0xffff) as u32;
        let q = self.read(fields::EXIT_QUALIFICATION);
        if raw & (1 << 31) != 0 {
            let why = if basic == reason::ENTRY_FAIL_GUEST_STATE {
                entry_failure_qualification(q)
            } else if basic == reason::ENTRY_FAIL_MSR_LOADING {
                "an MSR in the VM-entry MSR-load area was refused (qualification = entry)"
            } else {
                ""
            };
            let check = if basic == reason::ENTRY_FAIL_GUEST_STATE {
                match entry_checks::first_failed_check(&self.snapshot(), self.cr0, self.cr4) {
                    Some(c) => format!("; failed check: {} ({})", c.rule, c.fields),
                    None => String::from("; no modelled guest-state check fails"),
                }
            } else {
                String::new()
            };
            return Some(Exit::Error(ExitError::EntryFailed {
                detail: format!(
                    "exit reason {basic} ({}), qualification {q:#x}: {why}{check}; {}",
                    exit_reason_name(basic),
                    self.guest_state_summary()
                ),
            }));
        }
        self.reinject_vectoring_event();
        let exit = match basic {
            // The preemption timer ends a guest's run as a host interrupt
            // would: the exit loop checks its slice and re-enters.
            reason::EXTERNAL_INTERRUPT | reason::PREEMPTION_TIMER => Exit::ExternalInterrupt,
            reason::EXCEPTION_OR_NMI
                if (self.read(fields::EXIT_INTERRUPTION_INFO) >> 8) & 7 == 2 =>
            {
                Exit::ExternalInterrupt
            }
            reason::TRIPLE_FAULT => Exit::Shutdown,
            reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
            reason::NMI_WINDOW => Exit::NmiWindow,
            reason::CPUID => Exit::Cpuid {
                next_rip: self.next_rip(),
            },
            reason::HLT => Exit::Hlt {
                next_rip: self.next_rip(),
            },
            reason::PAUSE => Exit::Pause {
                next_rip: self.next_rip(),
            },
            reason::IO => io_exit(q, self.next_rip()),
            reason::RDMSR | reason::WRMSR => Exit::Msr {
                write: basic == reason::WRMSR,
                next_rip: self.next_rip(),
            },
            reason::EPT_VIOLATION => {
                let gpa = self.read(fields::GUEST_PHYSICAL_ADDRESS);
                let vectoring = self.read(fields::IDT_VECTORING_INFO);
                if vectoring & INFO_VALID != 0
                    && vm.memory().kind_at(gpa) != crate::memory::RegionKind::Ram
                {
                    // Delivering an event (IDT, GDT, stack or their page
                    // tables) touched memory this VM does not have:
                    // re-entering would only exit here again.
                    log::debug!(
                        "delivering event {vectoring:#x} touched {gpa:#x}, which is not RAM"
                    );
                    let (event_type, vector) = (((vectoring >> 8) & 7) as u8, vectoring as u8);
                    match crate::vcpu::delivery_fault(event_type, vector) {
                        crate::vcpu::DeliveryFault::Shutdown => Exit::Shutdown,
                        crate::vcpu::DeliveryFault::DoubleFault => {
                            self.write(
                                fields::ENTRY_INTERRUPTION_INFO,
                                8 | (3 << 8) | INFO_ERROR_CODE | INFO_VALID,
                            );
                            self.write(fields::ENTRY_EXCEPTION_ERROR_CODE, 0);
                            vm.stats_mut().record(ExitKind::Mmio);
                            return None;
                        }
                    }
                } else if q & EPT_WRITE != 0 && vm.memory().is_shared_page(gpa) {
                    // The first write to RAM shared copy-on-write.
                    Exit::CopyOnWrite { gpa }
                } else if vm.memory().kind_at(gpa) == crate::memory::RegionKind::Ram {
                    // The tables say "not RAM" where the map says RAM.
                    Exit::Error(ExitError::Unhandled {
                        code: basic.into(),
                        detail: format!("EPT violation on RAM at {gpa:#x}, qualification {q:#x}"),
                    })
                } else {
                    let linear = (q & EPT_LINEAR_VALID != 0)
                        .then(|| self.read(fields::GUEST_LINEAR_ADDRESS));
                    Exit::Emulate {
                        gpa: Some(gpa),
                        hints: ept_violation_hints(q, gpa, linear),
                    }
                }
            }
            reason::EPT_MISCONFIG => Exit::Error(ExitError::Unhandled {
                code: basic.into(),
                detail: format!(
                    "EPT misconfiguration at {:#x}",
                    self.read(fields::GUEST_PHYSICAL_ADDRESS)
                ),
            }),
            reason::VMCALL..=reason::VMXON | reason::INVEPT | reason::INVVPID | reason::VMFUNC => {
                Exit::VirtInstruction
            }
            reason::CR_ACCESS => {
                vm.stats_mut().record(ExitKind::ControlRegister);
                return self.control_register_access(vm, q).err();
            }
            reason::XSETBV => {
                vm.stats_mut().record(ExitKind::Other);
                self.xsetbv();
                return None;
            }
            reason::INVD => {
                vm.stats_mut().record(ExitKind::Other);
                self.skip_instruction();
                return None;
            }
            other => Exit::Error(ExitError::Unhandled {
                code: other.into(),
                detail: format!(
                    "{}: qualification {q:#x}, rip {:#x}",
                    exit_reason_name(other),
                    self.read(fields::GUEST_RIP)
                ),
            }),
        };
        Some(exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ept_violations_pass_the_address_of_translated_data_accesses() {
        let translated = EPT_LINEAR_VALID | EPT_TRANSLATED;
        let h = ept_violation_hints(translated | EPT_WRITE, 0xfee0_0010, Some(0x10_0010));
        assert_eq!(
            h.access,
            Some(AccessHint {
                gpa: 0xfee0_0010,
                write: true,
                linear: Some(0x10_0010)
            })
        );
        assert_eq!(h.bytes, None);
        assert_eq!(
            ept_violation_hints(translated | EPT_READ, 1, None)
                .access
                .map(|a| a.write),
            Some(false)
        );
        // A guest paging-structure entry, no linear address, a fetch.
        for q in [
            EPT_LINEAR_VALID | EPT_READ,
            EPT_READ,
            EPT_TRANSLATED | EPT_WRITE,
            translated | EPT_FETCH | EPT_READ,
            translated,
        ] {
            assert_eq!(ept_violation_hints(q, 1, None).access, None, "{q:#x}");
        }
    }

    #[test]
    fn io_qualifications_decode_to_port_exits() {
        // OUT DX, AL to 0x3f8.
        assert_eq!(
            io_exit(0x03f8_0000, 0x1001),
            Exit::PortIo {
                port: 0x3f8,
                size: 1,
                write: true,
                next_rip: 0x1001
            }
        );
        // IN EAX, DX from 0xcfc.
        assert_eq!(
            io_exit(0x0cfc_0000 | (1 << 3) | 0b011, 7),
            Exit::PortIo {
                port: 0xcfc,
                size: 4,
                write: false,
                next_rip: 7
            }
        );
        // REP INSW: the emulator's.
        assert_eq!(
            io_exit(0x0170_0000 | (1 << 5) | (1 << 4) | (1 << 3) | 1, 9),
            Exit::emulate(None)
        );
    }
}
