//! mod_passenger: an application server for Apache httpd.
//!
//! One crate builds the programs that share the code below: the static
//! library linked into `mod_passenger.so` (the Apache side), the
//! `passenger-agent` daemon and the `passenger-status` tool.
//!
//! # Layout
//!
//! - [`protocol`]: the frame protocol spoken on every channel (`docs/protocol.md`).
//! - [`config`]: the directive table and the typed server, directory and app options.
//! - [`ffi`]: the C ABI used by the shim in `mod_passenger/`; the only raw pointers.
//! - [`module`]: the Apache side: maps requests to apps, talks to the agent.
//! - [`instance`]: where an Apache instance's agent lives (the registry).
//! - [`agent`]: the daemon: accepts connections, one thread each.
//! - [`pool`]: application groups, processes, wait queues and limits.
//! - [`spawn`]: starting application processes through the loaders.
//! - [`log`]: logging into Apache's error log from both processes.
//! - [`status`]: the `passenger-status` tool; [`procfs`]: what `/proc` says of a process.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod ffi;
pub mod instance;
pub mod log;
pub mod module;
pub mod pool;
pub mod procfs;
pub mod protocol;
pub mod spawn;
pub mod status;
pub mod trace;
