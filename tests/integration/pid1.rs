//! cgjob as PID 1 of a PID namespace, as in a container: `unshare --pid --fork --mount-proc
//! cgjob run …`. There every orphan of the namespace is cgjob's child whether or not it is a
//! subreaper, the kernel drops signals that PID 1 has no handler for unless they are blocked,
//! and /proc (mounted for the namespace) and cgroup.procs both speak namespace pids.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// `unshare --pid --fork [--mount-proc] cgjob run --parent <ours> --name job <args…>`.
fn in_pid_ns(t: &TestJob, mount_proc: bool, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork"]);
    if mount_proc {
        c.arg("--mount-proc");
    }
    c.arg(env!("CARGO_BIN_EXE_cgjob"))
        .arg("run")
        .arg("--parent")
        .arg(&t.parent)
        .args(["--name", "job"])
        .args(args)
        .env(MARKER_VAR, &t.marker)
        .env("TMPD", t.dir.path())
        .stdin(Stdio::null());
    c
}

/// The arguments of a `--json` run of `bash SCRIPT` with a 1 s grace period.
fn json_run_of(script: &str) -> [&str; 6] {
    ["--json", "--grace", "1s", "--", "bash", script]
}

/// Start `in_pid_ns(t, true, args)`, its output piped, and wait until cgjob runs as PID 1 of the
/// new namespace and the job has written `ready`; returns `unshare` and PID 1's outside pid.
fn start_in_pid_ns(t: &TestJob, args: &[&str]) -> (Child, i32) {
    let mut cmd = in_pid_ns(t, true, args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn unshare");
    let pid1 = outer_pid1(t, child.id() as i32);
    wait_file(t, "ready");
    (child, pid1)
}

/// (comm, ppid) of a pid, as the test's /proc shows it.
fn comm_ppid(pid: i32) -> Option<(String, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// The outside pid of the namespace's PID 1: `unshare`'s child, once it has exec'd cgjob.
fn outer_pid1(t: &TestJob, unshare: i32) -> i32 {
    let mut found = None;
    t.wait_for("cgjob as PID 1 of the new namespace", LIMIT, || {
        found = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| comm_ppid(*p).is_some_and(|(c, pp)| pp == unshare && c == "cgjob"));
        found.is_some()
    });
    let pid = found.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .unwrap_or_default()
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(nspid, "1", "cgjob is PID 1 of its namespace ({status})");
    pid
}

/// Send `sig` to a pid through a pidfd after checking it is still cgjob.
fn signal_cgjob(pid: i32, sig: i32) {
    // SAFETY: pidfd syscalls with integer arguments; the fd is closed right after.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(comm_ppid(pid).map(|c| c.0).as_deref(), Some("cgjob"));
        let rc = libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            sig,
            std::ptr::null::<u8>(),
            0,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd as i32);
        assert_eq!(rc, 0, "signal cgjob: {err}");
    }
}

fn wait_file(t: &TestJob, f: &str) {
    let p = t.path(f);
    t.wait_for(&format!("the job to write {f}"), LIMIT, || p.exists());
}

#[test]
fn pid1_status_leftovers_and_cleanup() {
    let t = TestJob::new("pid1-exit");
    let script = t.script(
        "job.sh",
        "setsid bash -c 'sleep 1002 & echo $! > $TMPD/daemon; exit 0' </dev/null >/dev/null 2>&1\n\
         sleep 1001 & echo $! > $TMPD/bg\n\
         echo $$ > $TMPD/main\n\
         sleep 0.3\n\
         exit 3",
    );
    let o = run_bounded(in_pid_ns(&t, true, &json_run_of(&script)), LIMIT);
    assert_eq!(
        code(&o),
        3,
        "unshare passes on cgjob's status: {}",
        stderr_of(&o)
    );
    t.assert_clean();
    let rec = record_of(&o);
    assert_eq!(rec["exit_status"], 3);
    assert_eq!(rec["exit"]["code"], 3);
    assert_eq!(rec["supervisor_pid"], 1, "cgjob is PID 1: {rec}");
    assert_eq!(
        rec["main_pid"],
        t.pids_in("main")[0],
        "pids are the namespace's"
    );
    assert_eq!(rec["cgroup_removed"], true);
    let mut cmds = leftover_cmds(&rec);
    cmds.sort();
    assert_eq!(cmds, vec!["sleep 1001", "sleep 1002"], "{rec}");
    for l in rec["leftovers"].as_array().unwrap() {
        let pid = l["pid"].as_i64().unwrap() as i32;
        assert_eq!(l["in_cgroup"], true, "{rec}");
        let want = if l["cmdline"][1] == "1002" {
            "daemon"
        } else {
            "bg"
        };
        assert_eq!(pid, t.pids_in(want)[0], "pids are the namespace's: {rec}");
        // Both lost their parent (the daemon at once, the background child when the main
        // process exited) and were handed to the namespace's init: cgjob.
        assert_eq!(l["ppid"], 1, "reparented to PID 1, cgjob: {rec}");
    }
}

