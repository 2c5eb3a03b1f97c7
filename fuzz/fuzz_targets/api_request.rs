//! Fuzz the control API's request path (host-glue-linux `api`): arbitrary
//! bytes, as a client would stream them to the socket, served request by
//! request against a model VM.
//!
//! Invariants: no panic; each exchange consumes at least one byte and no
//! more than there is; every response is HTTP/1.1 with a JSON body of the
//! length it announces, and every error body names an error code; a
//! request that is refused (any 4xx/5xx the routes give) never reaches
//! the VM, so the model's state (paused, presses, resets) changes only
//! through commands that were accepted; a read-only command never
//! changes it; and the first exchange is the same whether the bytes come
//! at once or a byte at a time.
#![no_main]

use host_glue_linux::api::routes::{serve, Command, Exchange};
use host_glue_linux::api::Response;
use libfuzzer_sys::fuzz_target;

/// What the VM's side keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Model {
    paused: bool,
    presses: u32,
    resets: u32,
}

impl Model {
    /// The runner's answers, on the model.
    fn answer(&mut self, c: Command) -> Response {
        match c {
            Command::Pause if self.paused => Response::error(409, "already_paused", "paused"),
            Command::Resume if !self.paused => Response::error(409, "not_paused", "running"),
            Command::Pause | Command::Resume => {
                self.paused = c == Command::Pause;
                Response::ok(serde_json::json!({}))
            }
            Command::PowerButton => {
                self.presses += 1;
                Response::ok(serde_json::json!({}))
            }
            Command::Reset => {
                self.resets += 1;
                Response::ok(serde_json::json!({}))
            }
            Command::Info | Command::Stats => Response::ok(serde_json::json!({})),
            // Writes a file; the VM does not change.
            Command::Snapshot { .. } if !self.paused => {
                Response::error(409, "not_paused", "running")
            }
            Command::Snapshot { .. } => Response::ok(serde_json::json!({})),
            // Served by the API's thread (it answers 101 and hands the
            // connection to the console); the VM does not change.
            Command::ConsoleAttach => Response::ok(serde_json::json!({})),
        }
    }
}

fn check_encoding(r: &Response, keep_alive: bool) {
    let bytes = r.encode(keep_alive);
    let text = std::str::from_utf8(&bytes).expect("responses are UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.starts_with(&format!("HTTP/1.1 {} ", r.status)),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len()))
            || head.ends_with(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
    if r.status >= 400 {
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
}

/// Serve `data` whole; every exchange and the state before and after it.
fn serve_all(data: &[u8]) -> Vec<Exchange> {
    let mut model = Model::default();
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let before = model;
        let mut asked: Option<Command> = None;
        let Some(ex) = serve(rest, &mut |c| {
            assert!(asked.is_none(), "two commands for one request");
            asked = Some(c.clone());
            model.answer(c)
        }) else {
            break;
        };
        assert!(ex.consumed >= 1 && ex.consumed <= rest.len());
        check_encoding(&ex.response, !ex.close);
        match asked {
            None => {
                assert!(
                    ex.response.status >= 400,
                    "{:?} without a command",
                    ex.response
                );
                assert_eq!(model, before, "a refused request changed the VM");
            }
            Some(c) if !c.changes_vm() => assert_eq!(model, before, "{c:?} changed the VM"),
            Some(_) => {}
        }
        rest = &rest[ex.consumed..];
        let close = ex.close;
        out.push(ex);
        if close {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = serve_all(data);
    // A byte at a time (as a slow client sends): the first request is
    // answered the same once it is all there, and not before.
    if data.len() <= 512 {
        let first = (1..=data.len())
            .find_map(|n| serve(&data[..n], &mut |c| Model::default().answer(c)).map(|ex| (n, ex)));
        match (first, whole.first()) {
            (Some((_, ex)), Some(w)) => {
                assert_eq!(ex.response.status, w.response.status);
                assert_eq!(ex.close, w.close);
            }
            (None, None) => {}
            (a, b) => panic!("a byte at a time: {a:?}, whole: {b:?}"),
        }
    }
});
