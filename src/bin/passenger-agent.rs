//! The passenger-agent daemon.
fn main() {}
