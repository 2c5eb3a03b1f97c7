//! Waiting with `poll(2)` for one descriptor to have input: what the
//! input watchers (`crate::vcpu_threads`) and [`crate::read_demand`] both
//! do, with its one `unsafe` call.

use std::os::fd::AsRawFd;
use std::time::Duration;

/// What `poll(2)` said of one descriptor waited on for input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Polled {
    /// Input is there to read.
    Input,
    /// Something else was reported (an error, a hang-up) and no input.
    Other,
    /// Nothing within the timeout, or the call failed.
    Nothing,
}

/// Wait up to `timeout` for `fd` to have input.
pub(crate) fn poll_input(fd: &impl AsRawFd, timeout: Duration) -> Polled {
    let mut fds = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is one live, initialised pollfd and the count says
    // one; the descriptor stays open for the whole call (its owner is
    // borrowed for it).
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    match (n > 0, fds.revents & libc::POLLIN != 0) {
        (true, true) => Polled::Input,
        (true, false) => Polled::Other,
        (false, _) => Polled::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_pipe_has_input_only_once_written_and_a_closed_one_reports_a_hang_up() {
        let (reader, writer) = std::io::pipe().unwrap();
        assert_eq!(poll_input(&reader, Duration::ZERO), Polled::Nothing);
        let mut writer = writer;
        writer.write_all(b"x").unwrap();
        assert_eq!(poll_input(&reader, Duration::ZERO), Polled::Input);
        let (reader, writer) = std::io::pipe().unwrap();
        drop(writer);
        assert_eq!(poll_input(&reader, Duration::ZERO), Polled::Other);
    }
}
