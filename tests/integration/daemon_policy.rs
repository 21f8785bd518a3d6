//! What the node daemon does on its own, on the real kernel: ends jobs past their time limit
//! (also one set before it started), collects `cgjob run` jobs whose supervisor and guardian
//! were killed, polices the node for processes outside every job, and bounds the connections
//! of one user.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::*;
use crate::util::*;

/// The results log's records of `kind`.
fn records(t: &TestJob, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(t.path("lib/results.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .collect()
}

fn attach(c: &mut Conn, job: &str, pid: u32) {
    ok(&c.rq(json!({"v":1,"op":"attach","job_id":job,"pids":[pid]})));
}

/// How a child of the test ended (bounded).
fn ended(child: &mut Child) -> std::process::ExitStatus {
    wait_bounded(child, IO_LIMIT).status
}

/// The leftover of a record running `cmd`.
fn leftover<'a>(procs: &'a Value, cmd: &str) -> &'a Value {
    procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            let argv: Vec<&str> = p["cmdline"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            argv.join(" ").contains(cmd)
        })
        .unwrap_or_else(|| panic!("{cmd:?} not in {procs}"))
}

#[test]
fn a_job_past_its_time_limit_is_ended_term_grace_kill_and_reported() {
    let t = TestJob::new("dtime");
    let d = Daemon::start(&t);
    let mut sub = d.conn();
    ok(&sub.rq(json!({"v":1,"op":"subscribe"})));
    let mut c = d.conn();
    let created = Instant::now();
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"tl","timeout_ms":1500,"kill_after_ms":700})));
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"free"})));
    let mut polite = sleeper(&t, "exec sleep 1011");
    let mut stubborn = sleeper(&t, "trap '' TERM; exec sleep 1012");
    let mut other = sleeper(&t, "exec sleep 1013");
    attach(&mut c, "tl", polite.id());
    attach(&mut c, "tl", stubborn.id());
    attach(&mut c, "free", other.id());

    let seen = events_until(&mut sub, ("cleaned", "tl"));
    assert!(
        seen.iter().any(|(e, j)| e == "timeout" && j == "tl"),
        "{seen:?}"
    );
    assert!(
        created.elapsed() >= Duration::from_millis(1500),
        "ended before its limit: {:?}",
        created.elapsed()
    );
    // SIGTERM first; the one that ignores it killed after the grace.
    assert_eq!(ended(&mut polite).signal(), Some(libc::SIGTERM));
    assert_eq!(ended(&mut stubborn).signal(), Some(libc::SIGKILL));
    assert!(!t.parent.join("job-tl").exists(), "job cgroup left");
    // The job without a limit is untouched.
    assert!(alive(other.id() as i32));
    assert!(t.parent.join("job-free").is_dir());

    let recs = records(&t, "timeout");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0]["result"];
    assert_eq!(r["job_id"], "tl");
    assert_eq!(r["cgroup_removed"], true);
    let procs = &r["leftovers"];
    assert_eq!(procs.as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        leftover(procs, "sleep 1011")["ended_by"],
        "exited-during-grace"
    );
    assert_eq!(leftover(procs, "sleep 1012")["ended_by"], "killed");
    t.wait_for("the metrics file", IO_LIMIT, || {
        std::fs::read_to_string(t.path("cgjob.prom"))
            .is_ok_and(|m| m.contains("cgjob_jobs_timed_out_total 1\n"))
    });
    ok(&c.rq(json!({"v":1,"op":"cleanup","job_id":"free","grace_ms":0})));
    assert_eq!(ended(&mut other).signal(), Some(libc::SIGTERM));
}

