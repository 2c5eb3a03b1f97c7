//! Console attach over the API (`GET /api/v1/vm.console`, docs/API.md):
//! what COM1 writes is copied to the one attached client, and what the
//! client sends is COM1's input, next to whatever `--serial` does.
//!
//! The vCPU thread never waits for a client: output goes through a bounded
//! queue to the client's own writer thread, and what does not fit while
//! the client is slow is dropped and counted, as a serial line without
//! flow control would lose it.

use crate::console::ConsoleInput;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Chunks of output queued for a client before more are dropped.
pub const QUEUE_CHUNKS: usize = 1024;

/// COM1's tap for an attached API client.
#[derive(Default)]
pub struct ConsoleTap {
    input: ConsoleInput,
    client: Mutex<Option<SyncSender<Vec<u8>>>>,
    dropped: AtomicU64,
}

/// Why a client cannot attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// Another client is attached (one at a time, as one serial line).
    Busy,
}

impl ConsoleTap {
    /// A tap with no client.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// COM1 wrote `bytes`: queue them for the client, if one is attached.
    pub fn output(&self, bytes: &[u8]) {
        let Ok(mut client) = self.client.lock() else {
            return;
        };
        let Some(tx) = client.as_ref() else {
            return;
        };
        match tx.try_send(bytes.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            // The client's writer is gone: it left.
            Err(TrySendError::Disconnected(_)) => *client = None,
        }
    }

    /// Attach a client: the output it is to be sent, in order.
    pub fn attach(&self) -> Result<Receiver<Vec<u8>>, AttachError> {
        let mut client = self.client.lock().map_err(|_| AttachError::Busy)?;
        if client.is_some() {
            return Err(AttachError::Busy);
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
        *client = Some(tx);
        Ok(rx)
    }

    /// The client left: the next may attach.
    pub fn detach(&self) {
        if let Ok(mut client) = self.client.lock() {
            *client = None;
        }
    }

    /// A byte the client sent, for COM1's input.
    pub fn send(&self, byte: u8) {
        self.input.push_byte(byte);
    }

    /// The next byte the client sent, for COM1.
    pub fn pop(&self) -> Option<u8> {
        self.input.pop_byte()
    }

    /// Bytes of output a slow client missed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_at_a_time_gets_the_output_and_feeds_the_input() {
        let tap = ConsoleTap::new();
        tap.output(b"before anyone");
        let rx = tap.attach().unwrap();
        assert_eq!(tap.attach().err(), Some(AttachError::Busy));
        tap.output(b"hello");
        assert_eq!(rx.recv().unwrap(), b"hello");
        assert!(rx.try_recv().is_err(), "nothing from before the attach");
        tap.send(b'x');
        assert_eq!((tap.pop(), tap.pop()), (Some(b'x'), None));
        // A client that stops reading loses output, the writer never waits.
        for _ in 0..QUEUE_CHUNKS + 10 {
            tap.output(b"ab");
        }
        assert_eq!(tap.dropped(), 2 * 10);
        drop(rx);
        tap.output(b"gone");
        assert!(tap.attach().is_ok(), "a client that left frees the tap");
    }
}
