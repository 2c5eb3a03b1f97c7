//! VMCS field encodings (Intel SDM vol. 3, appendix B) and the VMX
//! capability MSRs (appendix A), under the names this backend uses; the
//! numbers come from the `x86` crate (`x86::vmx::vmcs`, `x86::msr`). For a
//! 64-bit field the name stands for its full (not high-half) encoding.

#![allow(missing_docs)]

use x86::vmx::vmcs::{control, guest, host, ro};

// 16-bit fields.
pub const VPID: u32 = control::VPID;
pub const GUEST_ES_SELECTOR: u32 = guest::ES_SELECTOR;
pub const GUEST_LDTR_SELECTOR: u32 = guest::LDTR_SELECTOR;
pub const GUEST_TR_SELECTOR: u32 = guest::TR_SELECTOR;
pub const HOST_ES_SELECTOR: u32 = host::ES_SELECTOR;
pub const HOST_CS_SELECTOR: u32 = host::CS_SELECTOR;
pub const HOST_SS_SELECTOR: u32 = host::SS_SELECTOR;
pub const HOST_DS_SELECTOR: u32 = host::DS_SELECTOR;
pub const HOST_FS_SELECTOR: u32 = host::FS_SELECTOR;
pub const HOST_GS_SELECTOR: u32 = host::GS_SELECTOR;
pub const HOST_TR_SELECTOR: u32 = host::TR_SELECTOR;

// 64-bit fields.
pub const IO_BITMAP_A: u32 = control::IO_BITMAP_A_ADDR_FULL;
pub const IO_BITMAP_B: u32 = control::IO_BITMAP_B_ADDR_FULL;
pub const MSR_BITMAP: u32 = control::MSR_BITMAPS_ADDR_FULL;
pub const EXIT_MSR_STORE_ADDR: u32 = control::VMEXIT_MSR_STORE_ADDR_FULL;
pub const ENTRY_MSR_LOAD_ADDR: u32 = control::VMENTRY_MSR_LOAD_ADDR_FULL;
pub const TSC_OFFSET: u32 = control::TSC_OFFSET_FULL;
pub const EPT_POINTER: u32 = control::EPTP_FULL;
pub const GUEST_PHYSICAL_ADDRESS: u32 = ro::GUEST_PHYSICAL_ADDR_FULL;
// Natural-width read-only field.
pub const GUEST_LINEAR_ADDRESS: u32 = ro::GUEST_LINEAR_ADDR;
pub const VMCS_LINK_POINTER: u32 = guest::LINK_PTR_FULL;
pub const GUEST_IA32_DEBUGCTL: u32 = guest::IA32_DEBUGCTL_FULL;
pub const GUEST_IA32_PAT: u32 = guest::IA32_PAT_FULL;
pub const GUEST_PREEMPTION_TIMER: u32 = guest::VMX_PREEMPTION_TIMER_VALUE;
pub const GUEST_IA32_EFER: u32 = guest::IA32_EFER_FULL;
pub const GUEST_PDPTE0: u32 = guest::PDPTE0_FULL;
pub const HOST_IA32_PAT: u32 = host::IA32_PAT_FULL;
pub const HOST_IA32_EFER: u32 = host::IA32_EFER_FULL;

