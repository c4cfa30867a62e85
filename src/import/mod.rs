//! `gatehouse import`: an HAProxy configuration turned into a gatehouse one, with a
//! report of every line translated, approximated (and how) or dropped (and why).
//!
//! The steps, each its own module: [`lexer`] cuts the text as HAProxy does, [`model`]
//! groups it into sections and reads HAProxy's values, [`settings`] reads proxy
//! keywords and server options, [`translate`] and [`backend`] decide what gatehouse
//! makes of them, [`emit`] writes the TOML and [`report`] the verdicts. The result is
//! validated by [`crate::config`] before it is handed out: an import never produces a
//! file `gatehouse check` refuses. This module owns the command line and exit codes.

pub mod backend;
pub mod emit;
pub mod lexer;
pub mod model;
pub mod report;
pub mod settings;
pub mod translate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use report::{Report, Verdict};

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

/// A finished import: the gatehouse TOML and the report.
#[derive(Debug, Clone)]
pub struct Import {
    pub toml: String,
    pub report: Report,
}

impl Import {
    /// 0 when every line was translated exactly, 1 when something was approximated
    /// or dropped.
    pub fn exit_code(&self) -> u8 {
        match self.report.worst() {
            Verdict::Translated => 0,
            _ => 1,
        }
    }
}

/// Why an import produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse { file: String, line: usize, message: String },
    #[error("{file}: the imported configuration does not pass `gatehouse check`:\n{errors}")]
    Invalid { file: String, errors: String },
}

/// Imports HAProxy configuration `text`; `file` names it in the report and comments,
/// `env` looks up `${VARIABLES}`.
pub fn import_haproxy(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Import, ImportError> {
    let parse_error = |e: lexer::LexError| ImportError::Parse {
        file: file.to_string(),
        line: e.line,
        message: e.message,
    };
    let lines = lexer::lex(text, env).map_err(parse_error)?;
    let mut report = Report::new(file);
    for l in &lines {
        for e in &l.expansions {
            let how = match e.source {
                lexer::ExpansionSource::Environment => "from the environment of this import",
                lexer::ExpansionSource::Default => "its default: the variable is not set here",
                lexer::ExpansionSource::Unset => "empty: the variable is not set here, as HAProxy would",
            };
            report.note(
                l.number,
                &l.text,
                Verdict::Approximated,
                format!(
                    "${{{}}} expanded to {:?} ({how}); gatehouse's file holds the value, not the variable",
                    e.name, e.value
                ),
            );
        }
    }
    let texts: BTreeMap<usize, String> = lines.iter().map(|l| (l.number, l.text.clone())).collect();
    let sections = model::sections(lines).map_err(parse_error)?;
    let output = translate::translate(&sections, &mut report);
    let toml = emit::render(&output, file, &texts);
    crate::config::Config::parse(&toml, "imported").map_err(|e| ImportError::Invalid {
        file: file.to_string(),
        errors: e.to_string(),
    })?;
    Ok(Import { toml, report })
}

/// Runs `gatehouse import`: the config on stdout (or `-o`), the report on stderr.
/// Exit 0: all translated; 1: something approximated or dropped; 2: nothing produced.
pub fn run_cli(args: &ImportArgs) -> ExitCode {
    let Source::Haproxy = args.from;
    let file = args.path.display().to_string();
    let result = std::fs::read_to_string(&args.path)
        .map_err(|source| ImportError::Read {
            file: file.clone(),
            source,
        })
        .and_then(|text| import_haproxy(&text, &file, &|name| std::env::var(name).ok()));
    let import = match result {
        Ok(i) => i,
        Err(e) => {
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
