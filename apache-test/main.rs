//! End-to-end tests: a real Apache on 127.0.0.1 with mod_passenger loaded,
//! real apps, real HTTP. See `harness.rs`.

mod directives;
mod errors;
mod flying;
mod harness;
mod hooks;
mod node;
mod pool;
mod rack;
mod restart;
mod smart;
mod status;
mod suburi;
mod users;
mod websocket;
mod wsgi;
