//! `cgjob completions SHELL`: a completion script, generated from the same clap types as
//! `--help`.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn completions(args: CompletionsArgs) -> i32 {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "cgjob", &mut out);
    super::write_stdout(&out)
}
