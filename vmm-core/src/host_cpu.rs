//! What the processor the VMM runs on says about itself: the CPUID
//! instruction, in one place.
//!
//! Rust made `__cpuid` and `__cpuid_count` safe functions in 1.94; before
//! that they were `unsafe`. Every CPUID the library executes goes through
//! here, so the crate builds on its declared minimum Rust version
//! (`rust-version` in the workspace's Cargo.toml, checked by `cargo xtask
//! test`) as well as on the newest.

pub use core::arch::x86_64::CpuidResult;

/// CPUID leaf `leaf`, subleaf 0.
#[inline]
pub fn cpuid(leaf: u32) -> CpuidResult {
    cpuid_count(leaf, 0)
}

/// CPUID leaf `leaf`, subleaf `subleaf`.
#[inline]
pub fn cpuid_count(leaf: u32, subleaf: u32) -> CpuidResult {
    // A safe function on Rust 1.94 and later: the block is unused there.
    #[allow(unsafe_code, unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 processor and only writes
    // EAX-EDX, which the intrinsic declares; it has no other effect.
    unsafe {
        core::arch::x86_64::__cpuid_count(leaf, subleaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_0_names_the_highest_leaf_and_leaf_1_has_the_fpu() {
        assert!(cpuid(0).eax >= 1);
        // Every x86-64 processor has an on-chip FPU (CPUID.1:EDX[0]).
        assert_eq!(cpuid(1).edx & 1, 1);
        assert_eq!(cpuid(1), cpuid_count(1, 0));
    }
}
