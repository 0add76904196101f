//! The native core of the featureproxy Python client (`featureproxy_native`).
//!
//! The sync `featureproxy.Client` runs on the Rust client ([`featureproxy_client`]) when this
//! module is installed: one protocol implementation ([`featureproxy_protocol`]) for Rust and
//! Python. A call releases the GIL once, for encoding, I/O and decoding together, on the calling
//! thread (see [`core`]). Replies come back as objects exporting the buffer protocol over the
//! received frame, so `Batch.matrix()` stays a zero-copy numpy view and numpy stays optional.
//!
//! Layout:
//! - [`core`]: the client on its `current_thread` runtime, with the waits, interruption, fork
//!   handling and idle-connection check the Python API needs. Pure Rust.
//! - [`failure`]: the one mapping from Rust errors to the Python exceptions and their messages.
//!   Pure Rust.
//! - [`tls`]: the Python client's TLS arguments made into the Rust client's rustls
//!   configuration. Pure Rust.
//! - `py` (feature `python`): the PyO3 bindings: argument checks worded as the pure-Python
//!   client words them, the reply buffer, the codec functions the parity tests and the asyncio
//!   client use.
//!
//! Without the `python` feature the crate builds and tests with no Python at all, which is how
//! `cargo test --workspace` runs it; maturin builds the extension with the feature.

pub mod core;
pub mod failure;
pub mod tls;

#[cfg(feature = "python")]
mod py;
