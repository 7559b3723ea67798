//! `passenger-agent`: the daemon that pools and supervises the apps of one
//! Apache instance. Started by mod_passenger in Apache's post_config; see
//! `mod_passenger::agent`.

use std::process::ExitCode;

fn main() -> ExitCode {
    mod_passenger::log::init_agent(log::LevelFilter::Info);
    let args = match mod_passenger::agent::Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            log::error!(target: "MP0800", "passenger-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match mod_passenger::agent::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(target: "MP0800", "passenger-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
