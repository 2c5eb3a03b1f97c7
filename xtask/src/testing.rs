//! What the integration tests in `xtask/tests/` share in reading the
//! bare-metal host's console (its own lines, and each VM's guest console
//! as lines `[vm N] ...`) and in working out what a guest should print
//! there. Each check panics with what it looked at, as a test's assertion
//! does.

use std::io::Write;
use std::process::{Command, Stdio};

/// The first line of `console` that starts with `prefix`; panics with
/// the console when there is none.
pub fn line_starting<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}: {console}"))
}

/// Check that VM `vm`'s guest pinged 10.0.0.`peer` three times and had
/// every answer, as the virtio CD's init reports it (`VMM-VIRTIO: ping`,
/// then ping's own summary line).
pub fn assert_pinged(console: &str, vm: u32, peer: u8) {
    let ping = format!("[vm {vm}] VMM-VIRTIO: ping 10.0.0.{peer}: ");
    let line = console
        .lines()
        .find(|l| l.starts_with(&ping))
        .unwrap_or_else(|| panic!("vm {vm} got no answer: {console}"));
    assert!(
        line.contains(&format!("bytes from 10.0.0.{peer}")),
        "{line}"
    );
    assert!(
        console.contains(&format!(
            "[vm {vm}] VMM-VIRTIO: 3 packets transmitted, 3 packets received"
        )),
        "{console}"
    );
}

/// The MD5 sum of `bytes` in hex, from the build host's `md5sum`: what a
/// guest's busybox `md5sum` prints for the same bytes. Panics when
/// `md5sum` cannot be run.
pub fn md5sum(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child
        .stdin
        .take()
        .expect("md5sum's stdin")
        .write_all(bytes)
        .expect("writing to md5sum");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
