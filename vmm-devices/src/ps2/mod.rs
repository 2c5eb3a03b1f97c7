//! The PS/2 devices behind the i8042 ([`crate::i8042`]): a keyboard on its
//! first port, a mouse on its second, and the scan code sets the keyboard
//! speaks. One device per file; the controller owns one of each and moves
//! bytes between them and the guest.

pub mod keyboard;
pub mod mouse;
pub mod scancode;

pub use keyboard::Ps2Keyboard;
pub use mouse::Ps2Mouse;
