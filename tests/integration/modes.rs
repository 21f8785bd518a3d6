//! Containment without a cgroup of cgjob's own making, and `cgjob doctor`:
//!
//! - **subreaper**: no usable cgroup and not PID 1 — cgjob's process tree is the job. Forced
//!   with `--containment subreaper`, or reached by `auto` in a private mount namespace whose
//!   cgroup2 mount is read-only.
//! - **pid-namespace**: `unshare --pid --fork --mount --mount-proc`, the cgroup2 mount
//!   remounted read-only inside that mount namespace only (`remount,bind,ro` changes the
//!   mount, not the filesystem: the host's stays writable, which each test checks).
//! - **unprivileged**: user `nobody`, in a cgroup the test makes and delegates (chowns) to it,
//!   and without one.
//!
//! Each asserts the same invariant as the cgroup tests: the status, nothing carrying the
//! test's marker left alive, and the record saying which containment was used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;

/// How the test runs cgjob.
#[derive(Clone)]
enum Mode {
    /// `--containment subreaper`, as root, on the host.
    Subreaper,
    /// `auto` as PID 1 of a new PID namespace whose cgroup2 mount is read-only.
    PidNamespace,
    /// `auto` as `nobody`, inside the delegated cgroup `deleg`.
    Delegated { deleg: PathBuf },
}

/// `cgjob run ARGS…` (with the marker) as `mode` runs it.
fn run_in(t: &TestJob, mode: &Mode, args: &[&str]) -> Command {
    let exe = env!("CARGO_BIN_EXE_cgjob");
    let mut c = match mode {
        Mode::Subreaper => {
            let mut c = Command::new(exe);
            c.args(["run", "--containment", "subreaper"]);
            c
        }
        Mode::PidNamespace => {
            let mut c = ro_cgroup_ns(true);
            c.args([exe, "run"]);
            c
        }
        Mode::Delegated { deleg } => {
            let mut c = as_nobody(t, Some(deleg));
            c.args([exe, "run", "--name", "job"]);
            c
        }
    };
    // The system's python3, not a per-user shim: the same for root and for nobody.
    c.args(args)
        .env(MARKER_VAR, &t.marker)
        .env("TMPD", t.dir.path())
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    c
}

/// `unshare` into a private mount namespace (and with `pid`, a PID namespace with its own
/// /proc) where the cgroup2 mount is read-only, then exec the arguments that follow.
fn ro_cgroup_ns(pid: bool) -> Command {
    let mut c = Command::new("unshare");
    if pid {
        c.args(["--pid", "--fork", "--mount-proc"]);
    }
    c.args([
        "--mount",
        "--propagation",
        "private",
        "bash",
        "-c",
        "mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"",
        "bash",
    ])
    .arg(cgroup2_root());
    c
}

/// `setpriv` to `nobody`, started in `cgroup` (joined between fork and exec, as root), with a
/// PATH that user can use.
fn as_nobody(t: &TestJob, cgroup: Option<&Path>) -> Command {
    // The scratch directory is root's: let the job write its files there.
    std::fs::set_permissions(
        t.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ])
    .env("PATH", "/usr/bin:/bin");
    join_before_exec(&mut c, cgroup);
    c
}

/// A cgroup under the test's parent, delegated to `nobody` as root would delegate one.
fn delegate(t: &TestJob, name: &str) -> PathBuf {
    let d = t.parent.join(name);
    std::fs::create_dir(&d).unwrap();
    for f in [
        "",
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
    ] {
        std::os::unix::fs::chown(d.join(f), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    d
}

/// Whether the test's own view of the cgroup2 mount is read-write: a remount inside a test's
/// mount namespace must never reach the host.
fn host_cgroup2_is_rw() -> bool {
    let root = cgroup2_root();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5 && Path::new(f[4]) == root && f[5].split(',').any(|o| o == "rw")
    })
}

