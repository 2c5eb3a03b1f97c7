//! `vmm-bios`: what a guest needs before its operating system runs: the
//! BIOS image and its mapping, the QEMU fw_cfg interface, ACPI and e820
//! tables, and direct Linux/multiboot loaders.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