#[test]
fn a_time_limit_set_without_the_daemon_is_enforced_once_it_starts() {
    let t = TestJob::new("dtimelater");
    // No daemon: recorded on the cgroup, and said so.
    let o = run_bounded(
        job_cmd(
            &t,
            None,
            &[
                "create",
                "--job-id",
                "later",
                "--timeout",
                "1s",
                "--kill-after",
                "0s",
            ],
        ),
        IO_LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains("enforced once `cgjob daemon` runs"),
        "{}",
        stderr_of(&o)
    );
    let mut s = sleeper(&t, "exec sleep 1014");
    std::fs::write(t.parent.join("job-later/cgroup.procs"), s.id().to_string()).unwrap();
    // Its limit passes while no daemon runs; the daemon that starts then ends it at once.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(alive(s.id() as i32));
    let _d = Daemon::start(&t);
    assert_eq!(ended(&mut s).signal(), Some(libc::SIGTERM));
    t.wait_for("the job cgroup to go", IO_LIMIT, || {
        !t.parent.join("job-later").exists()
    });
    t.wait_for("the record", IO_LIMIT, || {
        !records(&t, "timeout").is_empty()
    });
    let r = &records(&t, "timeout")[0]["result"];
    assert_eq!(r["job_id"], "later");
    leftover(&r["leftovers"], "sleep 1014");

    // Bad limits are usage errors, and nothing is made.
    for bad in [
        &["--timeout", "0"][..],
        &["--timeout", "soon"],
        &["--kill-after", "1s"],
    ] {
        let mut args = vec!["create", "--job-id", "bad"];
        args.extend_from_slice(bad);
        let o = run_bounded(job_cmd(&t, None, &args), IO_LIMIT);
        let err = stderr_of(&o);
        assert_eq!(code(&o), 2, "{bad:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            (first.starts_with("error: ") || first.starts_with("cgjob: "))
                && (first.contains("--timeout") || first.contains("soon")),
            "{bad:?}: {err}"
        );
        assert!(!t.parent.join("job-bad").exists());
    }
}

/// `cgjob run` a job of two sleeps under the test's parent (marker set); returns the
/// supervisor and its job cgroup once both sleeps are in it.
fn run_job(t: &TestJob, a: u32, b: u32) -> (Child, PathBuf) {
    let mut sup = t
        .cgjob()
        .args(["run", "--parent"])
        .arg(&t.parent)
        .args(["--", "bash", "-c"])
        .arg(format!("sleep {a} & exec sleep {b}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("run-{}-", sup.id());
    let mut cg = PathBuf::new();
    t.wait_for("the job to start", IO_LIMIT, || {
        if let Some(st) = sup.try_wait().unwrap() {
            panic!("cgjob run ended: {st}");
        }
        let found = std::fs::read_dir(&t.parent)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        match found {
            Some(e) => {
                cg = e.path();
                std::fs::read_to_string(cg.join("cgroup.procs"))
                    .is_ok_and(|p| p.lines().count() == 2)
            }
            None => false,
        }
    });
    (sup, cg)
}

/// SIGKILL the guardian of supervisor `sup` (its child that is cgjob itself), then `sup`.
fn kill_supervisor_and_guardian(sup: &mut Child) {
    kill_guardian(sup, IO_LIMIT);
    sup.kill().unwrap();
    sup.wait().unwrap();
}

#[test]
fn a_run_job_whose_supervisor_and_guardian_were_killed_is_collected_and_reported() {
    let t = TestJob::new("dsuper");
    // One job started before the daemon (adopted), one after (seen being made).
    let (mut before, before_cg) = run_job(&t, 1021, 1022);
    let d = Daemon::start(&t);
    let (mut after, after_cg) = run_job(&t, 1023, 1024);
    let mut sub = d.conn();
    ok(&sub.rq(json!({"v":1,"op":"subscribe"})));
    for s in [&mut before, &mut after] {
        kill_supervisor_and_guardian(s);
    }
    for cg in [&before_cg, &after_cg] {
        t.wait_for("the daemon to remove the job cgroup", IO_LIMIT, || {
            !cg.exists()
        });
    }
    t.wait_for("both records", IO_LIMIT, || records(&t, "stale").len() == 2);
    for (cg, cmds) in [
        (&before_cg, ["sleep 1021", "sleep 1022"]),
        (&after_cg, ["sleep 1023", "sleep 1024"]),
    ] {
        let recs = records(&t, "stale");
        let r = recs
            .iter()
            .map(|r| &r["result"])
            .find(|r| r["cgroup"] == cg.to_str().unwrap())
            .unwrap_or_else(|| panic!("no record of {}: {recs:?}", cg.display()));
        assert_eq!(r["outcome"], "removed");
        for cmd in cmds {
            let l = leftover(&r["processes"], cmd);
            assert_eq!(l["ended_by"], "killed", "{l}");
        }
    }
    let seen = events_until(
        &mut sub,
        ("stale", after_cg.file_name().unwrap().to_str().unwrap()),
    );
    assert!(!seen.is_empty());
    assert_eq!(d.stop().code(), Some(0));
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
}

/// A process of uid `uid` outside every job, with the test's marker.
fn as_uid(t: &TestJob, uid: u32, argv: &[&str]) -> Child {
    let c = Command::new(argv[0])
        .args(&argv[1..])
        .uid(uid)
        .gid(uid)
        .env(MARKER_VAR, &t.marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let comm = format!("/proc/{}/comm", c.id());
    let want = Path::new(argv[0])
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    t.wait_for("it to exec", IO_LIMIT, || {
        std::fs::read_to_string(&comm).is_ok_and(|s| s.trim() == want)
    });
    c
}

/// The next `police` event on a subscription.
fn police_event(sub: &mut Conn) -> Value {
    loop {
        let v = sub.recv().expect("event stream ended");
        if v["event"] == "police" {
            return v;
        }
    }
}

fn pids_of(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn policing_reports_then_kills_a_users_process_outside_every_job() {
    // A uid no one else uses: the daemon polices it alone, so only this test's processes
    // can be found (and killed).
    const UID: u32 = 4_000_123;
    let t = TestJob::new("dpolice");
    let flags = |action: &'static str| {
        [
            "--police",
            action,
            "--police-uids",
            "4000123-4000123",
            "--police-interval",
            "1s",
            "--police-min-age",
            "0s",
            "--police-allow",
            "tail",
        ]
    };
    let d = Daemon::start_with(&t, &flags("report"));
    let mut sub = d.conn();
    ok(&sub.rq(json!({"v":1,"op":"subscribe"})));
    let mut c = d.conn();
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"pj","uid":UID})));
    let mut inside = as_uid(&t, UID, &["sleep", "1041"]);
    attach(&mut c, "pj", inside.id());
    let mut allowed = as_uid(&t, UID, &["tail", "-f", "/dev/null"]);
    let mut outside = as_uid(&t, UID, &["sleep", "1042"]);

    // Report: found, said, left running.
    let ev = loop {
        let ev = police_event(&mut sub);
        if pids_of(&ev["processes"]).contains(&(outside.id() as u64)) {
            break ev;
        }
    };
    let pids = pids_of(&ev["processes"]);
    assert!(!pids.contains(&(inside.id() as u64)), "{ev}");
    assert!(!pids.contains(&(allowed.id() as u64)), "{ev}");
    let o = leftover(&ev["processes"], "sleep 1042");
    assert_eq!(o["uid"], UID);
    assert_eq!(o["killed"], false);
    assert!(alive(outside.id() as i32));
    let recs = records(&t, "police");
    assert!(recs
        .iter()
        .any(|r| r["action"] == "report"
            && pids_of(&r["processes"]).contains(&(outside.id() as u64))));
    assert_eq!(d.stop().code(), Some(0));

    // Kill: the process outside every job is killed, the others are not.
    let d = Daemon::start_with(&t, &flags("kill"));
    assert_eq!(ended(&mut outside).signal(), Some(libc::SIGKILL));
    t.wait_for("the kill record", IO_LIMIT, || {
        records(&t, "police").iter().any(|r| {
            r["action"] == "kill"
                && r["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["pid"] == outside.id() && p["killed"] == true)
        })
    });
    assert!(alive(inside.id() as i32));
    assert!(alive(allowed.id() as i32));
    t.wait_for("the metrics file", IO_LIMIT, || {
        std::fs::read_to_string(t.path("cgjob.prom"))
            .is_ok_and(|m| m.contains("cgjob_police_processes_total{action=\"killed\"} 1\n"))
    });
    let mut c = d.conn();
    ok(&c.rq(json!({"v":1,"op":"cleanup","job_id":"pj","grace_ms":0})));
    assert_eq!(ended(&mut inside).signal(), Some(libc::SIGTERM));
    allowed.kill().unwrap();
    allowed.wait().unwrap();
}

