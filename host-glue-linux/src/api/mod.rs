//! The control API of `vmm run --api-socket PATH`: HTTP/1.1 with JSON
//! bodies on a Unix socket, in the style of Firecracker's and Cloud
//! Hypervisor's (docs/API.md lists the endpoints, bodies and errors).
//!
//! - [`http`]: requests off a byte stream (httparse), responses onto it.
//! - [`routes`]: which request is which [`Command`], and the error model;
//!   pure, so tests and the `api_request` fuzz target drive it directly.
//! - [`server`]: the socket, a thread per client, and the channel plus
//!   kick by which a command reaches the thread that runs the vCPU.
//!
//! The runner (`crate::runner`) carries the commands out between slices
//! of the exit loop; a paused guest's vCPU does not run at all, and its
//! devices' timers wait with it.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;

pub use http::Response;
pub use routes::{Command, PREFIX};
pub use server::{start, ApiError, ApiSocket, Job, Kick};