/// Run a bash script as the job in `mode`; assert the status, that nothing of the job is
/// left, and what the record says of the containment. Returns the record.
fn contain(t: &TestJob, mode: &Mode, body: &str, want: i32) -> serde_json::Value {
    let script = t.script("job.sh", body);
    let o = run_bounded(
        run_in(
            t,
            mode,
            &["--json", "--grace", "0.3s", "--", "bash", &script],
        ),
        LIMIT,
    );
    let err = stderr_of(&o);
    assert_eq!(code(&o), want, "{body}\nstderr:\n{err}");
    let s = t.survivors();
    assert!(
        s.is_empty(),
        "{body}: processes of the job survived: {s:#?}"
    );
    let rec = record_of(&o);
    assert_eq!(rec["exit_status"], want, "{rec}");
    match mode {
        Mode::Subreaper => {
            assert_eq!(rec["containment"], "subreaper", "{rec}");
            assert!(!err.contains("WARNING"), "asked for, not a fallback: {err}");
        }
        Mode::PidNamespace => {
            assert_eq!(rec["containment"], "pid-namespace", "{rec}");
            assert_eq!(rec["supervisor_pid"], 1, "{rec}");
            assert!(!err.contains("WARNING"), "{err}");
            assert!(
                host_cgroup2_is_rw(),
                "the host's cgroup2 mount became read-only"
            );
        }
        Mode::Delegated { deleg } => {
            assert_eq!(rec["containment"], "cgroup-v2", "{rec}");
            let cg = deleg.join("cgjob/job");
            assert_eq!(rec["cgroup"], cg.to_str().unwrap(), "{rec}");
            assert_eq!(rec["cgroup_removed"], true, "{rec}");
            assert!(!cg.exists(), "job cgroup {} left behind", cg.display());
        }
    }
    if !matches!(mode, Mode::Delegated { .. }) {
        assert_eq!(rec["cgroup"], serde_json::Value::Null, "{rec}");
        assert_eq!(rec["cgroup_removed"], serde_json::Value::Null, "{rec}");
        assert_eq!(rec["kill_method"], serde_json::Value::Null, "{rec}");
        assert_eq!(rec["spawn_method"], "plain", "{rec}");
    }
    rec
}

/// One way each of outliving the job: (name, script, status, a leftover command line that
/// must be reported, whether something must have needed the kill).
const ESCAPES: &[(&str, &str, i32, &str, bool)] = &[
    (
        "background child",
        "sleep 1101 & sleep 0.2; exit 0",
        0,
        "sleep 1101",
        false,
    ),
    (
        "nohup and disown",
        "nohup sleep 1102 >/dev/null 2>&1 & disown; sleep 0.3; exit 0",
        0,
        "sleep 1102",
        false,
    ),
    (
        "setsid double-fork daemon",
        "setsid bash -c 'sleep 1103 & exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 5",
        5,
        "sleep 1103",
        false,
    ),
    (
        "new process group, ignoring TERM and HUP",
        "python3 -c 'import os,signal,time\nos.setpgid(0,0)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\ntime.sleep(1104)' & sleep 0.3; exit 0",
        0,
        "python3 -c",
        true,
    ),
    (
        "SIGSTOPped daemon",
        "setsid bash -c 'trap \"\" TERM; exec sleep 1105' & p=$!; sleep 0.2; kill -STOP $p; sleep 0.2; exit 0",
        0,
        "sleep 1105",
        true,
    ),
    (
        "re-exec under another name after reparenting",
        "bash -c '(sleep 0.3; trap \"\" TERM; exec -a kworker/0:1 sleep 1106) & exit 0'; sleep 0.8; exit 0",
        0,
        "kworker/0:1 1106",
        true,
    ),
    (
        "a process that makes itself a subreaper",
        "python3 -c '\nimport ctypes, os, signal, time\nctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nos.system(\"sh -c \\\"sleep 1107 &\\\"\")\ntime.sleep(1108)\n' &\nsleep 0.5\nexit 0",
        0,
        "sleep 1107",
        true,
    ),
    (
        "main killed by a signal",
        "sleep 1109 & sleep 0.3; kill -KILL $$",
        137,
        "sleep 1109",
        false,
    ),
];

