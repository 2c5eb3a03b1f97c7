//! EPT: the nested tables built from the memory map (rebuilt when it
//! changes) and the INVEPT/INVVPID flushes that keep the TLB in step.

use super::capabilities;
use super::fields;
use super::instructions;
use super::VmxVcpu;
use crate::nested_paging::{Ept, NestedTables};
use crate::vcpu::ExitError;
use crate::vm::Vm;
use alloc::format;

impl VmxVcpu {
    /// Rebuild the EPT tables if the memory map changed.
    pub(super) fn sync_ept(&mut self, vm: &Vm) -> Result<(), ExitError> {
        let current = self.ept.as_ref().map(|t| t.generation());
        if current == Some(vm.memory().generation()) {
            // Pages copied on write map the VM's own frames now.
            let changed = match self.ept.as_mut() {
                Some(tables) => tables.update_copied(vm.host(), vm.memory()).map_err(|e| {
                    ExitError::EntryFailed {
                        detail: format!("{e}"),
                    }
                })?,
                None => 0,
            };
            if changed > 0 {
                self.invalidate_ept();
            }
            return Ok(());
        }
        let tables = NestedTables::<Ept>::build(vm.host(), vm.memory()).map_err(|e| {
            ExitError::EntryFailed {
                detail: format!("{e}"),
            }
        })?;
        // Write-back structures, 4-level walk.
        let eptp = tables.root().0 | 6 | (3 << 3);
        self.write(fields::EPT_POINTER, eptp);
        self.ept = Some(tables);
        self.invalidate_ept();
        Ok(())
    }

    /// Drop the TLB's translations through the current EPT tables.
    fn invalidate_ept(&self) {
        let eptp = self.read(fields::EPT_POINTER);
        use capabilities::ept_cap;
        let kind = if self.ept_caps & ept_cap::INVEPT_SINGLE != 0 {
            1
        } else {
            2
        };
        // SAFETY: VMX on; the capability MSR says this INVEPT kind exists.
        // A root address reused from freed tables must not keep stale
        // translations.
        if unsafe { instructions::invept(kind, eptp) }.is_err() {
            log::warn!("INVEPT failed");
        }
    }

    /// Drop the TLB entries tagged with this vCPU's VPID (without VPID,
    /// every VM entry and exit flushes them anyway).
    pub(super) fn flush_guest_tlb(&self) {
        if !self.controls.vpid {
            return;
        }
        use capabilities::ept_cap;
        let kind = if self.ept_caps & ept_cap::INVVPID_SINGLE != 0 {
            1
        } else {
            2
        };
        // SAFETY: VMX on; the capability MSR says this INVVPID kind exists.
        if unsafe { instructions::invvpid(kind, self.vpid) }.is_err() {
            log::warn!("INVVPID failed");
        }
    }
}
