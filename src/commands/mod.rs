//! One file per subcommand, each thin: validated config in, `job` calls, report out, exit
//! status back.

pub mod completions;
pub mod daemon;
pub mod doctor;
pub mod gc;
pub mod job;
pub mod man;
pub mod run;

use std::io::Write;

use crate::cli::{Cli, Command};
use crate::job::policy::exit;

/// Run the chosen subcommand; returns the process exit status.
pub fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run::run(args, cli.verbose > 0),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Gc(args) => gc::gc(args),
        Command::Job(cmd) => job::job(cmd),
        Command::Daemon(args) => daemon::daemon(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => man::man(args),
    }
}

/// Print a clap error as one line (help and version are printed whole) and return the exit
/// status: 0 for help/version, 2 for bad usage.
pub fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            exit::USAGE
        } else {
            0
        };
    }
    // clap's message is a paragraph (what was wrong, sometimes over several lines), then a
    // usage hint: keep the paragraph, on one line.
    let text = e.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = para.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    eprintln!("cgjob: {msg} (see --help)");
    exit::USAGE
}

/// An error and its causes on one line: `what: why: why` (a cause already in the message is
/// not repeated).
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let msg = s.to_string();
        if !line.contains(&msg) {
            line.push_str(": ");
            line.push_str(&msg);
        }
        src = s.source();
    }
    line
}

/// Print an error and its causes on one line: `cgjob: what: why: why`.
pub fn print_error(e: &dyn std::error::Error) {
    eprintln!("cgjob: {}", error_line(e));
}

/// Write generated text to stdout: 0 when written, or when the reader went away (`| head`
/// closing the pipe is not a failure); 125 on any other error.
pub fn write_stdout(bytes: &[u8]) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("cgjob: cannot write to stdout: {e}");
            exit::FAILURE
        }
    }
}