#[test]
fn bad_police_flags_are_usage_errors() {
    let t = TestJob::new("dpolicebad");
    for bad in [
        &["--police", "shoot"][..],
        &["--police", "kill", "--police-uids", "60000-1000"],
        &["--police", "kill", "--police-interval", "10ms"],
        &["--police", "kill", "--police-allow-cgroup", "relative/path"],
        &["--max-clients-per-user", "0"],
    ] {
        let mut c = t.cgjob();
        c.args(["daemon", "--parent"])
            .arg(&t.parent)
            .arg("--socket")
            .arg(t.path("bad.sock"))
            .args(bad);
        let o = run_bounded(c, IO_LIMIT);
        assert_eq!(code(&o), 2, "{bad:?}: {}", stderr_of(&o));
        assert!(stderr_of(&o).starts_with("cgjob: "), "{}", stderr_of(&o));
        assert_eq!(stderr_of(&o).lines().count(), 1, "{}", stderr_of(&o));
        assert!(!t.path("bad.sock").exists());
    }
}

#[test]
fn a_user_holding_too_many_connections_is_refused_and_root_is_not() {
    let t = TestJob::new("dconns");
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(&t, &["--max-clients-per-user", "2"]);
    // nobody opens three connections, then says hello on each.
    let script = r#"
import socket, sys
socks = []
for i in range(3):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sys.argv[1])
    socks.append(s)
