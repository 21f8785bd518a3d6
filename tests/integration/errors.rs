//! Bad input: one line saying what was wrong, a distinct status, nothing started, nothing left.

use std::time::Duration;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Run and check: status, one `cgjob: ` line containing `needle`, the job never ran, and the
/// test's parent cgroup holds nothing.
fn refused(t: &TestJob, mut cmd: std::process::Command, want: i32, needle: &str) {
    cmd.args(["--", "bash", "-c", "touch $TMPD/ran"]);
    let o = run_bounded(cmd, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), want, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("cgjob: ") && err.contains(needle),
        "{needle:?} in {err}"
    );
    assert!(!t.path("ran").exists(), "the command must not run");
    let left: Vec<_> = std::fs::read_dir(&t.parent)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

fn run_args(t: &TestJob, args: &[&str]) -> std::process::Command {
    let mut c = t.cgjob();
    c.arg("run").arg("--parent").arg(&t.parent).args(args);
    c
}

#[test]
fn usage_errors_exit_2() {
    let t = TestJob::new("usage");
    let cases: &[(&[&str], &str)] = &[
        (&["--name", "../escape"], "--name"),
        (&["--name", "a/b"], "'/'"),
        (&["--name", ""], "empty"),
        (&["--name", &"x".repeat(65)], "at most 64"),
        (&["--name", ".hidden"], "must not start"),
        (&["--timeout", "soon"], "invalid duration"),
        (&["--timeout=-5"], "invalid duration"),
        (&["--timeout", "-5"], "-5"),
        (&["--grace", "1x"], "invalid duration"),
        (&["--kill-after", ""], "duration"),
        (&["--timeout-signal", "NOPE"], "unknown signal"),
        (&["--timeout-signal", "99"], "unknown signal"),
        (&["--kill-method", "nuke"], "nuke"),
        (&["--leftovers", "keep"], "keep"),
    ];
    for (args, needle) in cases {
        refused(&t, run_args(&t, args), 2, needle);
    }
}

#[test]
fn missing_command_is_a_usage_error() {
    let t = TestJob::new("nocmd");
    let mut c = t.cgjob();
    c.arg("run").arg("--parent").arg(&t.parent);
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 2);
    assert_eq!(stderr_of(&o).lines().count(), 1);
}

#[test]
fn not_a_cgroup2_root() {
    let t = TestJob::new("notcg2");
    let mut c = t.cgjob();
    c.args(["run", "--cgroup-root", "/tmp"]);
    refused(&t, c, 125, "/tmp is not a cgroup2 filesystem");
}

#[test]
fn parent_outside_cgroupfs_or_with_dotdot() {
    let t = TestJob::new("badparent");
    refused(
        &t,
        {
            let mut c = t.cgjob();
            c.args(["run", "--parent", "/tmp/cgjob-not-a-cgroup"]);
            c
        },
        125,
        "not on the cgroup2 filesystem",
    );
    refused(
        &t,
        {
            let mut c = t.cgjob();
            c.arg("run").arg("--parent").arg(t.parent.join("../.."));
            c
        },
        125,
        "'..'",
    );
    assert!(!std::path::Path::new("/tmp/cgjob-not-a-cgroup").exists());
}

#[test]
fn parent_not_writable_for_an_unprivileged_user() {
    let t = TestJob::new("noperm");
    // The built binary must be reachable by an unprivileged user for this test.
    let exe = env!("CARGO_BIN_EXE_cgjob");
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        exe,
        "run",
        "--parent",
    ])
    .arg(&t.parent)
    .env(MARKER_VAR, &t.marker)
    .env("TMPD", t.dir.path());
    // The scratch dir is root's: let nobody write the marker file if it ever ran.
    std::fs::set_permissions(
        t.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    refused(&t, c, 125, "permission denied");
}

#[test]
fn unwritable_report_path() {
    let t = TestJob::new("badreport");
    refused(
        &t,
        run_args(&t, &["--report", "/nonexistent-dir/report.json"]),
        125,
        "report file",
    );
}

#[test]
fn command_not_found_leaves_nothing() {
    let t = TestJob::new("notfound");
    let o = run_bounded(run_args(&t, &["--", "definitely-not-a-command-xyz"]), LIMIT);
    assert_eq!(code(&o), 127);
    assert_eq!(
        stderr_of(&o).trim(),
        "cgjob: command not found: definitely-not-a-command-xyz"
    );
    assert_eq!(
        std::fs::read_dir(&t.parent)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count(),
        0
    );
}
