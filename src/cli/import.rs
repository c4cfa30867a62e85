//! `gatehouse import [--from haproxy] PATH [-o FILE]`: the translated config on stdout
//! (or `-o`), the report on stderr; the translation itself is `gatehouse::import`.

use std::path::PathBuf;
use std::process::ExitCode;

/// `gatehouse import [--from haproxy] PATH [-o FILE]`
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The kind of configuration to import.
    #[arg(long, value_enum, default_value = "haproxy")]
    pub from: Source,
    /// Write the gatehouse configuration here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The HAProxy configuration file.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Haproxy,
}

/// Runs `gatehouse import`: the config on stdout (or `-o`), the report on stderr.
/// Exit 0: all translated; 1: something approximated or dropped; 2: nothing produced.
pub fn import(args: &ImportArgs) -> ExitCode {
    let Source::Haproxy = args.from;
    let file = args.path.display().to_string();
    let result = std::fs::read_to_string(&args.path)
        .map_err(|source| gatehouse::import::ImportError::Read {
            file: file.clone(),
            source,
        })
        .and_then(|text| gatehouse::import::import_haproxy(&text, &file, &|name| std::env::var(name).ok()));
    let import = match result {
        Ok(i) => i,
        Err(e) => {
            if let Some(report) = e.report() {
                eprint!("{}", report.render());
            }
            eprintln!("gatehouse import: {e}");
            return ExitCode::from(2);
        }
    };
    eprint!("{}", import.report.render());
    let written = match &args.output {
        Some(path) => std::fs::write(path, &import.toml).map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(import.toml.as_bytes())
                .map_err(|e| format!("cannot write to stdout: {e}"))
        }
    };
    if let Err(e) = written {
        eprintln!("gatehouse import: {e}");
        return ExitCode::from(2);
    }
    ExitCode::from(import.exit_code())
}
