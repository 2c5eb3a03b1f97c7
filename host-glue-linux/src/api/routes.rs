//! The API's endpoints: which request asks for which [`Command`], and the
//! error model. Pure: [`serve`] takes the bytes a client sent and a
//! function that carries a command out on the VM, so the whole path from
//! bytes to response is tested (and fuzzed) without a socket or a VM.
//!
//! A request is checked whole (HTTP, path, method, body) before its
//! command goes to the VM: a malformed one gets its 4xx answer and the VM
//! is never asked.

use super::http::{self, HttpError, Parsed, Request, Response};

/// The prefix of every endpoint, as cloud-hypervisor's API has it.
pub const PREFIX: &str = "/api/v1/";

/// What a request asks the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `GET /api/v1/vm.info`: the machine and its state.
    Info,
    /// `GET /api/v1/vm.stats`: the exit statistics (docs/STATS.md).
    Stats,
    /// `PUT /api/v1/vm.pause`: stop the vCPU (the whole guest) until resumed.
    Pause,
    /// `PUT /api/v1/vm.resume`: run a paused guest again.
    Resume,
    /// `PUT /api/v1/vm.power-button`: press the ACPI power button.
    PowerButton,
    /// `PUT /api/v1/vm.reset`: reset the machine (as the reset button).
    Reset,
    /// `PUT /api/v1/vm.snapshot` with `{"destination": PATH}`: write a
    /// snapshot of the paused VM to the file PATH (docs/SNAPSHOT.md).
    Snapshot {
        /// The file to write (created or replaced).
        destination: String,
    },
    /// `GET /api/v1/vm.console`: attach to the guest's COM1. The answer is
    /// `101 Switching Protocols`; from then on the connection carries
    /// COM1's output to the client and the client's bytes to COM1's input,
    /// until either side closes. Served by the API's own thread, not the
    /// VM's.
    ConsoleAttach,
}

impl Command {
    /// Whether carrying it out changes the VM (else it only reads).
    pub fn changes_vm(&self) -> bool {
        !matches!(
            self,
            Command::Info | Command::Stats | Command::Snapshot { .. } | Command::ConsoleAttach
        )
    }
}

/// One endpoint: its name after [`PREFIX`], its method and its command.
const ENDPOINTS: [(&str, &str, Command); 8] = [
    ("vm.info", "GET", Command::Info),
    ("vm.stats", "GET", Command::Stats),
    ("vm.pause", "PUT", Command::Pause),
    ("vm.resume", "PUT", Command::Resume),
    ("vm.power-button", "PUT", Command::PowerButton),
    ("vm.reset", "PUT", Command::Reset),
    (
        "vm.snapshot",
        "PUT",
        Command::Snapshot {
            destination: String::new(),
        },
    ),
    ("vm.console", "GET", Command::ConsoleAttach),
];