#[test]
fn pid1_gets_signals_sent_from_outside_and_forwards_them() {
    // (trap, expected status): a job that handles SIGTERM and exits 0, and one that does not
    // and dies of it. PID 1 only receives signals it blocks or handles; cgjob blocks them.
    let cases = [
        ("trap 'echo term > $TMPD/got; exit 0' TERM", 0),
        ("echo no-trap > $TMPD/got", 143),
    ];
    for (trap, want) in cases {
        let t = TestJob::new("pid1-sig");
        let script = t.script(
            "job.sh",
            &format!("{trap}\necho $$ > $TMPD/ready\nsleep 1000 & wait\nexit 42"),
        );
        let (mut child, pid1) = start_in_pid_ns(&t, &json_run_of(&script));
        let sent = Instant::now();
        signal_cgjob(pid1, libc::SIGTERM);
        let o = wait_bounded(&mut child, LIMIT);
        assert_eq!(code(&o), want, "{trap}: {}", stderr_of(&o));
        assert!(sent.elapsed() < Duration::from_secs(10));
        if want == 0 {
            assert_eq!(
                std::fs::read_to_string(t.path("got")).unwrap(),
                "term\n",
                "the job's TERM trap ran"
            );
        }
        t.assert_clean();
        let rec = record_of(&o);
        assert_eq!(rec["exit_status"], want);
        if want == 143 {
            assert_eq!(rec["exit"]["signal"]["signal"], libc::SIGTERM, "{rec}");
        }
        assert_eq!(leftover_cmds(&rec), vec!["sleep 1000"], "{rec}");
    }
}

#[test]
fn pid1_reaps_orphans_while_the_job_runs() {
    let t = TestJob::new("pid1-orphans");
    // 50 double forks: each subshell starts a short sleep and exits, so the sleep's parent is
    // gone and it is handed to PID 1. After they have all ended, the job (still running)
    // checks in its own /proc that none of them is left, not even as a zombie.
    let script = t.script(
        "job.sh",
        r#"for i in $(seq 50); do ( sleep 0.$((RANDOM % 3 + 1)) & echo $! >> $TMPD/pids ); done
sleep 1.5
for p in $(cat $TMPD/pids); do
    if [ -e /proc/$p ]; then
        read -r _ comm st ppid _ < /proc/$p/stat
        echo "$p $comm $st ppid=$ppid" >> $TMPD/left
    fi
done
touch $TMPD/checked
exit 0"#,
    );
    let o = run_bounded(in_pid_ns(&t, true, &json_run_of(&script)), LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert_eq!(t.pids_in("pids").len(), 50, "50 orphans were started");
    assert!(t.path("checked").exists(), "the job checked its /proc");
    let left = std::fs::read_to_string(t.path("left")).unwrap_or_default();
    assert_eq!(left, "", "orphans not reaped by PID 1 while the job ran");
    t.assert_clean();
    let rec = record_of(&o);
    assert_eq!(
        rec["leftovers"].as_array().unwrap().len(),
        0,
        "every orphan had ended before the main process: {rec}"
    );
}

/// `unshare --pid --fork` without `--mount-proc`: cgroup.procs gives namespace pids while /proc
/// is the host's. The record must still describe only the job's processes (one leftover, the
/// background sleep), never processes outside the namespace that happen to carry those
/// numbers or that descend from the host's PID 1.
#[test]
fn pid1_without_its_own_proc_reports_only_the_job() {
    let t = TestJob::new("pid1-hostproc");
    let script = t.script("job.sh", "sleep 1003 & sleep 0.3; exit 4");
    let o = run_bounded(in_pid_ns(&t, false, &json_run_of(&script)), LIMIT);
    assert_eq!(code(&o), 4);
    t.assert_clean();
    let rec = record_of(&o);
    assert_eq!(rec["supervisor_pid"], 1);
    // Only pid, comm and in_cgroup in the message: the host's command lines are not ours to
    // print.
    let cmds = leftover_cmds(&rec);
    let seen: Vec<String> = rec["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "pid {} comm {} in_cgroup {}",
                l["pid"], l["comm"], l["in_cgroup"]
            )
        })
        .collect();
    assert!(
        cmds == ["sleep 1003"],
        "{} leftovers recorded where the job left one (sleep 1003): {seen:?}",
        cmds.len()
    );
}

