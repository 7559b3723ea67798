//! The C ABI between the shim in `mod_passenger/` and the Rust library.
//!
//! This is the only module that touches raw pointers. The types come from
//! bindgen's reading of `ffi/wrapper.h`, so C and Rust share one layout; the
//! exported functions live in [`exports`], each behind a panic boundary
//! ([`boundary`]).
#![allow(unsafe_code)]

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_docs,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;

#[macro_use]
pub mod boundary;
pub mod config;
pub mod exports;
