//! `mediagwctl`: see `mediagwctl --help` and the `mediagw_tools` crate.
#![forbid(unsafe_code)]

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use mediagw_tools::CtlError;
use mediagw_tools::cli::Cli;
use mediagw_tools::commands::{self, Output};

fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0.
    let cli = Cli::parse();
    let stdout = io::stdout();
    let tty = stdout.is_terminal();
    let mut out = stdout.lock();
    match commands::run(&cli, &mut Output { out: &mut out, tty }) {
        Ok(code) => ExitCode::from(code),
        // `mediagwctl endpoints | head`: the reader has what it wanted.
        Err(CtlError::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
