//! `host-glue-baremetal`: the parts of the bare-metal kernel that do not
//! touch hardware, kept in a library so they are tested on the build host.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod cmdline;
pub mod screen_stream;
pub mod screenshot;
