//! `cgjob man [COMMAND]`: the manual page in roff, generated from the same clap types as
//! `--help`.

use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use crate::job::policy::exit;

pub fn man(args: ManArgs) -> i32 {
    // No page for `help`: `--help` is on every page already.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building gives subcommands their page names and usage lines (`cgjob-run`, `cgjob run`).
    cmd.build();
    let page = match &args.command {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(sub) => sub.clone(),
            // Unreachable: clap checked the name against the list in `cli`.
            None => return exit::USAGE,
        },
    };
    let mut out = Vec::new();
    // The footer names the package, also on a subcommand's page (clap_mangen would say `run`).
    let man = clap_mangen::Man::new(page).source(format!("cgjob {}", env!("CARGO_PKG_VERSION")));
    if let Err(e) = man.render(&mut out) {
        eprintln!("cgjob: cannot render the manual page: {e}");
        return exit::FAILURE;
    }
    super::write_stdout(&out)
}