fn escapes_are_caught(test: &str, mode: impl Fn(&TestJob) -> Mode) {
    for (what, body, want, cmd, killed) in ESCAPES {
        let t = TestJob::new(test);
        let m = mode(&t);
        let rec = contain(&t, &m, body, *want);
        let cmds = leftover_cmds(&rec);
        assert!(
            cmds.iter().any(|c| c.starts_with(cmd)),
            "{what}: {cmd:?} not reported: {rec}"
        );
        if *killed {
            assert!(
                leftover_ended_by(&rec).contains(&"killed".to_string()),
                "{what}: {rec}"
            );
        }
        if matches!(m, Mode::Delegated { .. }) {
            for l in rec["leftovers"].as_array().unwrap() {
                assert_eq!(l["uid"], NOBODY, "{what}: {rec}");
            }
        } else {
            for l in rec["leftovers"].as_array().unwrap() {
                assert_eq!(l["in_cgroup"], false, "no cgroup: {rec}");
            }
        }
    }
}

fn chasers_are_caught(test: &str, mode: impl Fn(&TestJob) -> Mode) {
    let t = TestJob::new(test);
    let m = mode(&t);
    let start = Instant::now();
    let rec = contain(&t, &m, CHASERS, 0);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        leftover_ended_by(&rec).contains(&"killed".to_string()),
        "{rec}"
    );
    assert!(rec["kill_passes"].as_u64().unwrap() >= 1, "{rec}");
}

// ---- subreaper ----------------------------------------------------------------------------

#[test]
fn subreaper_catches_each_escape() {
    escapes_are_caught("sr-escape", |_| Mode::Subreaper);
}

#[test]
fn subreaper_catches_fork_chasers() {
    chasers_are_caught("sr-chaser", |_| Mode::Subreaper);
}

#[test]
fn subreaper_daemon_is_reparented_to_cgjob() {
    let t = TestJob::new("sr-reparent");
    let rec = contain(
        &t,
        &Mode::Subreaper,
        "setsid bash -c 'sleep 1110 & exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 0",
        0,
    );
    let l = &rec["leftovers"][0];
    assert_eq!(l["ppid"], rec["supervisor_pid"], "{rec}");
}

#[test]
fn subreaper_bounded_fork_bomb() {
    let mut t = TestJob::new("sr-bomb");
    // Safety net where v1 pids exists: a pids cgroup cgjob and so the whole job runs in.
    let net = pids_net(&mut t, 1200);
    // Every process forks two, then sleeps ignoring TERM: depth 9 → at most 1023.
    let script = t.script(
        "bomb.sh",
        "bomb() { local d=$1; if [ $d -lt 9 ]; then bomb $((d+1)) & bomb $((d+1)) & fi; trap '' TERM; exec sleep 1111; }\nbomb 0 &\nsleep 2\nexit 0",
    );
    let mut cmd = run_in(
        &t,
        &Mode::Subreaper,
        &["--json", "--grace", "0.3s", "--", "bash", &script],
    );
    join_before_exec(&mut cmd, net.as_deref());
    let o = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let s = t.survivors();
    assert!(
        s.is_empty(),
        "{} survived: {:?}",
        s.len(),
        &s[..s.len().min(5)]
    );
    let rec = record_of(&o);
    let n = rec["leftovers"].as_array().unwrap().len();
    assert!(
        n > 200,
        "a bomb of that size leaves many processes; recorded {n}"
    );
}