/// The command `request` asks for, or the error response.
pub fn route(request: &Request) -> Result<Command, Response> {
    let name = request.path.strip_prefix(PREFIX);
    let Some((_, method, command)) = ENDPOINTS.into_iter().find(|e| Some(e.0) == name) else {
        return Err(Response::error(
            404,
            "not_found",
            format!(
                "no endpoint {}: the API has {}",
                printable(&request.path),
                ENDPOINTS
                    .iter()
                    .map(|e| format!("{} {PREFIX}{}", e.1, e.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if request.method != method {
        let mut r = Response::error(
            405,
            "method_not_allowed",
            format!(
                "{} takes {method}, not {}",
                request.path,
                printable(&request.method)
            ),
        );
        r.allow = Some(method);
        return Err(r);
    }
    if let Command::Snapshot { .. } = command {
        return snapshot_body(&request.body);
    }
    check_body(&request.body, method)?;
    Ok(command)
}

/// The body of `vm.snapshot`: `{"destination": PATH}`, PATH a non-empty
/// string without NUL; nothing else.
fn snapshot_body(body: &[u8]) -> Result<Command, Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        destination: String,
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Response::error(400, "bad_json", format!("the body is not JSON: {e}")))?;
    let Body { destination } = serde_json::from_value(value).map_err(|e| {
        Response::error(
            400,
            "bad_body",
            format!("vm.snapshot takes {{\"destination\": PATH}}: {e}"),
        )
    })?;
    if destination.is_empty() || destination.contains('\0') {
        return Err(Response::error(
            400,
            "bad_body",
            "destination must be a file path",
        ));
    }
    Ok(Command::Snapshot { destination })
}

/// A body is empty, or (on PUT) a JSON object without fields: none of the
/// endpoints takes arguments yet, and an argument that would be ignored
/// is refused instead.
fn check_body(body: &[u8], method: &str) -> Result<(), Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    if method == "GET" {
        return Err(Response::error(400, "bad_body", "GET takes no body"));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(e) => Err(Response::error(
            400,
            "bad_json",
            format!("the body is not JSON: {e}"),
        )),
        Ok(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Ok(serde_json::Value::Object(m)) => Err(Response::error(
            400,
            "bad_body",
            format!(
                "unknown field {}: this endpoint takes no arguments",
                printable(m.keys().next().map_or("", String::as_str))
            ),
        )),
        Ok(_) => Err(Response::error(
            400,
            "bad_body",
            "the body must be a JSON object ({} or nothing)",
        )),
    }
}

/// At most 64 characters of `text`, for an error message.
fn printable(text: &str) -> String {
    let mut s: String = text.chars().take(64).collect();
    if text.chars().nth(64).is_some() {
        s += "...";
    }
    format!("{s:?}")
}

/// One request served.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    /// The answer.
    pub response: Response,
    /// How many bytes of the buffer the request took.
    pub consumed: usize,
    /// Whether to close the connection after the answer (the client asked,
    /// or the request was not HTTP the API takes).
    pub close: bool,
}

/// Serve the first request in `buf`, asking `vm` to carry out its
/// command; `None` until a whole request is there. An [`HttpError`]
/// consumes the whole buffer and closes the connection.
pub fn serve(buf: &[u8], vm: &mut dyn FnMut(Command) -> Response) -> Option<Exchange> {
    match http::parse(buf) {
        Ok(Parsed::Incomplete) => None,
        Ok(Parsed::Complete { request, consumed }) => {
            let response = match route(&request) {
                Ok(command) => vm(command),
                Err(refused) => refused,
            };
            Some(Exchange {
                response,
                consumed,
                close: !request.keep_alive,
            })
        }
        Err(e) => Some(Exchange {
            response: http_error(&e),
            consumed: buf.len(),
            close: true,
        }),
    }
}

/// The response to a request that is not HTTP the API takes.
pub fn http_error(e: &HttpError) -> Response {
    let code = match e.status() {
        413 => "too_large",
        431 => "headers_too_large",
        501 => "not_implemented",
        _ => "bad_request",
    };
    Response::error(e.status(), code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serve `bytes` against a VM that records what it was asked.
    fn serve_one(bytes: &[u8]) -> (Exchange, Vec<Command>) {
        let mut asked = Vec::new();
        let ex = serve(bytes, &mut |c| {
            let done = format!("{c:?}");
            asked.push(c);
            Response::ok(serde_json::json!({ "done": done }))
        })
        .expect("a whole request");
        (ex, asked)
    }

    #[test]
    fn every_endpoint_reaches_its_command() {
        for (name, method, command) in ENDPOINTS {
            let command = match command {
                Command::Snapshot { .. } => Command::Snapshot {
                    destination: "/tmp/vm.snap".into(),
                },
                c => c,
            };
            let body = match (&command, method) {
                (Command::Snapshot { .. }, _) => r#"{"destination": "/tmp/vm.snap"}"#,
                (_, "PUT") => "{}",
                _ => "",
            };
            let req = format!(
                "{method} {PREFIX}{name} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (ex, asked) = serve_one(req.as_bytes());
            assert_eq!(ex.response.status, 200, "{req}");
            assert_eq!(asked, [command]);
            assert!(!ex.close);
        }
        // An empty PUT body is as good as {}.
        let (ex, asked) = serve_one(b"PUT /api/v1/vm.pause HTTP/1.1\r\n\r\n");
        assert_eq!((ex.response.status, asked), (200, vec![Command::Pause]));
    }

    #[test]
    fn malformed_requests_get_their_error_and_never_reach_the_vm() {
        let cases: [(&[u8], u16, &str); 12] = [
            (
                b"PUT /api/v1/vm.snapshot HTTP/1.1\r\n\r\n",
                400,
                "bad_json",
            ),
            (
                b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                400,
                "bad_body",
            ),
            (
                b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 29\r\n\r\n{\"destination\":\"a\",\"other\":1}",
                400,
                "bad_body",
            ),
            (b"GET /api/v1/nothing HTTP/1.1\r\n\r\n", 404, "not_found"),
            (
                b"GET /api/v1/vm.pause HTTP/1.1\r\n\r\n",
                405,
                "method_not_allowed",
            ),
            (
                b"PUT /api/v1/vm.info HTTP/1.1\r\n\r\n",
                405,
                "method_not_allowed",
            ),
            (
                b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\":",
                400,
                "bad_json",
            ),
            (
                b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n",
                400,
                "bad_body",
            ),
            (
                b"PUT /api/v1/vm.reset HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]",
                400,
                "bad_body",
            ),
            (
                b"GET /api/v1/vm.info HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                400,
                "bad_body",
            ),
            (b"\x00\x01\x02\r\n\r\n", 400, "bad_request"),
            (
                b"PUT /api/v1/vm.pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
                "not_implemented",
            ),
        ];
        for (bytes, status, code) in cases {
            let (ex, asked) = serve_one(bytes);
            let what = String::from_utf8_lossy(bytes);
            assert_eq!(ex.response.status, status, "{what}");
            assert_eq!(ex.response.error_code(), Some(code), "{what}");
            assert!(asked.is_empty(), "{what} reached the VM");
        }
        let (ex, _) = serve_one(b"GET /api/v1/vm.pause HTTP/1.1\r\n\r\n");
        assert_eq!(ex.response.allow, Some("PUT"));
    }

    #[test]
    fn an_incomplete_request_waits() {
        assert_eq!(
            serve(
                b"PUT /api/v1/vm.pause HTTP/1.1\r\n",
                &mut |_| unreachable!()
            ),
            None
        );
    }
}
