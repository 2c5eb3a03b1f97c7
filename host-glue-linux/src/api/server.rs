//! The API socket: a Unix stream socket (mode 0600) whose clients are
//! served each on a thread of its own, at most [`MAX_CLIENTS`] at once (the
//! next gets a 503 `busy` answer and is closed). A command reaches the VM
//! as a [`Job`] on a channel, and the thread that runs the vCPU is kicked
//! ([`Kick`]) so that it looks at the channel at once, even while the
//! guest runs without exits; the client's thread waits for the answer.

use super::http::Response;
use super::routes::{self, Command};
use crate::console_attach::{AttachError, ConsoleTap};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// The most clients served at once.
pub const MAX_CLIENTS: usize = 4;
/// A client that sends nothing for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a client waits for the VM to answer a command.
pub const VM_TIMEOUT: Duration = Duration::from_secs(10);

/// A command for the VM, and where its answer goes.
pub struct Job {
    /// What the client asked.
    pub command: Command,
    /// The answer (the client's thread waits on the other end).
    pub reply: SyncSender<Response>,
}

/// How the API gets the vCPU thread's attention: called after a job is
/// queued.
pub type Kick = Arc<dyn Fn() + Send + Sync>;

/// Why the API socket could not be opened.
#[derive(Debug)]
pub enum ApiError {
    /// Something already exists at the path.
    Exists(PathBuf),
    /// The socket could not be created, bound or given its mode.
    Socket {
        /// The path.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Exists(p) => write!(
                f,
                "--api-socket {}: the path exists (remove it, or pick another)",
                p.display()
            ),
            ApiError::Socket { path, error } => {
                write!(f, "--api-socket {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// The open API socket. Dropping it removes the socket file (clients
/// still connected get "the VM has stopped" for any further command).
pub struct ApiSocket {
    path: PathBuf,
}

impl ApiSocket {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Create the socket at `path` (mode 0600; refused if anything is there)
/// and serve it on a thread of its own. Commands arrive on the returned
/// channel, each followed by a call of `kick`; console attach goes to
/// `console` (without one it is refused).
pub fn start(
    path: &Path,
    kick: Kick,
    console: Option<Arc<ConsoleTap>>,
) -> Result<(ApiSocket, Receiver<Job>), ApiError> {
    if path.symlink_metadata().is_ok() {
        return Err(ApiError::Exists(path.to_path_buf()));
    }
    let socket_error = |error| ApiError::Socket {
        path: path.to_path_buf(),
        error,
    };
    // The socket file gets 0777 less the umask at bind: with umask 0177 it
    // is 0600 from the start, so no other user can connect in between.
    // The umask is the process's, and put back at once; a file another
    // thread creates meanwhile is only made stricter.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(socket_error)?;
    let socket = ApiSocket {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_error)?;
    let (jobs, received) = mpsc::channel();
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || accept(listener, jobs, kick, console))
        .map_err(socket_error)?;
    Ok((socket, received))
}

/// Accept clients for as long as the process lives.
fn accept(listener: UnixListener, jobs: Sender<Job>, kick: Kick, console: Option<Arc<ConsoleTap>>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                log::warn!("API: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::AcqRel);
            let busy = Response::error(
                503,
                "busy",
                format!("{MAX_CLIENTS} clients are connected already: try again when one leaves"),
            );
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(&busy.encode(false));
            continue;
        }
        let (jobs, kick, active) = (jobs.clone(), kick.clone(), active.clone());
        let console = console.clone();
        let spawned = std::thread::Builder::new()
            .name("vmm-api-client".into())
            .spawn(move || {
                client(stream, &jobs, &kick, console.as_deref());
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            log::warn!("API: no thread for a client");
        }
    }
}

/// Ask the VM's thread to carry out `command` and wait for its answer.
fn ask_vm(jobs: &Sender<Job>, kick: &Kick, command: Command) -> Response {
    let (reply, answer) = mpsc::sync_channel(1);
    if jobs.send(Job { command, reply }).is_err() {
        return stopped();
    }
    kick();
    match answer.recv_timeout(VM_TIMEOUT) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Disconnected) => stopped(),
        Err(mpsc::RecvTimeoutError::Timeout) => Response::error(
            503,
            "timeout",
            format!("the VM did not answer within {} s", VM_TIMEOUT.as_secs()),
        ),
    }
}

fn stopped() -> Response {
    Response::error(503, "stopped", "the VM has stopped")
}

/// The head of the answer to a console attach, after which the
/// connection is the console's.
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: vmm-console\r\n\r\n";

/// Serve one client until it closes, idles out or sends what is not HTTP.
fn client(mut stream: UnixStream, jobs: &Sender<Job>, kick: &Kick, console: Option<&ConsoleTap>) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut attached = None;
        while let Some(ex) = routes::serve(&buf, &mut |c| match c {
            Command::ConsoleAttach => match console.map(ConsoleTap::attach) {
                Some(Ok(output)) => {
                    attached = Some(output);
                    Response::ok(serde_json::json!({}))
                }
                Some(Err(AttachError::Busy)) => Response::error(
                    409,
                    "console_busy",
                    "another client is attached to the console",
                ),
                None => Response::error(503, "no_console", "this VM has no console to attach to"),
            },
            c => ask_vm(jobs, kick, c),
        }) {
            if let (Some(output), Some(tap)) = (attached.take(), console) {
                buf.drain(..ex.consumed);
                if stream.write_all(SWITCHING).is_ok() {
                    attach(stream, tap, output, buf);
                }
                tap.detach();
                return;
            }
            if stream.write_all(&ex.response.encode(!ex.close)).is_err() || ex.close {
                return;
            }
            buf.drain(..ex.consumed);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The connection as the console: COM1's output (`output`) written to it
/// by a thread of its own, and what the client sends (first `early`, what
/// came with the request) typed into COM1, until either side closes.
fn attach(mut stream: UnixStream, tap: &ConsoleTap, output: Receiver<Vec<u8>>, early: Vec<u8>) {
    // An attached console may sit idle for as long as the user likes.
    let _ = stream.set_read_timeout(None);
    let writer = stream.try_clone().ok().and_then(|mut w| {
        std::thread::Builder::new()
            .name("vmm-api-console".into())
            .spawn(move || {
                for bytes in output {
                    if w.write_all(&bytes).is_err() {
                        // The client closed: stop reading its side too.
                        let _ = w.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            })
            .ok()
    });
    if writer.is_none() {
        return;
    }
    for &b in &early {
        tap.send(b);
    }
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => chunk[..n].iter().for_each(|&b| tap.send(b)),
        }
    }
    // Dropping the tap's sender (detach) ends the writer.
    tap.detach();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A fresh socket path in the temporary folder.
    fn socket_path(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-api-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// One request, its status and JSON body.
    fn request(stream: &mut UnixStream, text: &str) -> (u16, serde_json::Value) {
        // A client turned away may be closed before it has written: its
        // answer is there to read all the same.
        let _ = stream.write_all(text.as_bytes());
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn the_socket_is_private_serves_commands_and_turns_away_a_crowd() {
        let path = socket_path("serve");
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = kicks.clone();
        let (socket, jobs) = start(
            &path,
            Arc::new(move || {
                k.fetch_add(1, Ordering::SeqCst);
            }),
            None,
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The VM's side: answer every job with its command's name.
        std::thread::spawn(move || {
            for job in jobs {
                let _ = job.reply.send(Response::ok(
                    serde_json::json!({ "command": format!("{:?}", job.command) }),
                ));
            }
        });
        let mut c = UnixStream::connect(&path).unwrap();
        let (status, body) = request(&mut c, "GET /api/v1/vm.info HTTP/1.1\r\n\r\n");
        assert_eq!((status, body["command"].as_str()), (200, Some("Info")));
        let (status, body) = request(&mut c, "PUT /api/v1/vm.pause HTTP/1.1\r\n\r\n");
        assert_eq!((status, body["command"].as_str()), (200, Some("Pause")));
        assert_eq!(kicks.load(Ordering::SeqCst), 2);
        // More clients than are served at once: the extra one is told so.
        let mut crowd: Vec<UnixStream> = (1..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for s in &mut crowd {
            let (status, _) = request(s, "GET /api/v1/vm.stats HTTP/1.1\r\n\r\n");
            assert_eq!(status, 200);
        }
        let mut extra = UnixStream::connect(&path).unwrap();
        let (status, body) = request(&mut extra, "GET /api/v1/vm.info HTTP/1.1\r\n\r\n");
        assert_eq!((status, body["error"].as_str()), (503, Some("busy")));
        drop(crowd);
        // The first client goes on; a malformed request ends its connection.
        let (status, _) = request(&mut c, "GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        let (status, _) = request(&mut c, "BLAH\r\n\r\n");
        assert_eq!(status, 400);
        assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0);
        assert_eq!(kicks.load(Ordering::SeqCst), 2 + MAX_CLIENTS - 1);
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn a_path_in_use_is_refused() {
        let path = socket_path("exists");
        std::fs::write(&path, b"").unwrap();
        let e = start(&path, Arc::new(|| {}), None).err().unwrap();
        assert!(matches!(e, ApiError::Exists(_)), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