// 32-bit fields.
pub const PIN_BASED_CONTROLS: u32 = control::PINBASED_EXEC_CONTROLS;
pub const PROC_BASED_CONTROLS: u32 = control::PRIMARY_PROCBASED_EXEC_CONTROLS;
pub const EXCEPTION_BITMAP: u32 = control::EXCEPTION_BITMAP;
pub const PLE_GAP: u32 = control::PLE_GAP;
pub const PLE_WINDOW: u32 = control::PLE_WINDOW;
pub const CR3_TARGET_COUNT: u32 = control::CR3_TARGET_COUNT;
pub const EXIT_CONTROLS: u32 = control::VMEXIT_CONTROLS;
pub const EXIT_MSR_STORE_COUNT: u32 = control::VMEXIT_MSR_STORE_COUNT;
pub const EXIT_MSR_LOAD_COUNT: u32 = control::VMEXIT_MSR_LOAD_COUNT;
pub const ENTRY_CONTROLS: u32 = control::VMENTRY_CONTROLS;
pub const ENTRY_MSR_LOAD_COUNT: u32 = control::VMENTRY_MSR_LOAD_COUNT;
pub const ENTRY_INTERRUPTION_INFO: u32 = control::VMENTRY_INTERRUPTION_INFO_FIELD;
pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = control::VMENTRY_EXCEPTION_ERR_CODE;
pub const ENTRY_INSTRUCTION_LENGTH: u32 = control::VMENTRY_INSTRUCTION_LEN;
pub const SECONDARY_CONTROLS: u32 = control::SECONDARY_PROCBASED_EXEC_CONTROLS;
pub const VM_INSTRUCTION_ERROR: u32 = ro::VM_INSTRUCTION_ERROR;
pub const EXIT_REASON: u32 = ro::EXIT_REASON;
pub const EXIT_INTERRUPTION_INFO: u32 = ro::VMEXIT_INTERRUPTION_INFO;
pub const IDT_VECTORING_INFO: u32 = ro::IDT_VECTORING_INFO;
pub const IDT_VECTORING_ERROR_CODE: u32 = ro::IDT_VECTORING_ERR_CODE;
pub const EXIT_INSTRUCTION_LENGTH: u32 = ro::VMEXIT_INSTRUCTION_LEN;
pub const GUEST_ES_LIMIT: u32 = guest::ES_LIMIT;
pub const GUEST_LDTR_LIMIT: u32 = guest::LDTR_LIMIT;
pub const GUEST_TR_LIMIT: u32 = guest::TR_LIMIT;
pub const GUEST_GDTR_LIMIT: u32 = guest::GDTR_LIMIT;
pub const GUEST_IDTR_LIMIT: u32 = guest::IDTR_LIMIT;
pub const GUEST_ES_ACCESS_RIGHTS: u32 = guest::ES_ACCESS_RIGHTS;
pub const GUEST_LDTR_ACCESS_RIGHTS: u32 = guest::LDTR_ACCESS_RIGHTS;
pub const GUEST_TR_ACCESS_RIGHTS: u32 = guest::TR_ACCESS_RIGHTS;
pub const GUEST_INTERRUPTIBILITY: u32 = guest::INTERRUPTIBILITY_STATE;
pub const GUEST_ACTIVITY_STATE: u32 = guest::ACTIVITY_STATE;
pub const GUEST_SYSENTER_CS: u32 = guest::IA32_SYSENTER_CS;
pub const HOST_SYSENTER_CS: u32 = host::IA32_SYSENTER_CS;

// Natural-width fields.
pub const CR0_GUEST_HOST_MASK: u32 = control::CR0_GUEST_HOST_MASK;
pub const CR4_GUEST_HOST_MASK: u32 = control::CR4_GUEST_HOST_MASK;
pub const CR0_READ_SHADOW: u32 = control::CR0_READ_SHADOW;
pub const CR4_READ_SHADOW: u32 = control::CR4_READ_SHADOW;
pub const EXIT_QUALIFICATION: u32 = ro::EXIT_QUALIFICATION;
pub const GUEST_CR0: u32 = guest::CR0;
pub const GUEST_CR3: u32 = guest::CR3;
pub const GUEST_CR4: u32 = guest::CR4;
pub const GUEST_ES_BASE: u32 = guest::ES_BASE;
pub const GUEST_LDTR_BASE: u32 = guest::LDTR_BASE;
pub const GUEST_TR_BASE: u32 = guest::TR_BASE;
pub const GUEST_GDTR_BASE: u32 = guest::GDTR_BASE;
pub const GUEST_IDTR_BASE: u32 = guest::IDTR_BASE;
pub const GUEST_DR7: u32 = guest::DR7;
pub const GUEST_RSP: u32 = guest::RSP;
pub const GUEST_RIP: u32 = guest::RIP;
pub const GUEST_RFLAGS: u32 = guest::RFLAGS;
pub const GUEST_PENDING_DEBUG: u32 = guest::PENDING_DBG_EXCEPTIONS;
pub const GUEST_SYSENTER_ESP: u32 = guest::IA32_SYSENTER_ESP;
pub const GUEST_SYSENTER_EIP: u32 = guest::IA32_SYSENTER_EIP;
pub const HOST_CR0: u32 = host::CR0;
pub const HOST_CR3: u32 = host::CR3;
pub const HOST_CR4: u32 = host::CR4;
pub const HOST_FS_BASE: u32 = host::FS_BASE;
pub const HOST_GS_BASE: u32 = host::GS_BASE;
pub const HOST_TR_BASE: u32 = host::TR_BASE;
pub const HOST_GDTR_BASE: u32 = host::GDTR_BASE;
pub const HOST_IDTR_BASE: u32 = host::IDTR_BASE;
pub const HOST_SYSENTER_ESP: u32 = host::IA32_SYSENTER_ESP;
pub const HOST_SYSENTER_EIP: u32 = host::IA32_SYSENTER_EIP;
pub const HOST_RSP: u32 = host::RSP;
pub const HOST_RIP: u32 = host::RIP;

