//! `flying-passenger`: the agent as a daemon of its own, which Apache
//! reaches through `PassengerFlyWith`; see `mod_passenger::agent::flying`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(mod_passenger::agent::flying::main(&args));
}