#[test]
fn subreaper_timeout_kills_a_main_that_ignores_term() {
    let t = TestJob::new("sr-timeout");
    let start = Instant::now();
    let script = t.script("job.sh", "trap '' TERM; sleep 1112 & wait; wait");
    let o = run_bounded(
        run_in(
            &t,
            &Mode::Subreaper,
            &[
                "--json",
                "--timeout",
                "0.5",
                "--kill-after",
                "0.5",
                "--",
                "bash",
                &script,
            ],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 124, "{}", stderr_of(&o));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
    let rec = record_of(&o);
    assert_eq!(rec["timeout"]["phase"], "killed", "{rec}");
    assert_eq!(rec["exit"]["signal"]["signal"], 9, "{rec}");
}

#[test]
fn subreaper_leftovers_wait_and_forward_to_all() {
    // --leftovers wait: a background job that finishes on its own; --forward-to all: SIGUSR1
    // to cgjob reaches a grandchild.
    let t = TestJob::new("sr-wait");
    let script = t.script(
        "job.sh",
        "bash -c 'trap \"echo usr1 > $TMPD/got; exit 0\" USR1; echo $BASHPID > $TMPD/ready; while :; do sleep 0.05; done' &\nsleep 0.6 &\nexit 0",
    );
    let mut cmd = run_in(
        &t,
        &Mode::Subreaper,
        &[
            "--json",
            "--leftovers",
            "wait",
            "--forward-to",
            "all",
            "--",
            "bash",
            &script,
        ],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    t.wait_for("the grandchild", LIMIT, || t.path("ready").exists());
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let o = wait_bounded(&mut child, LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert_eq!(std::fs::read_to_string(t.path("got")).unwrap(), "usr1\n");
    assert!(t.survivors().is_empty());
    let rec = record_of(&o);
    assert!(
        leftover_ended_by(&rec).iter().all(|e| e == "exited"),
        "left to finish on their own: {rec}"
    );
}

/// Thaws a v1 freezer cgroup when dropped (before the test's guard kills what is in it).
struct ThawOnDrop(PathBuf);

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

/// A process that survives every SIGKILL (frozen by the v1 freezer: state D until thawed)
/// ends the job with status 123 and a line per process, as in a cgroup — here with nothing
/// to leave in place but the process itself.
#[test]
fn subreaper_reports_unkillable_processes() {
    let mut t = TestJob::new("sr-unkillable");
    let frz = t.v1_freezer();
    let _thaw = ThawOnDrop(frz.clone());
    let script = t.script("job.sh", &joins_freezer_body(&frz, 1122));
    let freezer = freeze_once_written(&frz, t.path("pids"));
    let o = run_bounded(
        run_in(
            &t,
            &Mode::Subreaper,
            &[
                "--json",
                "--grace",
                "0.2",
                "--kill-timeout",
                "1",
                "--",
                "bash",
                &script,
            ],
        ),
        LIMIT,
    );
    freezer.join().unwrap();
    let err = stderr_of(&o);
    assert_eq!(code(&o), 123, "{err}");
    let pid = t.pids_in("pids")[0];
    assert!(
        err.contains("UNKILLABLE processes are LEFT RUNNING"),
        "{err}"
    );
    assert!(
        err.contains(&format!("unkillable: pid {pid} state D")),
        "{err}"
    );
    let rec = record_of(&o);
    assert_eq!(rec["unkillable"], true, "{rec}");
    assert_eq!(rec["containment"], "subreaper", "{rec}");
    assert_eq!(rec["leftovers"][0]["ended_by"], "unkillable", "{rec}");
    // Thawed, the pending SIGKILL lands.
    drop(_thaw);
    t.wait_for("the thawed process to die", LIMIT, || {
        !matches!(state_of(pid), Some('S' | 'R' | 'D' | 'T'))
    });
}

/// `auto` with the cgroup2 mount read-only and cgjob not PID 1: the process tree, with one
/// loud line saying so; `--require-cgroup` refuses instead.
#[test]
fn auto_falls_back_to_subreaper_with_a_warning_and_require_cgroup_refuses() {
    let t = TestJob::new("sr-auto");
    let script = t.script(
        "job.sh",
        "setsid bash -c 'trap \"\" TERM; sleep 1113 & exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 6",
    );
    let mut c = ro_cgroup_ns(false);
    c.args([
        env!("CARGO_BIN_EXE_cgjob"),
        "run",
        "--json",
        "--grace",
        "0.3s",
        "--",
        "bash",
    ])
    .arg(&script)
    .env(MARKER_VAR, &t.marker)
    .env("TMPD", t.dir.path())
    .stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 6, "{err}");
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARNING")).collect();
    assert_eq!(warnings.len(), 1, "one warning line: {err}");
    for needle in [
        "weaker containment (subreaper)",
        "read-only",
        "another supervisor",
        "--require-cgroup",
    ] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} in {}",
            warnings[0]
        );
    }
    let rec = record_of(&o);
    assert_eq!(rec["containment"], "subreaper", "{rec}");
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1113"], "{rec}");
    assert!(host_cgroup2_is_rw());

    let mut c = ro_cgroup_ns(false);
    c.args([env!("CARGO_BIN_EXE_cgjob"), "run", "--require-cgroup"])
        .args(["--", "bash", "-c", "touch $TMPD/ran"])
        .env(MARKER_VAR, &t.marker)
        .env("TMPD", t.dir.path())
        .stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("cgjob: a cgroup is required (--require-cgroup)")
            && err.contains("read-only"),
        "{err}"
    );
    assert!(!t.path("ran").exists(), "nothing may run");
}

