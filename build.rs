//! Build script placeholder.
fn main() {}
