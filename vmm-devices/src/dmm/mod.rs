//! Monitors for devices passed through under the device monitor model
//! (`vmm_core::dmm`): each is one guest's checked state machine of a
//! physical device, built on the framework in `vmm-core`.
//!
//! - [`ne2000::Ne2000Monitor`]: the ISA NE2000 (remote DMA, receive ring,
//!   transmit buffer, all in the card's own memory);
//! - [`piix_ide::PiixIdeMonitor`]: PIIX IDE bus-master DMA (PRD tables of
//!   physical addresses).

pub mod ne2000;
pub mod piix_ide;