/// The guest segment fields of `segment` (ES, CS, SS, DS, FS, GS in
/// encoding order): selector, limit, access rights, base. Each kind is laid
/// out with a stride of 2 from ES.
pub fn guest_segment(index: u32) -> (u32, u32, u32, u32) {
    (
        GUEST_ES_SELECTOR + 2 * index,
        GUEST_ES_LIMIT + 2 * index,
        GUEST_ES_ACCESS_RIGHTS + 2 * index,
        GUEST_ES_BASE + 2 * index,
    )
}

/// Capability and control MSRs.
pub mod msr {
    pub const FEATURE_CONTROL: u32 = x86::msr::IA32_FEATURE_CONTROL;
    pub const SYSENTER_CS: u32 = x86::msr::IA32_SYSENTER_CS;
    pub const SYSENTER_ESP: u32 = x86::msr::IA32_SYSENTER_ESP;
    pub const SYSENTER_EIP: u32 = x86::msr::IA32_SYSENTER_EIP;
    pub const PAT: u32 = x86::msr::IA32_PAT;
    pub const VMX_BASIC: u32 = x86::msr::IA32_VMX_BASIC;
    pub const VMX_PINBASED: u32 = x86::msr::IA32_VMX_PINBASED_CTLS;
    pub const VMX_PROCBASED: u32 = x86::msr::IA32_VMX_PROCBASED_CTLS;
    pub const VMX_EXIT: u32 = x86::msr::IA32_VMX_EXIT_CTLS;
    pub const VMX_ENTRY: u32 = x86::msr::IA32_VMX_ENTRY_CTLS;
    pub const VMX_CR0_FIXED0: u32 = x86::msr::IA32_VMX_CR0_FIXED0;
    pub const VMX_CR0_FIXED1: u32 = x86::msr::IA32_VMX_CR0_FIXED1;
    pub const VMX_CR4_FIXED0: u32 = x86::msr::IA32_VMX_CR4_FIXED0;
    pub const VMX_CR4_FIXED1: u32 = x86::msr::IA32_VMX_CR4_FIXED1;
    pub const VMX_PROCBASED2: u32 = x86::msr::IA32_VMX_PROCBASED_CTLS2;
    pub const VMX_EPT_VPID_CAP: u32 = x86::msr::IA32_VMX_EPT_VPID_CAP;
    pub const VMX_MISC: u32 = x86::msr::IA32_VMX_MISC;
    pub const VMX_TRUE_PINBASED: u32 = x86::msr::IA32_VMX_TRUE_PINBASED_CTLS;
    pub const VMX_TRUE_PROCBASED: u32 = x86::msr::IA32_VMX_TRUE_PROCBASED_CTLS;
    pub const VMX_TRUE_EXIT: u32 = x86::msr::IA32_VMX_TRUE_EXIT_CTLS;
    pub const VMX_TRUE_ENTRY: u32 = x86::msr::IA32_VMX_TRUE_ENTRY_CTLS;
    pub const EFER: u32 = x86::msr::IA32_EFER;
    pub const STAR: u32 = x86::msr::IA32_STAR;
    pub const LSTAR: u32 = x86::msr::IA32_LSTAR;
    pub const CSTAR: u32 = x86::msr::IA32_CSTAR;
    pub const SFMASK: u32 = x86::msr::IA32_FMASK;
    pub const FS_BASE: u32 = x86::msr::IA32_FS_BASE;
    pub const GS_BASE: u32 = x86::msr::IA32_GS_BASE;
    pub const KERNEL_GS_BASE: u32 = x86::msr::IA32_KERNEL_GSBASE;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `x86` crate gives the encodings the SDM lists (and this file
    /// had written out before it used the crate).
    #[test]
    fn encodings_follow_the_sdm() {
        assert_eq!(VPID, 0x0000);
        assert_eq!(GUEST_ES_SELECTOR, 0x0800);
        assert_eq!(GUEST_LDTR_SELECTOR, 0x080c);
        assert_eq!(GUEST_TR_SELECTOR, 0x080e);
        assert_eq!(HOST_ES_SELECTOR, 0x0c00);
        assert_eq!(HOST_CS_SELECTOR, 0x0c02);
        assert_eq!(HOST_SS_SELECTOR, 0x0c04);
        assert_eq!(HOST_DS_SELECTOR, 0x0c06);
        assert_eq!(HOST_FS_SELECTOR, 0x0c08);
        assert_eq!(HOST_GS_SELECTOR, 0x0c0a);
        assert_eq!(HOST_TR_SELECTOR, 0x0c0c);
        assert_eq!(IO_BITMAP_A, 0x2000);
        assert_eq!(IO_BITMAP_B, 0x2002);
        assert_eq!(MSR_BITMAP, 0x2004);
        assert_eq!(EXIT_MSR_STORE_ADDR, 0x2006);
        assert_eq!(ENTRY_MSR_LOAD_ADDR, 0x200a);
        assert_eq!(TSC_OFFSET, 0x2010);
        assert_eq!(EPT_POINTER, 0x201a);
        assert_eq!(GUEST_PHYSICAL_ADDRESS, 0x2400);
        assert_eq!(VMCS_LINK_POINTER, 0x2800);
        assert_eq!(GUEST_IA32_DEBUGCTL, 0x2802);
        assert_eq!(GUEST_IA32_PAT, 0x2804);
        assert_eq!(GUEST_IA32_EFER, 0x2806);
        assert_eq!(GUEST_PDPTE0, 0x280a);
        assert_eq!(HOST_IA32_PAT, 0x2c00);
        assert_eq!(HOST_IA32_EFER, 0x2c02);
        assert_eq!(PIN_BASED_CONTROLS, 0x4000);
        assert_eq!(PROC_BASED_CONTROLS, 0x4002);
        assert_eq!(EXCEPTION_BITMAP, 0x4004);
        assert_eq!(CR3_TARGET_COUNT, 0x400a);
        assert_eq!(EXIT_CONTROLS, 0x400c);
        assert_eq!(EXIT_MSR_STORE_COUNT, 0x400e);
        assert_eq!(EXIT_MSR_LOAD_COUNT, 0x4010);
        assert_eq!(ENTRY_CONTROLS, 0x4012);
        assert_eq!(ENTRY_MSR_LOAD_COUNT, 0x4014);
        assert_eq!(ENTRY_INTERRUPTION_INFO, 0x4016);
        assert_eq!(ENTRY_EXCEPTION_ERROR_CODE, 0x4018);
        assert_eq!(ENTRY_INSTRUCTION_LENGTH, 0x401a);
        assert_eq!(SECONDARY_CONTROLS, 0x401e);
        assert_eq!(PLE_GAP, 0x4020);
        assert_eq!(PLE_WINDOW, 0x4022);
        assert_eq!(VM_INSTRUCTION_ERROR, 0x4400);
        assert_eq!(EXIT_REASON, 0x4402);
        assert_eq!(EXIT_INTERRUPTION_INFO, 0x4404);
        assert_eq!(IDT_VECTORING_INFO, 0x4408);
        assert_eq!(IDT_VECTORING_ERROR_CODE, 0x440a);
        assert_eq!(EXIT_INSTRUCTION_LENGTH, 0x440c);
        assert_eq!(GUEST_ES_LIMIT, 0x4800);
        assert_eq!(GUEST_LDTR_LIMIT, 0x480c);
        assert_eq!(GUEST_TR_LIMIT, 0x480e);
        assert_eq!(GUEST_GDTR_LIMIT, 0x4810);
        assert_eq!(GUEST_IDTR_LIMIT, 0x4812);
        assert_eq!(GUEST_ES_ACCESS_RIGHTS, 0x4814);
        assert_eq!(GUEST_LDTR_ACCESS_RIGHTS, 0x4820);
        assert_eq!(GUEST_TR_ACCESS_RIGHTS, 0x4822);
        assert_eq!(GUEST_INTERRUPTIBILITY, 0x4824);
        assert_eq!(GUEST_ACTIVITY_STATE, 0x4826);
        assert_eq!(GUEST_SYSENTER_CS, 0x482a);
        assert_eq!(HOST_SYSENTER_CS, 0x4c00);
        assert_eq!(CR0_GUEST_HOST_MASK, 0x6000);
        assert_eq!(CR4_GUEST_HOST_MASK, 0x6002);
        assert_eq!(CR0_READ_SHADOW, 0x6004);
        assert_eq!(CR4_READ_SHADOW, 0x6006);
        assert_eq!(EXIT_QUALIFICATION, 0x6400);
        assert_eq!(GUEST_CR0, 0x6800);
        assert_eq!(GUEST_CR3, 0x6802);
        assert_eq!(GUEST_CR4, 0x6804);
        assert_eq!(GUEST_ES_BASE, 0x6806);
        assert_eq!(GUEST_LDTR_BASE, 0x6812);
        assert_eq!(GUEST_TR_BASE, 0x6814);
        assert_eq!(GUEST_GDTR_BASE, 0x6816);
        assert_eq!(GUEST_IDTR_BASE, 0x6818);
        assert_eq!(GUEST_DR7, 0x681a);
        assert_eq!(GUEST_RSP, 0x681c);
        assert_eq!(GUEST_RIP, 0x681e);
        assert_eq!(GUEST_RFLAGS, 0x6820);
        assert_eq!(GUEST_PENDING_DEBUG, 0x6822);
        assert_eq!(GUEST_SYSENTER_ESP, 0x6824);
        assert_eq!(GUEST_SYSENTER_EIP, 0x6826);
        assert_eq!(HOST_CR0, 0x6c00);
        assert_eq!(HOST_CR3, 0x6c02);
        assert_eq!(HOST_CR4, 0x6c04);
        assert_eq!(HOST_FS_BASE, 0x6c06);
        assert_eq!(HOST_GS_BASE, 0x6c08);
        assert_eq!(HOST_TR_BASE, 0x6c0a);
        assert_eq!(HOST_GDTR_BASE, 0x6c0c);
        assert_eq!(HOST_IDTR_BASE, 0x6c0e);
        assert_eq!(HOST_SYSENTER_ESP, 0x6c10);
        assert_eq!(HOST_SYSENTER_EIP, 0x6c12);
        assert_eq!(HOST_RSP, 0x6c14);
        assert_eq!(HOST_RIP, 0x6c16);
        assert_eq!(msr::FEATURE_CONTROL, 0x3a);
        assert_eq!(msr::SYSENTER_CS, 0x174);
        assert_eq!(msr::SYSENTER_ESP, 0x175);
        assert_eq!(msr::SYSENTER_EIP, 0x176);
        assert_eq!(msr::PAT, 0x277);
        assert_eq!(msr::VMX_BASIC, 0x480);
        assert_eq!(msr::VMX_PINBASED, 0x481);
        assert_eq!(msr::VMX_PROCBASED, 0x482);
        assert_eq!(msr::VMX_EXIT, 0x483);
        assert_eq!(msr::VMX_ENTRY, 0x484);
        assert_eq!(msr::VMX_CR0_FIXED0, 0x486);
        assert_eq!(msr::VMX_CR0_FIXED1, 0x487);
        assert_eq!(msr::VMX_CR4_FIXED0, 0x488);
        assert_eq!(msr::VMX_CR4_FIXED1, 0x489);
        assert_eq!(msr::VMX_PROCBASED2, 0x48b);
        assert_eq!(msr::VMX_EPT_VPID_CAP, 0x48c);
        assert_eq!(msr::VMX_TRUE_PINBASED, 0x48d);
        assert_eq!(msr::VMX_TRUE_PROCBASED, 0x48e);
        assert_eq!(msr::VMX_TRUE_EXIT, 0x48f);
        assert_eq!(msr::VMX_TRUE_ENTRY, 0x490);
        assert_eq!(msr::EFER, 0xc000_0080);
        assert_eq!(msr::STAR, 0xc000_0081);
        assert_eq!(msr::LSTAR, 0xc000_0082);
        assert_eq!(msr::CSTAR, 0xc000_0083);
        assert_eq!(msr::SFMASK, 0xc000_0084);
        assert_eq!(msr::FS_BASE, 0xc000_0100);
        assert_eq!(msr::GS_BASE, 0xc000_0101);
        assert_eq!(msr::KERNEL_GS_BASE, 0xc000_0102);
    }
}
