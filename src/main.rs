//! The `gatehouse` command: parses the command line and dispatches to one file per
//! subcommand under `cli/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// Small over-aligned allocations (tokio's tasks and socket registrations) from pools,
/// the rest from glibc: see `heap`.
#[global_allocator]
static HEAP: gatehouse::heap::Heap = gatehouse::heap::Heap;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Some(Command::Check) => cli::check::check(&args.config),
        Some(Command::Reload { admin }) => cli::reload::reload(&args.config, admin),
        Some(Command::Ctl {
            admin,
            ref token_file,
            ref action,
        }) => cli::ctl::ctl(&args.config, admin, token_file.as_deref(), action),
        Some(Command::Import(ref import)) => cli::import::import(import),
        None | Some(Command::Run) => cli::run::run(&args),
    }
}