/// SIGKILL to the namespace's PID 1 kills every process of the namespace (the kernel does so,
/// guardian included). Nothing of the job runs on; the then empty job cgroup can only be
/// removed from outside the namespace, by `cgjob gc`.
#[test]
fn pid1_killed_leaves_nothing_running_and_gc_removes_its_cgroup() {
    let t = TestJob::new("pid1-kill");
    let script = t.script("job.sh", "sleep 1004 & echo $! > $TMPD/ready\nwait");
    let (mut child, pid1) = start_in_pid_ns(&t, &["--", "bash", &script]);
    assert_eq!(
        procs(&t.job_cgroup()).len(),
        2,
        "bash and its sleep run in the job cgroup"
    );
    signal_cgjob(pid1, libc::SIGKILL);
    let o = wait_bounded(&mut child, LIMIT);
    // (unshare reports its child's death by SIGKILL as a failure of its own: status 1.)
    assert_ne!(code(&o), 0, "{}", stderr_of(&o));
    t.wait_for("the job's processes to be gone", LIMIT, || {
        t.survivors().is_empty() && procs(&t.job_cgroup()).is_empty()
    });
    let mut c = t.cgjob();
    c.args(["gc", "--parent"]).arg(&t.parent);
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    t.assert_clean();
}

/// `cgjob gc` run outside the namespace (on the host) while cgjob runs a job as PID 1 inside
/// it must leave that live job alone: its supervisor runs, only under another pid number.
#[test]
fn gc_outside_the_namespace_leaves_a_live_pid1_job_alone() {
    let t = TestJob::new("pid1-gc");
    let script = t.script(
        "job.sh",
        "trap 'echo term > $TMPD/got; exit 0' TERM\necho $$ > $TMPD/ready\nsleep 1005 & wait",
    );
    let (mut child, pid1) = start_in_pid_ns(&t, &json_run_of(&script));
    let before = procs(&t.job_cgroup());
    assert_eq!(before.len(), 2, "bash and its sleep run in the job cgroup");

    let mut c = t.cgjob();
    c.args(["gc", "--json", "--parent"]).arg(&t.parent);
    let g = run_bounded(c, LIMIT);
    let job_alive = t.job_cgroup().exists() && procs(&t.job_cgroup()) == before;
    let gc_said = format!(
        "gc exit status {}, stdout: {}, stderr: {}",
        code(&g),
        String::from_utf8_lossy(&g.stdout),
        stderr_of(&g)
    );

    // End the job as intended either way, so that the failure below is about gc alone.
    if comm_ppid(pid1).is_some_and(|(c, _)| c == "cgjob") {
        signal_cgjob(pid1, libc::SIGTERM);
    }
    let o = wait_bounded(&mut child, LIMIT);
    assert!(
        job_alive,
        "gc from outside the PID namespace took the live job for a stale one (its owner \
         record names supervisor pid 1, the namespace's) and swept it; {gc_said}"
    );
    assert_eq!(code(&g), 0, "{gc_said}");
    let swept: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
    assert_eq!(swept, serde_json::json!([]), "nothing stale to sweep");
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert_eq!(std::fs::read_to_string(t.path("got")).unwrap(), "term\n");
    t.assert_clean();
}
