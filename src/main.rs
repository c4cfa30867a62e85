//! The `gatehouse` command: parses the command line and dispatches to one file per
//! subcommand under `cli/`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// jemalloc: an idle connection's task and socket registrations (blocks aligned to 128
/// bytes) take their size class and no padding, and memory freed after a burst goes back
/// to the kernel (see [`MALLOC_CONF`]). benches/README.md has the figures against glibc,
/// mimalloc and hand-written pools.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (before `main`):
/// - `background_thread`: a thread of jemalloc's own returns freed pages to the
///   kernel, so no event loop pays for it and an idle process still shrinks;
/// - `dirty_decay_ms:500`, `muzzy_decay_ms:0`: freed pages go back half a second later;
/// - `narenas:2`: a gateway process needs no arena per CPU (each holds memory of its own).
///
/// The symbol is `_rjem_malloc_conf`, jemalloc's `malloc_conf` under the crate's prefix;
/// `_RJEM_MALLOC_CONF` in the environment still overrides it, for measuring.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0,narenas:2".as_ptr());

/// A C string pointer that jemalloc reads once; it points at a literal.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to an immutable 'static literal.
unsafe impl Sync for MallocConf {}

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