/// Kills a child of the test (an "outside supervisor") when dropped, also on failure.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A documented limitation: without a cgroup, a process that another supervisor starts on the
/// job's behalf (systemd --user through D-Bus, `at`, a container daemon, sshd) is not cgjob's
/// descendant — it never was, so no subreaper ever sees it — and nothing in the process tree
/// ties it to the job. Nothing can be built from inside the tree to catch it: the job is
/// over, cgjob reports nothing of it, and it runs on. (Here the outside supervisor is a loop
/// the test starts that runs whatever the job writes to its FIFO.) A cgroup does not catch
/// it either — the supervisor's cgroup is not the job's — but as a subreaper the same is true
/// of a process cgjob orphans by dying: see the next test.
#[test]
fn subreaper_cannot_catch_what_another_supervisor_starts() {
    let t = TestJob::new("sr-outside");
    let fifo = t.path("spawn.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let _supervisor = KillOnDrop(
        Command::new("bash")
            .arg("-c")
            .arg("while read -r line < \"$0\"; do setsid bash -c \"$line\" </dev/null >/dev/null 2>&1 & echo $! >> $TMPD/outside; done")
            .arg(&fifo)
            .env(MARKER_VAR, &t.marker)
            .env("TMPD", t.dir.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let body = format!(
        "echo 'exec sleep 1114' > {}\nwhile [ ! -s $TMPD/outside ]; do sleep 0.05; done\nsleep 1115 &\nsleep 0.2\nexit 0",
        fifo.display()
    );
    let script = t.script("job.sh", &body);
    let o = run_bounded(
        run_in(
            &t,
            &Mode::Subreaper,
            &["--json", "--grace", "0.3s", "--", "bash", &script],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let rec = record_of(&o);
    // What cgjob's tree held is caught …
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1115"], "{rec}");
    // … what the outside supervisor started is not, and runs on.
    let outside = t.pids_in("outside");
    assert_eq!(outside.len(), 1);
    let st = state_of(outside[0]);
    assert!(
        matches!(st, Some('S' | 'R')),
        "the process the outside supervisor started runs on after the job: {st:?}"
    );
    // (The test's guard kills it, by its marker.)
}

/// A documented limitation: as a subreaper cgjob has no guardian (a guardian acts on a
/// cgroup). Killed with SIGKILL, it takes its main process along (`PR_SET_PDEATHSIG`), but
/// what the main process started — here a daemon and the command it waits for — is
/// reparented above cgjob, out of anyone's reach.
#[test]
fn subreaper_killed_takes_main_along_but_not_its_daemons() {
    let t = TestJob::new("sr-killed");
    let script = t.script(
        "job.sh",
        "setsid bash -c 'sleep 1116 & echo $! > $TMPD/daemon' </dev/null >/dev/null 2>&1\necho $$ > $TMPD/main\nsleep 1117",
    );
    let mut cmd = run_in(&t, &Mode::Subreaper, &["--", "bash", &script]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    t.wait_for("the job to start", LIMIT, || {
        t.path("main").exists() && t.path("daemon").exists()
    });
    let (main, daemon) = (t.pids_in("main")[0], t.pids_in("daemon")[0]);
    child.kill().unwrap();
    child.wait().unwrap();
    t.wait_for("the main process to die with cgjob", LIMIT, || {
        !matches!(state_of(main), Some('S' | 'R' | 'D' | 'T'))
    });
    assert!(
        matches!(state_of(daemon), Some('S' | 'R')),
        "the daemon runs on (documented): {:?}",
        state_of(daemon)
    );
}

// ---- PID namespace ------------------------------------------------------------------------

#[test]
fn pid_namespace_catches_each_escape() {
    escapes_are_caught("ns-escape", |_| Mode::PidNamespace);
}

#[test]
fn pid_namespace_catches_fork_chasers() {
    chasers_are_caught("ns-chaser", |_| Mode::PidNamespace);
}

/// Every process of the namespace is the job's, whatever its parentage: also the children a
/// subreaper inside the namespace keeps, and a daemon of theirs that ignores SIGTERM.
#[test]
fn pid_namespace_kills_everything_in_it() {
    let t = TestJob::new("ns-all");
    let py = t.path("sub.py");
    std::fs::write(
        &py,
        "import ctypes, os, signal, time\n\
         ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         os.system(\"setsid sh -c 'trap \\\"\\\" TERM; sleep 1118' &\")\n\
         time.sleep(1119)\n",
    )
    .unwrap();
    let rec = contain(
        &t,
        &Mode::PidNamespace,
        &format!("python3 {} &\nsleep 0.5\nexit 0", py.display()),
        0,
    );
    let cmds = leftover_cmds(&rec);
    assert!(cmds.iter().any(|c| c.contains("sleep 1118")), "{rec}");
    assert!(cmds.iter().any(|c| c.contains("sub.py")), "{rec}");
    for l in rec["leftovers"].as_array().unwrap() {
        assert!(l["pid"].as_i64().unwrap() < 1000, "namespace pids: {rec}");
    }
}

#[test]
fn pid_namespace_require_cgroup_refuses_and_explicit_mode_needs_pid1() {
    let t = TestJob::new("ns-require");
    let mut c = run_in(&t, &Mode::PidNamespace, &["--require-cgroup"]);
    c.args(["--", "bash", "-c", "touch $TMPD/ran"]);
    let o = run_bounded(c, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--require-cgroup") && err.contains("read-only"),
        "{err}"
    );
    assert!(!t.path("ran").exists(), "nothing may run");

    // Asked for outside a namespace of its own: cgjob is not PID 1.
    let mut c = t.cgjob();
    c.args([
        "run",
        "--containment",
        "pid-namespace",
        "--",
        "bash",
        "-c",
        "touch $TMPD/ran",
    ]);
    let o = run_bounded(c, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("needs cgjob to be PID 1"), "{err}");
    assert!(!t.path("ran").exists(), "nothing may run");
}

// ---- unprivileged -------------------------------------------------------------------------

#[test]
fn unprivileged_in_a_delegated_cgroup_catches_each_escape() {
    escapes_are_caught("nb-escape", |t| Mode::Delegated {
        deleg: delegate(t, "deleg"),
    });
}

#[test]
fn unprivileged_in_a_delegated_cgroup_catches_fork_chasers() {
    chasers_are_caught("nb-chaser", |t| Mode::Delegated {
        deleg: delegate(t, "deleg"),
    });
}

/// The README's set-up: cgjob in one delegated cgroup, jobs under another (`--parent`); the
/// migration rule is satisfied by the delegated common ancestor.
#[test]
fn unprivileged_with_a_delegated_parent() {
    let t = TestJob::new("nb-parent");
    let d = delegate(&t, "deleg");
    let shell = d.join("shell");
    std::fs::create_dir(&shell).unwrap();
    for f in ["", "cgroup.procs"] {
        std::os::unix::fs::chown(shell.join(f), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let script = t.script(
        "job.sh",
        "setsid bash -c 'sleep 1120 & exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 0",
    );
    let mut c = as_nobody(&t, Some(&shell));
    c.args([
        env!("CARGO_BIN_EXE_cgjob"),
        "run",
        "--json",
        "--grace",
        "0.3s",
        "--name",
        "job",
        "--parent",
    ])
    .arg(d.join("jobs"))
    .args(["--", "bash", &script])
    .env(MARKER_VAR, &t.marker)
    .env("TMPD", t.dir.path())
    .stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
    let rec = record_of(&o);
    assert_eq!(rec["containment"], "cgroup-v2");
    assert_eq!(rec["cgroup"], d.join("jobs/job").to_str().unwrap());
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1120"], "{rec}");
    assert!(!d.join("jobs/job").exists());
}

/// `gc` by the user looks where that user's `cgjob run` puts jobs: the delegated parent. A
/// stale job there (its owner record names a supervisor that is gone) is removed; without a
/// delegated cgroup, `gc` says what is missing.
#[test]
fn unprivileged_gc_sweeps_the_delegated_parent() {
    let t = TestJob::new("nb-gc");
    let d = delegate(&t, "deleg");
    let stale = d.join("cgjob/stale");
    std::fs::create_dir_all(&stale).unwrap();
    for p in [d.join("cgjob"), stale.clone()] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let dead = format!(
        r#"{{"version":1,"kind":"run","supervisor_pid":{},"supervisor_start":1,"uid":{NOBODY},"created":1}}"#,
        i32::MAX - 1
    );
    set_owner_record(&stale, c"user.cgjob.job", &dead);

    let exe = env!("CARGO_BIN_EXE_cgjob");
    let mut c = as_nobody(&t, Some(&d));
    c.args([exe, "gc"]).stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(
        out.contains("removed stale job cgroup") && out.contains("/stale"),
        "{out}"
    );
    assert!(!stale.exists());

    let mut c = as_nobody(&t, None);
    c.args([exe, "gc"]).stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 125, "{err}");
    assert!(err.contains("no cgroup is delegated to uid 65534"), "{err}");
}

/// Not root and no delegated cgroup: with `--require-cgroup`, one line saying what is missing
/// and how to get it, status 125, nothing run; without it, the process tree and the warning.
#[test]
fn unprivileged_without_delegation() {
    let t = TestJob::new("nb-none");
    let exe = env!("CARGO_BIN_EXE_cgjob");
    // (The variable as a scheduler or a container image would set it.)
    for flag in [
        "--require-cgroup",
        "--containment=cgroup-v2",
        "CGJOB_REQUIRE_CGROUP=1",
    ] {
        let mut c = as_nobody(&t, None);
        match flag.split_once('=') {
            Some((var, v)) if !var.starts_with('-') => {
                c.env(var, v).args([exe, "run"]);
            }
            _ => {
                c.args([exe, "run", flag]);
            }
        }
        c.args(["--", "bash", "-c", "touch $TMPD/ran"])
            .env(MARKER_VAR, &t.marker)
            .env("TMPD", t.dir.path())
            .stdin(Stdio::null());
        let o = run_bounded(c, LIMIT);
        let err = stderr_of(&o);
        assert_eq!(code(&o), 125, "{flag}: {err}");
        assert_eq!(err.lines().count(), 1, "{flag}: one line: {err}");
        for needle in [
            "a cgroup is required",
            "no cgroup is delegated to uid 65534",
            "systemd-run --user --scope -p Delegate=yes",
            "chown",
        ] {
            assert!(err.contains(needle), "{flag}: {needle:?} in {err}");
        }
        assert!(!t.path("ran").exists(), "{flag}: nothing may run");
    }

    let script = t.script(
        "job.sh",
        "setsid bash -c 'trap \"\" TERM; sleep 1121 & exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 0",
    );
    let mut c = as_nobody(&t, None);
    c.args([
        exe, "run", "--json", "--grace", "0.3s", "--", "bash", &script,
    ])
    .env(MARKER_VAR, &t.marker)
    .env("TMPD", t.dir.path())
    .stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), 0, "{err}");
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
    let warning = err
        .lines()
        .find(|l| l.contains("WARNING"))
        .unwrap_or_else(|| {
            panic!("no warning: {err}");
        });
    assert!(
        warning.contains("weaker containment (subreaper)")
            && warning.contains("no cgroup is delegated to uid 65534"),
        "{warning}"
    );
    let rec = record_of(&o);
    assert_eq!(rec["containment"], "subreaper", "{rec}");
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1121"], "{rec}");
    assert_eq!(rec["leftovers"][0]["ended_by"], "killed", "{rec}");
}

// ---- usage ---------------------------------------------------------------------------------

#[test]
fn contradictory_containment_options_are_usage_errors() {
    let t = TestJob::new("modes-usage");
    let cases: &[&[&str]] = &[
        &["--containment", "subreaper", "--require-cgroup"],
        &["--containment", "pid-namespace", "--require-cgroup"],
        &["--containment", "subreaper", "--parent", "x"],
        &["--containment", "nope"],
    ];
    for args in cases {
        let mut c = t.cgjob();
        c.arg("run")
            .args(*args)
            .args(["--", "bash", "-c", "touch $TMPD/ran"]);
        let o = run_bounded(c, LIMIT);
        let err = stderr_of(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!t.path("ran").exists());
    }
}

// ---- doctor --------------------------------------------------------------------------------

fn doctor_json(mut c: Command) -> serde_json::Value {
    c.stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&o.stdout));
    })
}

