//! The smallest client of the control API: one request per connection,
//! for `vmm snapshot` (and tests). Answers are read whole (the server
//! sends `Content-Length` and closes on `Connection: close`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a call waits for its answer (a snapshot of a large guest
/// takes a while).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Send `METHOD /api/v1/ENDPOINT` with `body` (JSON, or empty) to the API
/// socket at `socket`; the answer's status and JSON body.
pub fn call(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("cannot connect: {e}"))?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {}{endpoint} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        super::PREFIX,
        body.len()
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| format!("no answer: {e}"))?;
    parse(&reply).ok_or_else(|| "the answer is not HTTP with a JSON body".into())
}

/// Attach to the guest's COM1 through the API socket at `socket`
/// (`GET /api/v1/vm.console`): the connection, now the console's, or why
/// not (the VM's refusal, with its reason, or a socket that cannot be
/// reached).
pub fn attach_console(socket: &Path) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("cannot connect: {e}"))?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {}vm.console HTTP/1.1\r\nHost: localhost\r\n\r\n",
        super::PREFIX
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    // The head byte by byte: what follows it is already the console's.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) if head.len() < 16 << 10 => head.push(byte[0]),
            Ok(_) => break,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    if head.starts_with(b"HTTP/1.1 101 ") {
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
        return Ok(s);
    }
    // A refusal: its JSON body says why.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    head.extend_from_slice(&rest);
    Err(match parse(&head) {
        Some((status, body)) => format!(
            "{} ({status} {})",
            body["message"].as_str().unwrap_or("refused"),
            body["error"].as_str().unwrap_or("")
        ),
        None => "the answer is not HTTP".into(),
    })
}

/// Status and JSON body of a whole HTTP answer.
fn parse(reply: &[u8]) -> Option<(u16, serde_json::Value)> {
    let text = std::str::from_utf8(reply).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_junk_does_not() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse(ok), Some((200, serde_json::json!({}))));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n\r\nnot json"), None);
        assert_eq!(parse(b"\xff\xfe"), None);
        let missing = call(Path::new("/nonexistent/vmm.sock"), "GET", "vm.info", "");
        assert!(missing.unwrap_err().starts_with("cannot connect"));
    }
}
