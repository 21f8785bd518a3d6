//! Behaviour of `cgjob run`: birth in the cgroup, exit statuses, signal forwarding, timeouts,
//! leftover policies, reports, unkillable processes, and `gc`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

fn sh(t: &TestJob, extra: &[&str], script: &str) -> std::process::Output {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend_from_slice(&["--", "bash", "-c", script]);
    run_bounded(t.run_cmd(&args), LIMIT)
}

#[test]
fn exit_status_table() {
    let t = TestJob::new("exit");
    let noexec = t.path("noexec");
    std::fs::write(&noexec, "#!/bin/sh\n").unwrap();
    let cases: &[(&[&str], i32)] = &[
        (&["true"], 0),
        (&["bash", "-c", "exit 3"], 3),
        (&["bash", "-c", "exit 255"], 255),
        (&["bash", "-c", "kill -TERM $$"], 143),
        (&["bash", "-c", "kill -KILL $$"], 137),
        (&["/nonexistent/cmd"], 127),
        (&["no-such-command-anywhere"], 127),
        (&[noexec.to_str().unwrap()], 126),
        (&["/"], 126),
    ];
    for (cmd, want) in cases {
        let mut args = vec!["--"];
        args.extend_from_slice(cmd);
        let o = run_bounded(t.run_cmd(&args), LIMIT);
        assert_eq!(code(&o), *want, "{cmd:?}: {}", stderr_of(&o));
        assert!(!t.job_cgroup().exists(), "{cmd:?} left its cgroup");
        if *want == 126 || *want == 127 {
            let err = stderr_of(&o);
            assert_eq!(err.lines().count(), 1, "one line of error: {err}");
            assert!(err.starts_with("cgjob: "), "{err}");
        }
    }
}

