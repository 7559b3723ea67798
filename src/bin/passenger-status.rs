//! `passenger-status`: prints what the agent of an Apache instance runs;
//! see `mod_passenger::status`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(mod_passenger::status::main(&args));
}
