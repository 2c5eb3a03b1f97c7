//! Save and restore: the device capability that turns a device's
//! guest-visible state into versioned plain data and back.
//!
//! A device that has state the guest can see answers
//! [`super::Device::save_restore`] with a [`SaveRestore`]. Its state is a
//! plain-data struct of its own (no `Arc`, no host handles), encoded with
//! [`encode`] (serde + postcard: compact, `no_std`, and a decoder that
//! returns an error, never panics, on hostile bytes) and tagged with the
//! device's own format version. [`SaveRestore::restore_state`] refuses an
//! unknown version ([`StateError::UnsupportedVersion`]), bytes that do not
//! decode ([`StateError::Malformed`]) and decoded values that break the
//! device's invariants ([`StateError::Invalid`]) before it changes
//! anything, so a refused restore leaves the device as it was.
//!
//! What is *not* device state: host-side backends (block images, character
//! backends) and wiring (interrupt lines, shared handles). A restore goes
//! into a freshly built machine of the same shape, whose devices are already
//! attached to that machine's host backends.
//!
//! # Shared state
//!
//! State reachable from several places (the PIC pair behind the PIC ports,
//! the ISA lines and the vCPU; the A20 gate behind port 0x92 and the i8042)
//! is saved by exactly one device: the one named in its module's
//! documentation. Interrupt *sources* save their output level and drive it
//! again on restore, so the lines between devices (which are wiring, not
//! state) come back to the same levels; controllers take a repeated level
//! as no change.
//!
//! # Time
//!
//! Device times are `Host::now_ns` values, and the restoring host's clock
//! need not read what the saving host's did. Every saved time is therefore
//! relative to the clock at save ([`RelTime`]): a timer 3 ms from firing
//! when saved is 3 ms from firing after the restore, a counter started
//! 10 ms before the save has run 10 ms after it. Time the machine spends
//! saved does not pass for the guest (as for a paused VM); a guest with a
//! paravirtual or NTP clock catches up itself. A time further back than the
//! restoring host's clock has run (a counter started an hour before the
//! save, restored into a host booted a second ago) is put at the host's
//! zero: the counter's phase then differs, and nothing fires twice.
//!
//! # A whole machine
//!
//! [`crate::vm::Vm::save_devices`] saves every device that has the
//! capability, in device order, as [`SavedDevice`]s (name, version, bytes);
//! [`crate::vm::Vm::restore_devices`] checks that an identically built
//! machine has the same devices with the capability, by count and name,
//! before it restores any.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::DeviceContext;

/// Saving and restoring a device's guest-visible state.
pub trait SaveRestore {
    /// The format version [`SaveRestore::save_state`] writes.
    fn state_version(&self) -> u32;

    /// The device's guest-visible state, in the format of
    /// [`SaveRestore::state_version`]. `ctx` gives the time (saved times
    /// are relative to it). Saving changes nothing the guest can see.
    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError>;

    /// Replace the device's state with `bytes` saved in format `version`.
    /// The device is one built like the one that saved (same configuration,
    /// same host backends attached). Everything is checked before anything
    /// changes: on an error the device is as it was. `ctx` gives the time
    /// and takes the requests that bring the VM in line with the restored
    /// state (memory map, port and MMIO claims).
    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError>;
}

/// Why a state could not be saved or restored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The saved format version is not one this device reads.
    UnsupportedVersion {
        /// The version in the saved state.
        found: u32,
        /// The version this device reads and writes.
        supported: u32,
    },
    /// The bytes do not decode as the device's state (truncated, trailing
    /// bytes, an impossible enum tag or length).
    Malformed,
    /// The state decoded but a value is impossible for the device (an index
    /// out of range, a buffer longer than the device has).
    Invalid {
        /// Which value.
        field: &'static str,
    },
    /// The state does not fit the device it is restored into (a drive the
    /// saving machine had and this one has not, other PCI functions).
    Mismatch {
        /// What differs.
        what: &'static str,
    },
    /// The state could not be encoded.
    Encode,
    /// The saved list has a different number of devices with state than
    /// the machine.
    DeviceCount {
        /// Devices in the saved list.
        saved: usize,
        /// Devices with the capability in the machine.
        present: usize,
    },
    /// The device at a position of the saved list has another name than
    /// the machine's.
    DeviceName {
        /// Position in the list.
        index: usize,
        /// Name in the saved list.
        saved: String,
        /// Name in the machine.
        present: String,
    },
    /// A device refused its state.
    Device {
        /// The device's name.
        name: String,
        /// Its error.
        error: Box<StateError>,
    },
    /// The VM could not apply what a restored device asked for (a claim or
    /// memory mapping); the VM is stopped with the reason.
    Request {
        /// The device's name.
        name: String,
    },
}