#[test]
fn doctor_on_this_host() {
    // (A cgroup below the root for doctor to find cgroup.kill in, even on a fresh host.)
    let _t = TestJob::new("doctor");
    let exe = env!("CARGO_BIN_EXE_cgjob");
    let o = run_bounded(
        {
            let mut c = Command::new(exe);
            c.arg("doctor");
            c
        },
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "cgroup2 mount",
        "cgroup.kill (5.14)",
        "clone3 CLONE_INTO_CGROUP (5.7)",
        "pidfd (5.3)",
        "PID 1",
        "v2 controllers",
        "containment",
        "cgroup-v2",
        "because job cgroups can be made under",
    ] {
        assert!(out.contains(needle), "{needle:?} in:\n{out}");
    }
    let j = doctor_json({
        let mut c = Command::new(exe);
        c.args(["doctor", "--json"]);
        c
    });
    assert_eq!(j["containment"], "cgroup-v2", "{j}");
    assert_eq!(j["uid"], 0);
    assert_eq!(j["cgroup2_mount"], cgroup2_root().to_str().unwrap(), "{j}");
    assert_eq!(j["cgroup2_read_only"], false);
    assert_eq!(
        j["job_parent"],
        cgroup2_root().join("cgjob").to_str().unwrap()
    );
    // This suite runs on Linux 6.x.
    for k in ["clone_into_cgroup", "pidfd", "cgroup_kill", "cgroup_freeze"] {
        assert_eq!(j[k], true, "{k}: {j}");
    }
    assert_eq!(j["process"]["proc_is_own"], true);
    assert_ne!(j["process"]["pid"], 1);
}