#[test]
fn born_in_the_job_cgroup_with_clone3_and_with_fork_join() {
    for method in ["clone3", "fork-join"] {
        let t = TestJob::new(&format!("born-{method}"));
        // The command reports its own cgroup and its parent's (cgjob's).
        let o = sh(
            &t,
            &["--spawn", method, "--json"],
            "cat /proc/self/cgroup; echo; cat /proc/$PPID/cgroup",
        );
        assert_eq!(code(&o), 0, "{}", stderr_of(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let rel = t.job_cgroup().strip_prefix(&t.root).unwrap().to_owned();
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("0::")).collect();
        assert_eq!(
            lines[0],
            format!("0::/{}", rel.display()),
            "the command runs in the job cgroup"
        );
        assert_ne!(
            lines[1], lines[0],
            "cgjob itself stays outside the job cgroup"
        );
        assert_eq!(record_of(&o)["spawn_method"], method);
        t.assert_clean();
    }
}

#[test]
fn quiet_without_leftovers_and_one_summary_line_with_them() {
    let t = TestJob::new("quiet");
    let o = sh(&t, &[], "echo out");
    assert_eq!(code(&o), 0);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "out\n",
        "stdout is the job's alone"
    );
    assert_eq!(stderr_of(&o), "", "nothing on stderr when nothing was left");
    let o = sh(&t, &["--grace", "0.2s"], "sleep 1030 & sleep 0.2; exit 0");
    let err = stderr_of(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("1 leftover process") && err.contains("sleep 1030"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    t.assert_clean();
}

#[test]
fn report_file_holds_the_record() {
    let t = TestJob::new("report");
    let rep = t.path("rec.json");
    let o = sh(
        &t,
        &["--report", rep.to_str().unwrap(), "--grace", "0.2s"],
        "setsid sleep 1031 & sleep 0.2; exit 4",
    );
    assert_eq!(code(&o), 4);
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(rec["exit"]["code"], 4);
    assert_eq!(rec["exit_status"], 4);
    assert_eq!(rec["name"], "job");
    assert_eq!(rec["cgroup"], t.job_cgroup().to_str().unwrap());
    assert_eq!(rec["command"][0], "bash");
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1031"]);
    for k in [
        "pid",
        "ppid",
        "uid",
        "state",
        "start_time",
        "cmdline",
        "in_cgroup",
        "ended_by",
    ] {
        assert!(
            !rec["leftovers"][0][k].is_null(),
            "leftover field {k}: {rec}"
        );
    }
    for k in [
        "started_at",
        "ended_at",
        "kill_method",
        "main_exit_to_empty_ms",
        "cpu",
    ] {
        assert!(!rec[k].is_null(), "record field {k}: {rec}");
    }
    assert!(rec["cpu"]["usage_usec"].as_u64().unwrap() > 0);
    t.assert_clean();
}

/// Start cgjob on a bash script that logs the signals it gets (and starts a second process
/// that does the same), then send each forwarded signal to cgjob.
fn forwarding(to: &str) {
    let t = TestJob::new(&format!("fwd-{to}"));
    let sigs = ["HUP", "INT", "QUIT", "USR1", "USR2", "WINCH", "CONT"];
    let traps = |who: &str| -> String {
        sigs.iter()
            .map(|s| format!("trap 'echo {who} {s} >> $TMPD/got' {s}\n"))
            .collect()
    };
    // The second process is Python: a non-interactive bash starts background jobs with SIGINT
    // and SIGQUIT ignored, and such signals cannot be trapped again.
    let second = t.path("second.py");
    std::fs::write(
        &second,
        format!(
            "import os, signal, time\nd = os.environ['TMPD']\n\
             def h(n, _):\n    open(d + '/got', 'a').write('second %s\\n' % signal.Signals(n).name[3:])\n\
             for s in {sigs:?}:\n    signal.signal(getattr(signal, 'SIG' + s), h)\n\
             open(d + '/ready', 'a').write('ready\\n')\nwhile True:\n    time.sleep(0.05)\n"
        ),
    )
    .unwrap();
    let second = second.display();
    let main = t.script(
        "main.sh",
        &format!(
            "{}python3 {second} &\ntrap 'echo main TERM >> $TMPD/got; kill $!; exit 0' TERM\necho ready >> $TMPD/ready\nwhile :; do sleep 0.05 & wait $!; done",
            traps("main")
        ),
    );
    let mut child = t
        .run_cmd(&["--forward-to", to, "--", "bash", &main])
        .spawn()
        .unwrap();
    t.wait_for("the job to start", Duration::from_secs(10), || {
        std::fs::read_to_string(t.path("ready"))
            .map(|s| s.lines().count() == 2)
            .unwrap_or(false)
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let got = || std::fs::read_to_string(t.path("got")).unwrap_or_default();
    for s in sigs {
        let n: nix::sys::signal::Signal = format!("SIG{s}").parse().unwrap();
        nix::sys::signal::kill(pid, n).unwrap();
        t.wait_for(
            &format!("{s} to reach the main process"),
            Duration::from_secs(5),
            || got().lines().any(|l| l == format!("main {s}")),
        );
        if to == "all" {
            t.wait_for(
                &format!("{s} to reach the second process"),
                Duration::from_secs(5),
                || got().lines().any(|l| l == format!("second {s}")),
            );
        }
    }
    if to == "main" {
        // Give a wrongly forwarded signal time to show up before asserting it did not.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !got().contains("second"),
            "signals reached a process other than main: {}",
            got()
        );
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = wait_bounded(&mut child, LIMIT);
    assert_eq!(
        code(&o),
        0,
        "TERM was forwarded and the script exited 0: {}",
        stderr_of(&o)
    );
    t.assert_clean();
}

#[test]
fn forwards_signals_to_the_main_process() {
    forwarding("main");
}

#[test]
fn forwards_signals_to_every_process() {
    forwarding("all");
}

#[test]
fn timeout_signals_the_command() {
    let t = TestJob::new("timeout");
    let start = Instant::now();
    let o = run_bounded(
        t.run_cmd(&["--json", "--timeout", "0.5", "--", "sleep", "1040"]),
        LIMIT,
    );
    assert_eq!(code(&o), 124);
    assert!(start.elapsed() < Duration::from_secs(3));
    let rec = record_of(&o);
    assert_eq!(rec["timeout"]["phase"], "signalled");
    assert_eq!(rec["exit"]["signal"]["signal"], 15);
    t.assert_clean();
}

#[test]
fn timeout_with_a_command_that_ignores_term() {
    let t = TestJob::new("timeoutkill");
    let start = Instant::now();
    let o = sh(
        &t,
        &["--json", "--timeout", "0.5", "--kill-after", "0.5"],
        "trap '' TERM; sleep 1041; true",
    );
    assert_eq!(code(&o), 124, "{}", stderr_of(&o));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    let rec = record_of(&o);
    assert_eq!(rec["timeout"]["phase"], "killed");
    assert_eq!(rec["exit"]["signal"]["signal"], 9);
    t.assert_clean();
}

#[test]
fn timeout_signal_is_configurable() {
    let t = TestJob::new("timeoutsig");
    let o = sh(
        &t,
        &["--timeout", "0.3", "--timeout-signal", "USR1"],
        "trap 'echo got > $TMPD/got; exit 0' USR1; while :; do sleep 0.05; done",
    );
    assert_eq!(code(&o), 124);
    assert_eq!(std::fs::read_to_string(t.path("got")).unwrap(), "got\n");
    t.assert_clean();
}

#[test]
fn wait_policy_lets_leftovers_finish() {
    let t = TestJob::new("wait");
    let start = Instant::now();
    let o = sh(
        &t,
        &["--json", "--leftovers", "wait"],
        "(sleep 0.7; echo done > $TMPD/done) & exit 0",
    );
    assert_eq!(code(&o), 0);
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert!(
        t.path("done").exists(),
        "the leftover was allowed to finish"
    );
    let rec = record_of(&o);
    assert!(
        rec["leftovers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ended_by"] == "exited"),
        "{rec}"
    );
    t.assert_clean();
}

#[test]
fn wait_policy_is_bounded_by_the_timeout() {
    let t = TestJob::new("waittimeout");
    let start = Instant::now();
    let o = sh(
        &t,
        &[
            "--json",
            "--leftovers",
            "wait",
            "--timeout",
            "1",
            "--grace",
            "0.3",
        ],
        "sleep 1042 & exit 0",
    );
    assert_eq!(code(&o), 124);
    assert!(start.elapsed() < Duration::from_secs(4));
    t.assert_clean();
}

#[test]
fn unkillable_process_is_reported_and_its_cgroup_left_for_gc() {
    let mut t = TestJob::new("unkillable");
    let frz = t.v1_freezer();
    let script = joins_freezer_body(&frz, 1050);
    std::fs::write(t.path("job.sh"), &script).unwrap();
    // Freeze it as soon as it has joined.
    let freezer = freeze_once_written(&frz, t.path("pids"));
    let o = run_bounded(
        t.run_cmd(&[
            "--json",
            "--grace",
            "0.2",
            "--kill-timeout",
            "1",
            "--",
            "bash",
            t.path("job.sh").to_str().unwrap(),
        ]),
        LIMIT,
    );
    freezer.join().unwrap();
    assert_eq!(code(&o), 123, "{}", stderr_of(&o));
    let err = stderr_of(&o);
    let pid = t.pids_in("pids")[0];
    assert!(err.contains("LEFT IN PLACE"), "{err}");
    assert!(
        err.contains(&format!("unkillable: pid {pid} state D")),
        "{err}"
    );
    let rec = record_of(&o);
    assert_eq!(rec["unkillable"], true);
    assert_eq!(rec["cgroup_removed"], false);
    assert!(
        t.job_cgroup().exists(),
        "the cgroup stays while something lives in it"
    );

    // Thaw: the pending SIGKILL lands. Then gc finds the stale cgroup and removes it.
    std::fs::write(frz.join("freezer.state"), "THAWED").unwrap();
    let o = run_bounded(
        {
            let mut c = t.cgjob();
            c.args(["gc", "--parent"]).arg(&t.parent);
            c
        },
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("removed stale job cgroup") && out.contains("/job"),
        "{out}"
    );
    t.assert_clean();
}

#[test]
fn gc_removes_only_stale_cgjob_cgroups() {
    let t = TestJob::new("gc");
    // A stale job: owner record naming a supervisor that is gone, a live process inside.
    let stale = t.parent.join("stale");
    std::fs::create_dir(&stale).unwrap();
    let dead = serde_json::json!({"version":1,"kind":"run","supervisor_pid":i32::MAX - 1,"supervisor_start":1,"uid":0,"created":1});
    xattr(&stale, &dead.to_string());
    let mut sleeper = std::process::Command::new("sleep");
    sleeper.arg("1060").env(MARKER_VAR, &t.marker);
    join_before_exec(&mut sleeper, Some(&stale));
    let mut sleeper = sleeper.spawn().unwrap();
    // A live job: its supervisor (this test process) runs.
    let live = t.parent.join("live");
    std::fs::create_dir(&live).unwrap();
    let me = std::process::id();
    let start: u64 = std::fs::read_to_string(format!("/proc/{me}/stat"))
        .unwrap()
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    xattr(&live, &serde_json::json!({"version":1,"kind":"run","supervisor_pid":me,"supervisor_start":start,"uid":0,"created":1}).to_string());
    // A live supervisor holds its job cgroup's lock; so does this test for "live".
    let live_dir = std::fs::File::open(&live).unwrap();
    // SAFETY: flock on an open fd.
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&live_dir),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        },
        0
    );
    // A stale job whose recorded supervisor pid is alive (reused, or another namespace's):
    // without the lock it is stale all the same.
    let reused = t.parent.join("reused");
    std::fs::create_dir(&reused).unwrap();
    xattr(&reused, &serde_json::json!({"version":1,"kind":"run","supervisor_pid":me,"supervisor_start":start,"uid":0,"created":1}).to_string());
    // Not cgjob's: no owner record.
    let foreign = t.parent.join("foreign");
    std::fs::create_dir(&foreign).unwrap();

    let mut c = t.cgjob();
    c.args(["gc", "--json", "--parent"]).arg(&t.parent);
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let res: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = res.as_array().unwrap();
    assert_eq!(arr.len(), 2, "{res}");
    let stale_rec = arr
        .iter()
        .find(|j| j["name"] == "stale")
        .expect("stale reported");
    assert_eq!(stale_rec["outcome"], "removed");
    assert_eq!(stale_rec["processes"][0]["cmdline"][1], "1060");
    assert_eq!(stale_rec["processes"][0]["ended_by"], "killed");
    let reused_rec = arr
        .iter()
        .find(|j| j["name"] == "reused")
        .expect("reused reported");
    assert_eq!(reused_rec["outcome"], "removed");
    assert!(!stale.exists() && !reused.exists());
    assert!(
        live.exists() && foreign.exists(),
        "live and foreign cgroups untouched"
    );
    let st = sleeper.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9));
}

#[test]
fn an_existing_cgroup_of_that_name_is_refused_and_left_alone() {
    let t = TestJob::new("exists");
    std::fs::create_dir(t.job_cgroup()).unwrap();
    let mut other = std::process::Command::new("sleep");
    other.arg("1061");
    join_before_exec(&mut other, Some(&t.job_cgroup()));
    let mut other = other.spawn().unwrap();
    let o = run_bounded(t.run_cmd(&["--", "bash", "-c", "touch $TMPD/ran"]), LIMIT);
    assert_eq!(code(&o), 125);
    let err = stderr_of(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(!t.path("ran").exists(), "nothing ran");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other job's process was not touched"
    );
    assert!(procs(&t.job_cgroup()).contains(&(other.id() as i32)));
    other.kill().unwrap();
    other.wait().unwrap();
}

fn xattr(p: &Path, v: &str) {
    set_owner_record(p, c"trusted.cgjob.job", v);
}
