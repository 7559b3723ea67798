//! mod_passenger: an application server for Apache httpd.
//!
//! One crate builds two programs that share the code below: the static
//! library linked into `mod_passenger.so` (the Apache side) and the
//! `passenger-agent` daemon.
//!
//! # Layout
//!
//! - [`protocol`]: the frame protocol spoken on every channel (`docs/protocol.md`).
//! - [`config`]: the directive table and the typed server and per-directory configuration.
//! - [`ffi`]: the C ABI used by the shim in `mod_passenger/`; the only raw pointers.
//! - [`module`]: the Apache side: maps requests to apps, talks to the agent.
//! - [`agent`]: the daemon: accepts connections, one thread each.
//! - [`pool`]: application groups, processes, wait queues and limits.
//! - [`spawn`]: starting application processes through the loaders.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod protocol;
