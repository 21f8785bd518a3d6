//! parse → logging → dispatch → exit status; nothing else.

use clap::Parser;

fn main() {
    let cli = match cgjob::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => std::process::exit(cgjob::commands::usage_error(e)),
    };
    cgjob::logging::init(cli.verbose, cli.log_format);
    std::process::exit(cgjob::commands::dispatch(cli));
}
