//! Help, completions and the manual page: generated from the clap types, no kernel needed.

use std::process::Command;
use std::time::Duration;

use crate::util::{code, run_bounded, stderr_of};

const LIMIT: Duration = Duration::from_secs(30);

/// Run the built binary with `args` and no job environment; returns (status, stdout, stderr).
fn cgjob(args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cgjob"));
    c.args(args).env_remove("RUST_LOG");
    let o = run_bounded(c, LIMIT);
    (
        code(&o),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr_of(&o),
    )
}

#[test]
fn help_exits_0() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["run", "--help"],
        &["gc", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
        &["--version"],
    ] {
        let (st, out, err) = cgjob(args);
        assert_eq!(st, 0, "{args:?}: {err}");
        assert!(out.contains("cgjob"), "{args:?}: {out}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    let (_, out, _) = cgjob(&["run", "--help"]);
    for needle in ["--timeout", "--leftovers", "Exit status", "124", "123"] {
        assert!(out.contains(needle), "{needle:?} in run --help:\n{out}");
    }
}

#[test]
fn completions_for_every_shell() {
    let (st, out, err) = cgjob(&["completions", "bash"]);
    assert_eq!(st, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(out.contains("run"), "{out}");
    assert!(out.contains("--timeout"), "{out}");
    assert!(out.contains("--kill-method"), "{out}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (st, out, err) = cgjob(&["completions", shell]);
        assert_eq!(st, 0, "{shell}: {err}");
        assert!(
            out.contains("cgjob") && out.contains("timeout"),
            "{shell}: {out}"
        );
    }
}

#[test]
fn bad_shell_is_a_one_line_usage_error() {
    let (st, out, err) = cgjob(&["completions", "tcsh"]);
    assert_eq!(st, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("cgjob: ") && err.contains("tcsh"),
        "names the bad value: {err}"
    );
    let (st, _, err) = cgjob(&["completions"]);
    assert_eq!(st, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// The page's first macro after the string definitions of its preamble (`.ie`/`.el`/`.ds`)
/// is its `.TH` title line.
fn title_line(page: &str) -> &str {
    let first = page
        .lines()
        .find(|l| !(l.starts_with(".ie") || l.starts_with(".el") || l.starts_with(".ds")))
        .unwrap_or("");
    assert!(
        page.lines()
            .take_while(|l| *l != first)
            .all(|l| l.starts_with('.')),
        "only roff requests before the title:\n{page}"
    );
    first
}

#[test]
fn man_page_is_roff() {
    let (st, out, err) = cgjob(&["man"]);
    assert_eq!(st, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(out.starts_with('.'), "roff from the first byte: {out}");
    assert!(
        title_line(&out).starts_with(".TH cgjob 1"),
        "a .TH header: {out}"
    );
    for needle in [
        ".SH NAME",
        ".SH SYNOPSIS",
        "cgjob\\-run(1)",
        "cgjob\\-gc(1)",
    ] {
        assert!(out.contains(needle), "{needle:?} in:\n{out}");
    }

    let (st, out, err) = cgjob(&["man", "run"]);
    assert_eq!(st, 0, "{err}");
    assert!(
        title_line(&out).starts_with(".TH cgjob-run 1"),
        "a .TH header: {out}"
    );
    assert!(out.contains("\\-\\-timeout"), "{out}");
    assert!(
        out.contains("\"cgjob 0.1.0\""),
        "the package in the footer: {out}"
    );

    let (st, out, err) = cgjob(&["man", "nope"]);
    assert_eq!(st, 2, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}