for s in socks:
    try:
        s.sendall(b'{"v":1,"op":"hello"}\n')
    except OSError:
        pass
for s in socks:
    print(s.makefile("rb").readline().decode().strip() or "EOF")
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&d.sock)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_bounded(&mut child, IO_LIMIT);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let replies: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(replies.len(), 3);
    ok(&replies[0]);
    ok(&replies[1]);
    refused(
        &replies[2],
        "too many connections from uid 65534 (at most 2",
    );
    // Root holds as many as it likes, and the daemon serves on.
    let mut conns: Vec<Conn> = (0..5).map(|_| d.conn()).collect();
    for c in &mut conns {
        ok(&c.rq(json!({"v":1,"op":"hello"})));
    }
}

/// A `create` that finds processes of an earlier job of the same id kills them on a worker:
/// other clients are served meanwhile, and the same job is not created twice at once. The
/// stale process is held unkillable (v1 freezer) until the test lets it go.
#[test]
fn a_create_that_must_kill_stale_processes_does_not_hold_up_other_clients() {
    let mut t = TestJob::new("dstalecreate");
    let frz = t.v1_freezer();
    let d = Daemon::start(&t);
    let mut c = d.conn();
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"s"})));
    let mut stale = sleeper(&t, "exec sleep 1061");
    attach(&mut c, "s", stale.id());
    std::fs::write(frz.join("cgroup.procs"), stale.id().to_string()).unwrap();
    std::fs::write(frz.join("freezer.state"), "FROZEN").unwrap();
    t.wait_for("the stale process to freeze", IO_LIMIT, || {
        state_of(stale.id() as i32) == Some('D')
    });
    // The prolog of the next job of the same id.
    c.send(&json!({"v":1,"op":"create","job_id":"s"}).to_string());
    let mut other = d.conn();
    t.wait_for("the create to start its kill", IO_LIMIT, || {
        other.rq(json!({"v":1,"op":"status","job_id":"s"}))["cleaning"] == true
    });
    // Served while the stale process still holds the create up; the job is busy.
    ok(&other.rq(json!({"v":1,"op":"hello"})));
    refused(
        &other.rq(json!({"v":1,"op":"create","job_id":"s"})),
        "being emptied",
    );
    refused(
        &other.rq(json!({"v":1,"op":"cleanup","job_id":"s"})),
        "already running",
    );
    assert!(alive(stale.id() as i32));
    std::fs::write(frz.join("freezer.state"), "THAWED").unwrap();
    let r = c.recv().expect("the create's reply");
    ok(&r);
    assert_eq!(r["stale"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(ended(&mut stale).signal(), Some(libc::SIGKILL));
    assert_eq!(
        other.rq(json!({"v":1,"op":"status","job_id":"s"}))["cleaning"],
        false
    );
    ok(&c.rq(json!({"v":1,"op":"cleanup","job_id":"s","grace_ms":0})));
}

/// Limits through the daemon: `create` with a `limits` object; a process attached joins the
/// limit cgroups too (v1 ones beside the job on a hybrid host); status shows the usage; the
/// cleanup removes them all.
#[test]
fn a_job_created_with_limits_through_the_daemon_holds_what_is_attached() {
    let mut t = TestJob::new("dlimits");
    let v1 = t.prepare_limits_for(&["job-dl"]);
    let d = Daemon::start(&t);
    let mut c = d.conn();
    refused(
        &c.rq(json!({"v":1,"op":"create","job_id":"dl","limits":{"pids_max":"none"}})),
        "limit pids_max: invalid process count",
    );
    assert!(!t.parent.join("job-dl").exists());
    let r = ok(&c
        .rq(json!({"v":1,"op":"create","job_id":"dl","limits":{"pids_max":5,"memory_max":"64M"}})))
    .clone();
    assert_eq!(r["limits"]["pids_max"], 5, "{r}");
    let mut s = sleeper(&t, "exec sleep 1071");
    attach(&mut c, "dl", s.id());
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", s.id())).unwrap();
    for l in cgroups.lines() {
        let joined = l.ends_with("/job-dl");
        let ctl = l.split(':').nth(1).unwrap_or_default();
        let limit_ctl = ctl.split(',').any(|x| x == "pids" || x == "memory");
        if ctl.is_empty() || (r["limits"]["applied_via"] == "cgroup-v1" && limit_ctl) {
            assert!(joined, "not in the job's cgroup: {l} ({cgroups})");
        }
    }
    let st = ok(&c.rq(json!({"v":1,"op":"status","job_id":"dl"}))).clone();
    assert_eq!(st["usage"]["pids"], 1, "{st}");
    ok(&c.rq(json!({"v":1,"op":"cleanup","job_id":"dl","grace_ms":0})));
    assert_eq!(ended(&mut s).signal(), Some(libc::SIGTERM));
    for p in &v1 {
        assert!(!p.exists(), "v1 cgroup {} left behind", p.display());
    }
}

/// Replies come in request order, also when one is made on a worker: a client that sends a
/// cleanup (which waits out its grace period), a hello and a status in one write gets the
/// cleanup's record first, then the hello, then the status of a job that is gone by then.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let t = TestJob::new("dorder");
    let d = Daemon::start(&t);
    let mut c = d.conn();
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"o"})));
    let mut s = sleeper(&t, "trap '' TERM; exec sleep 1081");
    attach(&mut c, "o", s.id());
    let lines = [
        json!({"v":1,"op":"cleanup","job_id":"o","grace_ms":300}),
        json!({"v":1,"op":"hello"}),
        json!({"v":1,"op":"status","job_id":"o"}),
    ]
    .map(|r| r.to_string())
    .join("\n");
    c.send(&lines);
    let first = c.recv().unwrap();
    assert_eq!(ok(&first)["cgroup_removed"], true, "{first}");
    assert_eq!(first["leftovers"].as_array().unwrap().len(), 1, "{first}");
    let second = c.recv().unwrap();
    assert!(ok(&second)["daemon"].is_string(), "{second}");
    refused(&c.recv().unwrap(), "no cgroup for job o");
    assert_eq!(ended(&mut s).signal(), Some(libc::SIGKILL));
}

