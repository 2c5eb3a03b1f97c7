//! `vmm-bios`: what a guest needs before its operating system runs: the
//! BIOS image and its mapping, the QEMU fw_cfg interface, ACPI and e820
//! tables, and direct Linux/multiboot loaders.
//!
//! Two ways to start a guest:
//!
//! - **With a BIOS** (SeaBIOS): [`bios_image::load_bios`] maps the image,
//!   [`seabios::seabios_fw_cfg`] fills a [`fw_cfg::FwCfg`] device with the
//!   memory map, boot order, serial console and ACPI tables; the vCPU starts
//!   at the reset vector.
//! - **Directly**: [`linux::load_linux`] (a bzImage, 64-bit entry) or
//!   [`multiboot::load_multiboot`] (32-bit entry) put the kernel, its
//!   command line, initrd or modules and boot information in RAM and return
//!   an [`entry::EntryState`] for the vCPU backend.
//!
//! Every byte a loader places goes through [`guest_ram`]: RAM of this VM
//! only, checked before it is written.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod bios_image;
pub mod boot_order;
pub mod e820;
pub mod entry;
pub mod fw_cfg;
pub mod guest_ram;
pub mod linux;
pub mod multiboot;
pub mod option_rom;
pub mod seabios;