#[test]
fn doctor_without_a_writable_cgroup() {
    let exe = env!("CARGO_BIN_EXE_cgjob");
    // Read-only mount, PID 1 of a namespace: pid-namespace.
    let j = doctor_json({
        let mut c = ro_cgroup_ns(true);
        c.args([exe, "doctor", "--json"]);
        c
    });
    assert_eq!(j["containment"], "pid-namespace", "{j}");
    assert_eq!(j["cgroup2_read_only"], true, "{j}");
    assert_eq!(j["process"]["pid"], 1, "{j}");
    assert!(
        j["cgroup_problem"].as_str().unwrap().contains("read-only"),
        "{j}"
    );
    // Read-only mount, not PID 1: subreaper, and the text says why.
    let mut c = ro_cgroup_ns(false);
    c.args([exe, "doctor"]).stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(
        out.contains("subreaper")
            && out.contains("read-only")
            && out.contains("another supervisor"),
        "{out}"
    );
    assert!(host_cgroup2_is_rw());
}

#[test]
fn doctor_for_an_unprivileged_user() {
    let t = TestJob::new("nb-doctor");
    let exe = env!("CARGO_BIN_EXE_cgjob");
    let d = delegate(&t, "deleg");
    let j = doctor_json({
        let mut c = as_nobody(&t, Some(&d));
        c.args([exe, "doctor", "--json"]);
        c
    });
    assert_eq!(j["containment"], "cgroup-v2", "{j}");
    assert_eq!(j["delegated_cgroup"], d.to_str().unwrap(), "{j}");
    assert_eq!(j["job_parent"], d.join("cgjob").to_str().unwrap(), "{j}");
    assert!(!d.join("cgjob").exists(), "doctor changes nothing");

    let j = doctor_json({
        let mut c = as_nobody(&t, None);
        c.args([exe, "doctor", "--json"]);
        c
    });
    assert_eq!(j["containment"], "subreaper", "{j}");
    assert_eq!(j["delegated_cgroup"], serde_json::Value::Null, "{j}");
    assert!(
        j["cgroup_problem"]
            .as_str()
            .unwrap()
            .contains("no cgroup is delegated"),
        "{j}"
    );
}