impl core::error::Error for StateError {}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::UnsupportedVersion { found, supported } => {
                write!(f, "state version {found} (this device reads {supported})")
            }
            StateError::Malformed => write!(f, "malformed state"),
            StateError::Invalid { field } => write!(f, "impossible value of {field}"),
            StateError::Mismatch { what } => write!(f, "state does not fit the device: {what}"),
            StateError::Encode => write!(f, "state could not be encoded"),
            StateError::DeviceCount { saved, present } => write!(
                f,
                "{saved} saved devices, but the machine has {present} with state"
            ),
            StateError::DeviceName {
                index,
                saved,
                present,
            } => write!(
                f,
                "saved device {index} is {saved}, the machine's is {present}"
            ),
            StateError::Device { name, error } => write!(f, "{name}: {error}"),
            StateError::Request { name } => {
                write!(f, "{name}: the VM could not apply the restored state")
            }
        }
    }
}

/// One device's saved state, as a whole-machine snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// The device's name ([`super::Device::name`]).
    pub name: String,
    /// The device's format version.
    pub version: u32,
    /// The encoded state.
    pub bytes: Vec<u8>,
}

/// Encode a plain-data state.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_allocvec(state).map_err(|_| StateError::Encode)
}

/// Decode a plain-data state; every byte must be used.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    let (state, rest) = postcard::take_from_bytes(bytes).map_err(|_| StateError::Malformed)?;
    if !rest.is_empty() {
        return Err(StateError::Malformed);
    }
    Ok(state)
}

/// Decode `bytes` of `version` as a `T` when `version` is `supported`.
pub fn decode_version<T: DeserializeOwned>(
    version: u32,
    supported: u32,
    bytes: &[u8],
) -> Result<T, StateError> {
    if version != supported {
        return Err(StateError::UnsupportedVersion {
            found: version,
            supported,
        });
    }
    decode(bytes)
}

/// `Ok` when `ok`, else [`StateError::Invalid`] naming `field`.
pub fn check(ok: bool, field: &'static str) -> Result<(), StateError> {
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid { field })
    }
}

/// A host time saved relative to the host clock at save: nanoseconds from
/// then to the time (negative for a time in the past). See the module
/// documentation for the choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelTime(pub i64);

impl RelTime {
    /// `time` as seen from `now`.
    pub fn from_host(time: u64, now: u64) -> Self {
        let d = i128::from(time) - i128::from(now);
        Self(d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }

    /// The host time at the same distance from `now` (clamped to the
    /// host clock's range: a time before the host's zero is its zero).
    pub fn to_host(self, now: u64) -> u64 {
        let t = i128::from(now) + i128::from(self.0);
        t.clamp(0, i128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u8,
        b: Option<u64>,
        c: Vec<u16>,
        d: [u32; 4],
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = Sample {
            a: 7,
            b: Some(1 << 40),
            c: vec![1, 2, 3],
            d: [9; 4],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(decode_version::<Sample>(1, 1, &bytes).unwrap(), s);
        assert_eq!(
            decode_version::<Sample>(2, 1, &bytes),
            Err(StateError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode::<Sample>(&long), Err(StateError::Malformed));
        for n in 0..bytes.len() {
            assert_eq!(decode::<Sample>(&bytes[..n]), Err(StateError::Malformed));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode::<Sample>(&bytes);
            let _ = decode::<SavedDevice>(&bytes);
        }
    }

    #[test]
    fn relative_times() {
        let t = RelTime::from_host(1_000, 5_000);
        assert_eq!(t, RelTime(-4_000));
        assert_eq!(t.to_host(10_000), 6_000);
        assert_eq!(t.to_host(1_000), 0, "clamped at the host's zero");
        assert_eq!(RelTime::from_host(7, 2).to_host(100), 105);
        assert_eq!(RelTime(i64::MAX).to_host(u64::MAX), u64::MAX);
    }
}