/// A user other than root may hold `--max-jobs-per-user` jobs; root is not bounded.
#[test]
fn a_user_may_hold_only_so_many_jobs() {
    let t = TestJob::new("djobcap");
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start_with(&t, &["--max-jobs-per-user", "2"]);
    let r = as_nobody(
        &d.sock,
        &[
            json!({"v":1,"op":"create","job_id":"n1"}),
            json!({"v":1,"op":"create","job_id":"n2"}),
            json!({"v":1,"op":"create","job_id":"n3"}),
            // Its own job again: a repeated prolog, not a new one.
            json!({"v":1,"op":"create","job_id":"n2"}),
        ],
    );
    ok(&r[0]);
    ok(&r[1]);
    refused(&r[2], "uid 65534 has 2 jobs already (at most 2");
    ok(&r[3]);
    assert!(!t.parent.join("job-n3").exists());
    let mut c = d.conn();
    for id in ["r1", "r2", "r3"] {
        ok(&c.rq(json!({"v":1,"op":"create","job_id":id})));
    }
}

/// A scheduler's job that holds no process for `--remove-empty-after` is removed (its epilog
/// never came); one with processes is not, until it empties.
#[test]
fn a_job_left_empty_is_removed_after_a_while() {
    let t = TestJob::new("dempty");
    let d = Daemon::start_with(&t, &["--remove-empty-after", "1s"]);
    let mut sub = d.conn();
    ok(&sub.rq(json!({"v":1,"op":"subscribe"})));
    let mut c = d.conn();
    let made = Instant::now();
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"e"})));
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"busy"})));
    let mut s = sleeper(&t, "exec sleep 1091");
    attach(&mut c, "busy", s.id());
    events_until(&mut sub, ("removed", "e"));
    assert!(
        made.elapsed() >= Duration::from_secs(1),
        "{:?}",
        made.elapsed()
    );
    assert!(t.parent.join("job-busy").is_dir());
    assert!(alive(s.id() as i32));
    // Once it empties, its turn comes.
    s.kill().unwrap();
    s.wait().unwrap();
    let emptied = Instant::now();
    events_until(&mut sub, ("removed", "busy"));
    assert!(emptied.elapsed() >= Duration::from_millis(900));
    // (The record follows the cgroup's removal.)
    t.wait_for("both records", IO_LIMIT, || records(&t, "empty").len() == 2);
    let recs = records(&t, "empty");
    assert!(recs.iter().all(|r| r["result"]["cgroup_removed"] == true));
    // `never` keeps them.
    assert_eq!(d.stop().code(), Some(0));
    let d = Daemon::start_with(&t, &["--remove-empty-after", "never"]);
    let mut c = d.conn();
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"kept"})));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(t.parent.join("job-kept").is_dir());
}
