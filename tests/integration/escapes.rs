//! One test per way a process tries to outlive its job. Each asserts: cgjob ends in bounded
//! time with the command's status, nothing carrying the job's marker is alive, the job cgroup
//! is gone, and the leftovers were reported.

use std::time::{Duration, Instant};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Run a bash script as the job and return its record, asserting the common invariant.
fn contain(t: &TestJob, extra: &[&str], body: &str, want_code: i32) -> serde_json::Value {
    let script = t.script("job.sh", body);
    let mut args: Vec<&str> = vec!["--json", "--grace", "1s"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "bash", &script]);
    let o = run_bounded(t.run_cmd(&args), LIMIT);
    assert_eq!(
        code(&o),
        want_code,
        "exit status; stderr:\n{}",
        stderr_of(&o)
    );
    t.assert_clean();
    let rec = record_of(&o);
    assert_eq!(rec["cgroup_removed"], true);
    assert_eq!(rec["exit_status"], want_code);
    rec
}

#[test]
fn background_child() {
    let t = TestJob::new("bg");
    // (a moment for the child to exec `sleep`, or it is recorded as the shell it forked from)
    let rec = contain(
        &t,
        &[],
        "sleep 1000 & echo $! > $TMPD/pids; sleep 0.2; exit 0",
        0,
    );
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1000"]);
    let l = &rec["leftovers"][0];
    assert_eq!(l["pid"], t.pids_in("pids")[0]);
    assert_eq!(l["ended_by"], "exited-during-grace");
    assert_eq!(l["in_cgroup"], true);
    assert_eq!(l["uid"], 0);
    assert!(l["state"] == "S" || l["state"] == "R", "{l}");
    assert!(l["start_time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn nohup_and_disown() {
    let t = TestJob::new("nohup");
    let rec = contain(
        &t,
        &[],
        "nohup sleep 1001 >/dev/null 2>&1 & disown; sleep 0.3; exit 0",
        0,
    );
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1001"]);
}

#[test]
fn setsid_double_fork_daemon() {
    let t = TestJob::new("daemon");
    // fork, setsid, fork again, the middle process exits: the daemon has no parent left.
    let rec = contain(
        &t,
        &[],
        "setsid bash -c 'sleep 1002 & exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 5",
        5,
    );
    let l = &rec["leftovers"][0];
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1002"]);
    assert_eq!(
        l["ppid"], rec["supervisor_pid"],
        "reparented to cgjob, the subreaper: {rec}"
    );
}

#[test]
fn new_process_group() {
    let t = TestJob::new("pgrp");
    let rec = contain(
        &t,
        &[],
        "python3 -c 'import os,time\nos.setpgid(0,0)\ntime.sleep(1003)' & sleep 0.3; exit 0",
        0,
    );
    assert_eq!(leftover_comms(&rec), vec!["python3"], "{rec}");
}

#[test]
fn ignores_term_and_hup() {
    let t = TestJob::new("ignore");
    let start = Instant::now();
    let rec = contain(
        &t,
        &[],
        "bash -c 'trap \"\" TERM HUP; sleep 1004' & sleep 0.3; exit 0",
        0,
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    // Killed, not exited: bash ignored SIGTERM through the grace period (its sleep did not).
    assert!(
        leftover_ended_by(&rec).contains(&"killed".to_string()),
        "{rec}"
    );
    assert!(rec["kill_passes"].as_u64().unwrap() >= 1);
}

#[test]
fn sigstopped_process() {
    let t = TestJob::new("stopped");
    let rec = contain(
        &t,
        &[],
        "bash -c 'trap \"\" TERM; sleep 1005' & p=$!; sleep 0.2; kill -STOP $p; sleep 0.2; exit 0",
        0,
    );
    // (bash may exec its last command: the stopped process is the sleep either way)
    let l = &rec["leftovers"][0];
    assert_eq!(l["state"], "T", "recorded as stopped: {rec}");
    assert_eq!(l["ended_by"], "killed");
}

#[test]
fn keeps_forking_while_killed() {
    let t = TestJob::new("chaser");
    let rec = contain(&t, &[], CHASERS, 0);
    assert_eq!(rec["kill_method"], "cgroup-kill");
    assert!(
        leftover_ended_by(&rec).contains(&"killed".to_string()),
        "{rec}"
    );
}

#[test]
fn keeps_forking_while_killed_freeze_fallback() {
    let t = TestJob::new("chaserfrz");
    let rec = contain(&t, &["--kill-method", "freeze"], CHASERS, 0);
    assert_eq!(rec["kill_method"], "freeze");
    assert!(
        leftover_ended_by(&rec).contains(&"killed".to_string()),
        "{rec}"
    );
}

#[test]
fn bounded_fork_bomb() {
    let mut t = TestJob::new("bomb");
    // Safety net on this host: a v1 pids cgroup that cgjob (and so the whole job) runs in.
    // v1 membership is independent of v2, so containment is still cgjob's alone.
    let net = pids_net(&mut t, 2500);
    // Every process forks two children, then sleeps ignoring TERM: depth 10 → at most 2047.
    let script = t.script(
        "bomb.sh",
        "bomb() { local d=$1; if [ $d -lt 10 ]; then bomb $((d+1)) & bomb $((d+1)) & fi; trap '' TERM; exec sleep 1007; }\nbomb 0 &\nsleep 3\nexit 0",
    );
    let mut cmd = t.run_cmd(&["--json", "--grace", "0.5s", "--", "bash", &script]);
    join_before_exec(&mut cmd, net.as_deref());
    let o = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    t.assert_clean();
    let rec = record_of(&o);
    let n = rec["leftovers"].as_array().unwrap().len();
    assert!(
        n > 200,
        "a bomb of that size leaves many processes; recorded {n}"
    );
}

/// The fallback kill with more processes than one page of `cgroup.procs` lists, all ignoring
/// SIGTERM: each pass must reach every one of them.
#[test]
fn freeze_fallback_kills_a_large_job() {
    let mut t = TestJob::new("bigfreeze");
    let net = pids_net(&mut t, 1700);
    let script = t.script(
        "big.sh",
        "for i in $(seq 1500); do bash -c 'trap \"\" TERM; exec sleep 1020' & done; sleep 3; exit 0",
    );
    let mut cmd = t.run_cmd(&[
        "--json",
        "--grace",
        "0.3s",
        "--kill-method",
        "freeze",
        "--kill-timeout",
        "20s",
        "--",
        "bash",
        &script,
    ]);
    join_before_exec(&mut cmd, net.as_deref());
    let o = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    t.assert_clean();
    let rec = record_of(&o);
    assert_eq!(rec["kill_method"], "freeze");
    assert!(
        rec["leftovers"].as_array().unwrap().len() >= 1500,
        "every one recorded"
    );
}

#[test]
fn never_reaped_zombies() {
    let t = TestJob::new("zombies");
    // 300 children exit at once; their parent then execs sleep, which never reaps them. The
    // main process ends once that exec has happened (however slow the machine).
    let rec = contain(
        &t,
        &[],
        "bash -c 'for i in $(seq 300); do (exit 0) & echo $! >> $TMPD/zpids; done; echo $$ > $TMPD/zb.tmp; mv $TMPD/zb.tmp $TMPD/zb; exec sleep 1008' &
         until [ -s $TMPD/zb ] && [ \"$(cat /proc/$(cat $TMPD/zb)/comm 2>/dev/null)\" = sleep ]; do sleep 0.05; done; exit 0",
        0,
    );
    let zpids = t.pids_in("zpids");
    assert_eq!(zpids.len(), 300);
    let orphaned = orphaned_zombies(&zpids);
    assert!(
        orphaned.is_empty(),
        "zombies left for PID 1 to reap: {orphaned:?}"
    );
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1008"]);
}

#[test]
fn grandchild_holding_stdout() {
    let t = TestJob::new("stdout");
    // The grandchild keeps the job's stdout open; a caller reading cgjob's stdout to EOF must
    // not hang, because the grandchild is gone when cgjob returns.
    let start = Instant::now();
    let o = run_bounded(
        t.run_cmd(&[
            "--grace",
            "0.5s",
            "--",
            "sh",
            "-c",
            "(sleep 1009; echo late) & echo early; exit 7",
        ]),
        LIMIT,
    );
    assert_eq!(code(&o), 7);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "early\n");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    t.assert_clean();
}

#[test]
fn reexec_under_another_name_after_reparenting() {
    let t = TestJob::new("reexec");
    let rec = contain(
        &t,
        &[],
        "bash -c '(sleep 0.3; trap \"\" TERM; exec -a kworker/0:1 sleep 1010) & exit 0'; sleep 0.8; exit 0",
        0,
    );
    let l = rec["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["cmdline"][0] == "kworker/0:1");
    let l = l.unwrap_or_else(|| panic!("re-exec'd process not reported: {rec}"));
    assert_eq!(l["ppid"], rec["supervisor_pid"]);
}

#[test]
fn process_that_makes_itself_a_subreaper() {
    let t = TestJob::new("subreaper");
    // It becomes a subreaper (PR_SET_CHILD_SUBREAPER = 36), starts a double-forked daemon
    // under itself, and ignores TERM.
    let body = r#"python3 -c '
import ctypes, os, signal, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.system("sh -c \"sleep 1011 &\"")
time.sleep(1012)
' &
sleep 0.5
exit 0"#;
    let rec = contain(&t, &[], body, 0);
    let cmds = leftover_cmds(&rec);
    assert!(cmds.contains(&"sleep 1011".to_string()), "{cmds:?}");
    assert!(
        leftover_comms(&rec).contains(&"python3".to_string()),
        "{cmds:?}"
    );
}

#[test]
fn root_job_migrates_itself_to_another_cgroup() {
    let mut t = TestJob::new("migrate");
    let elsewhere = t.outside_cgroup("elsewhere");
    let body = format!(
        "bash -c 'echo $BASHPID > {}/cgroup.procs; trap \"\" TERM; exec sleep 1013' & sleep 0.3; exit 0",
        elsewhere.display()
    );
    let rec = contain(&t, &[], &body, 0);
    let l = rec["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["cmdline"][0] == "sleep");
    let l = l.unwrap_or_else(|| panic!("escapee not reported: {rec}"));
    assert_eq!(
        l["in_cgroup"], false,
        "reported as having left the cgroup: {rec}"
    );
    assert_eq!(l["ended_by"], "killed");
    assert!(procs(&elsewhere).is_empty());
}

#[test]
fn main_process_migrates_itself_out_and_ignores_the_timeout_signal() {
    let mut t = TestJob::new("migratemain");
    let elsewhere = t.outside_cgroup("elsewhere");
    let body = format!(
        "echo $$ > {}/cgroup.procs; trap '' TERM; sleep 1017 & wait; wait",
        elsewhere.display()
    );
    let start = Instant::now();
    let rec = contain(&t, &["--timeout", "0.5", "--kill-after", "0.5"], &body, 124);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(rec["timeout"]["phase"], "killed");
    assert_eq!(rec["exit"]["signal"]["signal"], 9, "{rec}");
    assert!(procs(&elsewhere).is_empty());
}

#[test]
fn main_killed_by_a_signal() {
    let t = TestJob::new("mainsig");
    let rec = contain(&t, &[], "sleep 1014 & sleep 0.3; kill -KILL $$", 137);
    assert_eq!(rec["exit"]["signal"]["signal"], 9);
    assert_eq!(leftover_cmds(&rec), vec!["sleep 1014"]);
}

fn sigkilled_mid_job(extra: &[&str]) {
    let t = TestJob::new("sigkill");
    let script = t.script(
        "job.sh",
        "setsid bash -c 'trap \"\" TERM; sleep 1015' & sleep 1016 & echo ready > $TMPD/ready; wait",
    );
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--", "bash", &script]);
    let mut child = t.run_cmd(&args).spawn().unwrap();
    t.wait_for("the job to start", Duration::from_secs(10), || {
        t.path("ready").exists()
    });
    t.wait_for("both sleeps", Duration::from_secs(10), || {
        procs(&t.job_cgroup()).len() >= 3
    });
    let killed_at = Instant::now();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    t.wait_for("the guardian to clean up", Duration::from_secs(3), || {
        t.survivors().is_empty() && !t.job_cgroup().exists()
    });
    assert!(killed_at.elapsed() < Duration::from_secs(3));
    t.assert_clean();
}

#[test]
fn cgjob_sigkilled_mid_job() {
    sigkilled_mid_job(&[]);
}

/// The guardian's own fallback: freeze, SIGKILL each, thaw.
#[test]
fn cgjob_sigkilled_mid_job_freeze_fallback() {
    sigkilled_mid_job(&["--kill-method", "freeze"]);
}
