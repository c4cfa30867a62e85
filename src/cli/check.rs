//! `gatehouse check`: validate a configuration and print its summary, without
//! binding or connecting to anything.

use std::path::Path;
use std::process::ExitCode;

use gatehouse::config::Config;

pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: configuration is valid\n", path.display());
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
