//! parse → logging → dispatch → exit status; nothing else.
//!
//! `no_main`: std's start-up reads /proc/self/maps to place a guard page under the main
//! thread's stack, ~0.3 ms of every `cgjob run` (measured against a plain `main`), which is
//! most of cgjob's start-up. What else std's start-up does that matters is done by
//! [`cgjob::startup`]: fds 0–2 made valid, SIGPIPE ignored (and given back to the command as
//! it was).

// Only the real binary gets the C `main`: `cargo test --all-targets` builds this file as a test
// target too (`test = false` only keeps it out of a plain `cargo test`), and there the harness's
// own `main` must run — it finds no tests here.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    use clap::Parser;

    cgjob::startup();
    let cli = match cgjob::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return cgjob::commands::usage_error(e),
    };
    cgjob::logging::init(cli.verbose, cli.log_format);
    cgjob::commands::dispatch(cli)
}
