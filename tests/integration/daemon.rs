//! `cgjob daemon`: the node daemon's API over its socket, on the real kernel. Each test runs
//! its own daemon on a socket in its scratch directory, over its own parent cgroup, and
//! stops it by pid.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

pub const IO_LIMIT: Duration = Duration::from_secs(30);

/// A running daemon of one test; killed (SIGKILL) and reaped when dropped.
pub struct Daemon {
    pub child: Child,
    pub sock: PathBuf,
}

impl Daemon {
    pub fn start(t: &TestJob) -> Daemon {
        Daemon::start_with(t, &[])
    }

    /// With more flags for `cgjob daemon`.
    pub fn start_with(t: &TestJob, extra: &[&str]) -> Daemon {
        let sock = t.path("run/cgjob.sock");
        let mut c = t.cgjob();
        c.args(["-v", "daemon", "--parent"])
            .arg(&t.parent)
            .arg("--socket")
            .arg(&sock)
            .arg("--results")
            .arg(t.path("lib/results.jsonl"))
            .arg("--metrics")
            .arg(t.path("cgjob.prom"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(t.path("daemon.log")).unwrap());
        let child = c.spawn().expect("start the daemon");
        let mut d = Daemon { child, sock };
        let end = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&d.sock).is_err() {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("daemon exited {st}: {}", log(t));
            }
            assert!(Instant::now() < end, "daemon not answering: {}", log(t));
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn conn(&self) -> Conn {
        Conn::to(&self.sock)
    }

    /// SIGTERM, and its exit status (bounded).
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill of our own child, by pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let end = Instant::now() + IO_LIMIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cgjob daemon --parent <ours> --socket SOCK --results <scratch>/RESULTS`, nothing more (no
/// `-v`, no metrics file), for tests that start or refuse a daemon their own way.
fn bare_daemon_cmd(t: &TestJob, sock: &Path, results: &str) -> Command {
    let mut c = t.cgjob();
    c.args(["daemon", "--parent"])
        .arg(&t.parent)
        .arg("--socket")
        .arg(sock)
        .arg("--results")
        .arg(t.path(results));
    c
}

pub fn log(t: &TestJob) -> String {
    std::fs::read_to_string(t.path("daemon.log")).unwrap_or_default()
}

pub struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    pub fn to(sock: &Path) -> Conn {
        let w = UnixStream::connect(sock).expect("connect to the daemon");
        w.set_read_timeout(Some(IO_LIMIT)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Conn { w, r }
    }

    pub fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    /// The next line, parsed; `None` at EOF.
    pub fn recv(&mut self) -> Option<Value> {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("a reply within the limit");
        (n > 0).then(|| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
    }

    pub fn rq(&mut self, req: Value) -> Value {
        self.raw(&req.to_string())
    }

    pub fn raw(&mut self, line: &str) -> Value {
        self.send(line);
        let v = self.recv().expect("a reply, not EOF");
        assert_eq!(v["v"], 1, "{v}");
        v
    }
}

pub fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], true, "{v}");
    v
}

pub fn refused<'a>(v: &'a Value, why: &str) -> &'a Value {
    assert_eq!(v["ok"], false, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains(why), "{e:?} does not say {why:?}");
    v
}

/// A process outside any job, carrying the test's marker: `script` ends by exec'ing `sleep`,
/// and this returns once it has (so that its command line is known).
pub fn sleeper(t: &TestJob, script: &str) -> Child {
    let c = Command::new("bash")
        .args(["-c", script])
        .env(MARKER_VAR, &t.marker)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let comm = format!("/proc/{}/comm", c.id());
    t.wait_for("the sleeper to exec", IO_LIMIT, || {
        std::fs::read_to_string(&comm).is_ok_and(|s| s.trim() == "sleep")
    });
    c
}

pub fn alive(pid: i32) -> bool {
    state_of(pid).is_some_and(|s| s != 'Z')
}

/// The events a subscriber received, until `want` is among them (bounded).
pub fn events_until(c: &mut Conn, want: (&str, &str)) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    while !seen.iter().any(|(e, j)| (e.as_str(), j.as_str()) == want) {
        let v = c.recv().expect("event stream ended");
        seen.push((
            v["event"].as_str().unwrap().to_owned(),
            v["job_id"].as_str().unwrap().to_owned(),
        ));
    }
    seen
}

#[test]
fn create_attach_status_signal_cleanup_through_the_socket() {
    let t = TestJob::new("dapi");
    let d = Daemon::start(&t);
    let mut ev = d.conn();
    ok(&ev.rq(json!({"v":1,"op":"subscribe"})));
    let mut c = d.conn();

    let v = ok(&c.rq(json!({"v":1,"op":"create","job_id":"7","uid":65534,"scheduler":"slurm"})))
        .clone();
    assert_eq!(v["created"], true);
    let cg = t.parent.join("job-7");
    assert!(cg.is_dir());

    let mut plain = sleeper(&t, "exec sleep 1007");
    let mut stubborn = sleeper(&t, "trap '' TERM; exec sleep 1008");
    let pids = [plain.id() as i32, stubborn.id() as i32];
    let v = ok(&c.rq(json!({"v":1,"op":"attach","job_id":"7","pids":pids}))).clone();
    assert_eq!(v["moved"], json!(pids));
    assert_eq!(procs(&cg), pids.into_iter().collect());

    let v = ok(&c.rq(json!({"v":1,"op":"status","job_id":"7"}))).clone();
    assert_eq!(v["owner"]["uid"], 65534);
    assert_eq!(v["processes"].as_array().unwrap().len(), 2, "{v}");
    let v = ok(&c.rq(json!({"v":1,"op":"list"}))).clone();
    assert_eq!(v["jobs"][0]["job_id"], "7", "{v}");
    assert_eq!(v["jobs"][0]["watched"], true);

    // SIGSTOP through the daemon reaches every process of the job.
    ok(&c.rq(json!({"v":1,"op":"signal","job_id":"7","signal":"STOP"})));
    t.wait_for("stopped", IO_LIMIT, || state_of(pids[0]) == Some('T'));
    ok(&c.rq(json!({"v":1,"op":"signal","job_id":"7","signal":"CONT"})));

    // The epilog: TERM, grace, kill; the reply comes when it is done.
    let v = ok(&c.rq(json!({"v":1,"op":"cleanup","job_id":"7","grace_ms":300}))).clone();
    assert_eq!(v["cgroup_removed"], true, "{v}");
    assert_eq!(v["unkillable"], false);
    let cmds = leftover_cmds(&v);
    assert!(cmds.iter().any(|c| c == "sleep 1007"), "{cmds:?}");
    assert!(cmds.iter().any(|c| c == "sleep 1008"), "{cmds:?}");
    assert!(!cg.exists());
    plain.wait().unwrap();
    stubborn.wait().unwrap();
    assert!(
        t.survivors().iter().all(|s| s.contains(" daemon ")),
        "{:?}",
        t.survivors()
    );

    let seen = events_until(&mut ev, ("cleaned", "7"));
    for want in ["created", "populated", "leftovers", "cleaned"] {
        assert!(
            seen.iter().any(|(e, _)| e == want),
            "no {want} event in {seen:?}"
        );
    }
    // The result is in the log.
    let results = std::fs::read_to_string(t.path("lib/results.jsonl")).unwrap();
    let last: Value = serde_json::from_str(results.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["result"]["job_id"].as_str()),
        (Some("cleanup"), Some("7"))
    );
    assert_eq!(last["uid"], 65534);

    // A job that is not there.
    refused(
        &c.rq(json!({"v":1,"op":"status","job_id":"7"})),
        "no cgroup for job 7",
    );

    // The metrics file counts it all. It is rewritten at most once a second (at once after a
    // quiet second, else when the second is up); a textfile for node_exporter is read
    // whenever, so allow it a moment (bounded) to catch up with the refusal just answered,
    // then check every figure.
    ok(&c.rq(json!({"v":1,"op":"list"})));
    t.wait_for(
        "the metrics file to count the refused request",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(t.path("cgjob.prom")).is_ok_and(|p| {
                p.lines().any(|l| {
                    l.strip_prefix("cgjob_requests_total{result=\"error\"} ")
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
                })
            })
        },
    );
    let prom = std::fs::read_to_string(t.path("cgjob.prom")).unwrap();
    let sample = |name: &str| -> f64 {
        prom.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{prom}"))
    };
    assert_eq!(sample("cgjob_jobs"), 0.0);
    assert_eq!(sample("cgjob_jobs_created_total"), 1.0);
    assert_eq!(sample("cgjob_cleanups_total{outcome=\"clean\"}"), 1.0);
    assert_eq!(sample("cgjob_leftovers_found_total"), 2.0);
    assert_eq!(sample("cgjob_leftovers_killed_total"), 1.0, "{prom}");
    assert!(sample("cgjob_cleanup_duration_seconds_sum") >= 0.3);
    assert!(sample("cgjob_requests_total{result=\"error\"}") >= 1.0);
    let st = d.stop();
    assert_eq!(st.code(), Some(0), "{}", log(&t));
    assert!(!t.path("run/cgjob.sock").exists(), "socket left behind");
}

/// Run a Python client as `nobody`: it sends each request line and prints each reply line.
pub fn as_nobody(sock: &Path, requests: &[Value]) -> Vec<Value> {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
f = s.makefile("rwb")
for line in sys.stdin.buffer:
    f.write(line); f.flush()
    sys.stdout.buffer.write(f.readline()); sys.stdout.flush()
"#;
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", script])
        .arg(sock)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // (std drops root's supplementary groups itself when it sets the uid.)
    let mut child = c.spawn().expect("run python3 as nobody");
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = wait_bounded(&mut child, IO_LIMIT);
    assert!(o.status.success(), "client failed: {}", stderr_of(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_user_acts_only_on_their_own_jobs() {
    let t = TestJob::new("dauth");
    // The socket's directory must be reachable by nobody.
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(&t);
    let mut root = d.conn();
    ok(&root.rq(json!({"v":1,"op":"create","job_id":"root-job","uid":0})));
    ok(&root.rq(json!({"v":1,"op":"create","job_id":"nobodys","uid":65534})));
    let mut victim = sleeper(&t, "exec sleep 1010");
    let vpid = victim.id() as i32;
    ok(&root.rq(json!({"v":1,"op":"attach","job_id":"root-job","pids":[vpid]})));
    let mut other = sleeper(&t, "exec sleep 1011");
    let opid = other.id() as i32;

    let replies = as_nobody(
        &d.sock,
        &[
            json!({"v":1,"op":"status","job_id":"root-job"}),
            json!({"v":1,"op":"signal","job_id":"root-job","signal":"KILL"}),
            json!({"v":1,"op":"cleanup","job_id":"root-job"}),
            json!({"v":1,"op":"attach","job_id":"root-job","pids":[opid]}),
            // Re-creating someone's job would kill its processes as stale.
            json!({"v":1,"op":"create","job_id":"root-job","uid":65534}),
            json!({"v":1,"op":"create","job_id":"mine","uid":0}),
            // A root process into one's own job: then one could signal it.
            json!({"v":1,"op":"attach","job_id":"nobodys","pids":[opid]}),
            json!({"v":1,"op":"status","job_id":"nobodys"}),
            json!({"v":1,"op":"create","job_id":"mine"}),
            json!({"v":1,"op":"list"}),
        ],
    );
    assert_eq!(replies.len(), 10, "{replies:?}");
    for r in &replies[..7] {
        refused(r, "permission denied: ");
    }
    ok(&replies[7]);
    assert_eq!(ok(&replies[8])["created"], true);
    let listed: Vec<&str> = ok(&replies[9])["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["mine", "nobodys"]);
    // Nothing happened to root's job or to the other process.
    assert!(alive(vpid) && alive(opid));
    assert_eq!(
        procs(&t.parent.join("job-root-job")),
        [vpid].into_iter().collect()
    );
    assert!(procs(&t.parent.join("job-nobodys")).is_empty());
    let v = ok(&root.rq(json!({"v":1,"op":"status","job_id":"mine"}))).clone();
    assert_eq!(v["owner"]["uid"], 65534);
    victim.kill().unwrap();
    other.kill().unwrap();
    let _ = (victim.wait(), other.wait());
}

#[test]
fn bad_requests_get_errors_while_another_client_is_served() {
    let t = TestJob::new("dbad");
    let d = Daemon::start(&t);
    let mut good = d.conn();
    ok(&good.rq(json!({"v":1,"op":"create","job_id":"g"})));
    let mut bad = d.conn();
    let cases: &[(&str, &str)] = &[
        (r#"{"v":1,"op":"create","job_id":"4"#, "malformed request"),
        ("\u{1}\u{2}garbage", "malformed request"),
        (r#"{"v":1,"op":"format-disk","job_id":"4"}"#, "unknown op"),
        (r#"{"v":1,"op":"create","job_id":"../../etc"}"#, "job id"),
        (r#"{"v":1,"op":"status","job_id":"a/../../b"}"#, "job id"),
        (
            r#"{"v":1,"op":"create","job_id":"5","uid":"root"}"#,
            "\"uid\"",
        ),
        (r#"{"v":1,"op":"create","job_id":"5","uid":-1}"#, "\"uid\""),
        (r#"{"v":9,"op":"list"}"#, "unsupported protocol version"),
        (
            r#"{"v":1,"op":"attach","job_id":"g","pids":[0]}"#,
            "bad pid",
        ),
        (
            r#"{"v":1,"op":"attach","job_id":"g","pids":[2147483647]}"#,
            "no such process",
        ),
    ];
    for (line, why) in cases {
        refused(&bad.raw(line), why);
        // The other client is served in between, and so is the bad one afterwards.
        ok(&good.rq(json!({"v":1,"op":"status","job_id":"g"})));
    }
    ok(&bad.rq(json!({"v":1,"op":"list"})));

    // A 1 MiB line: one error reply as soon as it passes 64 KiB, the rest of the line is
    // discarded, and the connection goes on.
    let mut huge = d.conn();
    let mut w = huge.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let line = format!(
            "{{\"v\":1,\"op\":\"list\",\"x\":\"{}\"}}\n",
            "a".repeat(1 << 20)
        );
        w.write_all(line.as_bytes()).unwrap();
    });
    // Served while the big line is still arriving.
    ok(&good.rq(json!({"v":1,"op":"status","job_id":"g"})));
    let v = huge.recv().expect("an error reply to the oversized line");
    refused(&v, "longer than 65536 bytes");
    writer.join().unwrap();
    let v = ok(&huge.rq(json!({"v":1,"op":"list"}))).clone();
    assert_eq!(v["jobs"][0]["job_id"], "g", "{v}");
    ok(&good.rq(json!({"v":1,"op":"status","job_id":"g"})));
    ok(&bad.rq(json!({"v":1,"op":"list"})));
    // Nothing was made by the refused requests.
    let made: Vec<_> = std::fs::read_dir(&t.parent)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(made, ["job-g"]);
    assert!(d.child.id() > 0 && alive(d.pid()));
}

/// `echo REQUEST | nc -U SOCKET`: the client shuts down its sending side right after the
/// request (here without a final newline); the reply still comes, a cleanup's when it is done,
/// and then the connection ends. Meanwhile the daemon does not spin on the half-closed socket.
#[test]
fn a_half_closed_client_still_gets_its_replies() {
    let t = TestJob::new("dhalf");
    let d = Daemon::start(&t);
    ok(&d.conn().rq(json!({"v":1,"op":"create","job_id":"h"})));
    let mut k = sleeper(&t, "trap '' TERM; exec sleep 1800");
    ok(&d
        .conn()
        .rq(json!({"v":1,"op":"attach","job_id":"h","pids":[k.id()]})));
    let mut c = d.conn();
    let before = cpu_ticks(d.pid());
    c.w.write_all(br#"{"v":1,"op":"list"}"#).unwrap();
    c.w.write_all(b"\n").unwrap();
    c.w.write_all(br#"{"v":1,"op":"cleanup","job_id":"h","grace_ms":500}"#)
        .unwrap();
    c.w.shutdown(std::net::Shutdown::Write).unwrap();
    ok(&c.recv().expect("the list reply"));
    let v = c.recv().expect("the cleanup reply, after the grace period");
    assert_eq!(ok(&v)["cgroup_removed"], true, "{v}");
    assert!(
        c.recv().is_none(),
        "the connection ends after the last reply"
    );
    k.wait().unwrap();
    let used = cpu_ticks(d.pid()) - before;
    assert!(
        used <= 10,
        "the daemon used {used} ticks over a 0.5 s cleanup"
    );
}

/// Out of file descriptors, the daemon stops accepting (no spinning on the readable
/// listener) and takes the waiting connections as soon as a client leaves.
#[test]
fn out_of_descriptors_the_daemon_waits_for_a_client_to_leave() {
    let t = TestJob::new("dfds");
    let sock = t.path("run/cgjob.sock");
    let mut c = bare_daemon_cmd(&t, &sock, "r.jsonl");
    c.stderr(Stdio::null());
    limit_nofile_before_exec(&mut c, 16, 16);
    let d = Daemon {
        child: c.spawn().unwrap(),
        sock,
    };
    t.wait_for("the daemon", IO_LIMIT, || {
        UnixStream::connect(&d.sock).is_ok()
    });
    // More connections than it has descriptors for; each asks for the list.
    let mut conns: Vec<Conn> = (0..12).map(|_| d.conn()).collect();
    for c in &mut conns {
        c.send(r#"{"v":1,"op":"list"}"#);
    }
    let first = ok(&conns[0].recv().expect("the first client is served")).clone();
    assert_eq!(first["jobs"], json!([]));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(d.pid()) - before;
    assert!(
        used <= 1,
        "the daemon spun ({used} ticks in 1 s) while out of descriptors"
    );
    // Clients leave one by one; every waiting one is served in turn.
    let last = conns.pop().unwrap();
    drop(conns);
    let mut last = last;
    ok(&last
        .recv()
        .expect("the last client is served once others left"));
    ok(&last.rq(json!({"v":1,"op":"list"})));
}

/// Owner record of a `cgjob run` whose supervisor is gone, and of a scheduler job made long
/// ago: both stale by gc's rules.
fn plant_stale(t: &TestJob) -> (PathBuf, PathBuf, Child) {
    let dead = t.parent.join("run-dead");
    std::fs::create_dir(&dead).unwrap();
    set_owner_record(
        &dead,
        c"trusted.cgjob.job",
        r#"{"version":1,"kind":"run","supervisor_pid":2147483600,"supervisor_start":1,"uid":0,"created":1}"#,
    );
    let old = t.parent.join("job-old");
    std::fs::create_dir(&old).unwrap();
    set_owner_record(
        &old,
        c"trusted.cgjob.job",
        r#"{"version":1,"kind":"job","supervisor_pid":0,"supervisor_start":0,"uid":0,"created":1,"job_id":"old","scheduler":"other"}"#,
    );
    let orphan = sleeper(t, "exec sleep 1013");
    std::fs::write(dead.join("cgroup.procs"), orphan.id().to_string()).unwrap();
    (dead, old, orphan)
}

#[test]
fn kill_9_restart_adopts_every_job_and_stale_ones_are_cleaned() {
    // As the issue asks: 50 running jobs when the daemon is killed.
    const N: usize = 50;
    let t = TestJob::new("drestart");
    let d = Daemon::start(&t);
    let mut c = d.conn();
    let mut kids = Vec::new();
    for i in 0..N {
        let id = format!("r{i}");
        ok(&c.rq(json!({"v":1,"op":"create","job_id":id,"uid":65534})));
        let k = sleeper(&t, &format!("exec sleep {}", 1100 + i));
        ok(&c.rq(json!({"v":1,"op":"attach","job_id":id,"pids":[k.id()]})));
        kids.push(k);
    }
    let pids: Vec<i32> = kids.iter().map(|k| k.id() as i32).collect();
    drop(c);
    // kill -9: nothing is lost, nothing is killed.
    drop(d);
    assert!(pids.iter().all(|p| alive(*p)));
    let (dead, old, mut orphan) = plant_stale(&t);

    let d = Daemon::start(&t);
    let mut c = d.conn();
    let jobs = ok(&c.rq(json!({"v":1,"op":"list"})))["jobs"].clone();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    // (Listed in the order of their ids as strings.)
    let mut want: Vec<String> = (0..N).map(|i| format!("r{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "{}", log(&t));
    for j in jobs.as_array().unwrap() {
        assert_eq!(
            (j["watched"].as_bool(), j["processes"].as_u64()),
            (Some(true), Some(1)),
            "{j}"
        );
    }
    // The stale ones were cleaned at start, their process killed and reported.
    assert!(!dead.exists() && !old.exists(), "{}", log(&t));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(orphan.wait().unwrap().signal(), Some(9));
    let results = std::fs::read_to_string(t.path("lib/results.jsonl")).unwrap();
    let stale: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "stale")
        .collect();
    assert_eq!(stale.len(), 2, "{results}");
    assert!(results.contains(r#"["sleep","1013"]"#), "{results}");

    // Adopted means watched: a job that empties is reported to a subscriber.
    let mut ev = d.conn();
    ok(&ev.rq(json!({"v":1,"op":"subscribe"})));
    kids[0].kill().unwrap();
    kids[0].wait().unwrap();
    events_until(&mut ev, ("empty", "r0"));

    // And every one is still cleanable.
    for (i, k) in kids.iter_mut().enumerate().skip(1) {
        let v = ok(&c.rq(json!({"v":1,"op":"cleanup","job_id":format!("r{i}"),"grace_ms":100})))
            .clone();
        assert_eq!(v["cgroup_removed"], true, "{v}");
        k.wait().unwrap();
    }

    // SIGTERM to the daemon leaves a running job alone.
    ok(&c.rq(json!({"v":1,"op":"create","job_id":"keep"})));
    let mut k = sleeper(&t, "exec sleep 1200");
    ok(&c.rq(json!({"v":1,"op":"attach","job_id":"keep","pids":[k.id()]})));
    assert_eq!(d.stop().code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(k.id() as i32), "stopping the daemon killed a job");
    assert!(t.parent.join("job-keep").is_dir());
    k.kill().unwrap();
    k.wait().unwrap();
}

/// Jobs made and removed by `cgjob job …` run directly, while the daemon runs, are seen by
/// it (inotify on the parent cgroup): adopted, watched, dropped.
#[test]
fn jobs_made_and_removed_without_the_daemon_are_followed() {
    let t = TestJob::new("dext");
    let d = Daemon::start(&t);
    let mut ev = d.conn();
    ok(&ev.rq(json!({"v":1,"op":"subscribe"})));
    let cli = |args: &[&str]| t.job_cmd(args);
    let o = run_bounded(
        cli(&["create", "--job-id", "ext", "--uid", "65534"]),
        IO_LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    events_until(&mut ev, ("created", "ext"));
    let mut c = cli(&["exec", "--job-id", "ext", "--", "sleep", "1400"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut job = c.spawn().unwrap();
    events_until(&mut ev, ("populated", "ext"));
    let v = ok(&d.conn().rq(json!({"v":1,"op":"list"}))).clone();
    assert_eq!(
        (
            v["jobs"][0]["job_id"].as_str(),
            v["jobs"][0]["watched"].as_bool()
        ),
        (Some("ext"), Some(true)),
        "{v}"
    );
    let o = run_bounded(
        cli(&["cleanup", "--job-id", "ext", "--grace", "100ms"]),
        IO_LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    job.wait().unwrap();
    // ("empty" may be folded into the removal: the kernel rate-limits cgroup.events
    // notifications, and the cgroup can be gone by the time the daemon reads it.)
    events_until(&mut ev, ("removed", "ext"));
    let v = ok(&d.conn().rq(json!({"v":1,"op":"list"}))).clone();
    assert_eq!(v["jobs"], json!([]));
}

/// `cgjob job ARGS --parent <ours>`, through the daemon on `sock` when given (else its socket
/// variable names nothing, so the command acts directly).
pub fn job_cmd(t: &TestJob, sock: Option<&Path>, args: &[&str]) -> Command {
    let mut c = t.job_cmd(args);
    match sock {
        Some(s) => c.env("CGJOB_SOCKET", s),
        None => c.env("CGJOB_SOCKET", t.path("no-daemon.sock")),
    };
    c
}

pub fn json_out(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr_of(o)))
}

/// The same `cgjob job` commands, once through the daemon and once directly, give the same
/// exit statuses and records; only the daemon's way leaves a line in its results log.
#[test]
fn job_commands_through_the_daemon_give_the_same_results() {
    let t = TestJob::new("dsame");
    let d = Daemon::start(&t);
    let mut records = Vec::new();
    for (id, sock) in [("via", Some(d.sock.as_path())), ("direct", None)] {
        let run = |args: &[&str]| {
            let mut a = vec![args[0], "--job-id", id];
            a.extend_from_slice(&args[1..]);
            run_bounded(job_cmd(&t, sock, &a), IO_LIMIT)
        };
        let o = run(&["create", "--uid", "65534", "--scheduler", "slurm", "--json"]);
        assert_eq!(code(&o), 0, "{id}: {}", stderr_of(&o));
        let created = json_out(&o);
        let mut k = sleeper(&t, "trap '' TERM; exec sleep 1600");
        let pid = k.id().to_string();
        let o = run(&["attach", "--pid", &pid]);
        assert_eq!(code(&o), 0, "{id}: {}", stderr_of(&o));
        let o = run(&["attach", "--pid", "2147483647"]);
        assert_eq!(code(&o), 125, "{id}: a pid that does not exist");
        let o = run(&["signal", "--signal", "CONT"]);
        assert_eq!(code(&o), 0, "{id}: {}", stderr_of(&o));
        let o = run(&["status", "--json"]);
        assert_eq!(code(&o), 0, "{id}: {}", stderr_of(&o));
        let status = json_out(&o);
        let o = run(&["status"]);
        let human = String::from_utf8_lossy(&o.stdout).replace(id, "ID");
        let o = run(&["cleanup", "--grace", "100ms", "--json"]);
        assert_eq!(code(&o), 0, "{id}: {}", stderr_of(&o));
        let cleaned = json_out(&o);
        let rogue = stderr_of(&o)
            .replace(id, "ID")
            .replace(&format!("(pid {pid}"), "(pid PID");
        k.wait().unwrap();
        // An epilog run twice, and a job that is not there.
        let again = code(&run(&["cleanup", "--grace", "100ms"]));
        let o = run(&["status"]);
        let missing = (code(&o), stderr_of(&o).replace(id, "ID"));
        records.push((
            created,
            status,
            // (The pid as a field of its own: a small pid can be part of "sleep 1600".)
            human.replace(&format!("\n{pid}\t"), "\nPID\t"),
            cleaned,
            rogue,
            again,
            missing,
        ));
    }
    let (via, direct) = (&records[0], &records[1]);
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    // create: the same record.
    assert_eq!(keys(&via.0), keys(&direct.0));
    assert_eq!(
        (&via.0["created"], &via.0["stale"]),
        (&direct.0["created"], &direct.0["stale"])
    );
    // status: the same owner and processes.
    assert_eq!(keys(&via.1), keys(&direct.1));
    assert_eq!(via.1["owner"]["uid"], 65534);
    assert_eq!(via.1["owner"]["scheduler"], direct.1["owner"]["scheduler"]);
    assert_eq!(via.1["processes"][0]["cmdline"], json!(["sleep", "1600"]));
    assert_eq!(
        via.1["processes"][0]["cmdline"],
        direct.1["processes"][0]["cmdline"]
    );
    assert_eq!(via.2, direct.2, "human status");
    // cleanup: the same record, the same rogue lines, the same status twice over.
    assert_eq!(keys(&via.3), keys(&direct.3));
    for k in ["cgroup_removed", "unkillable", "kill_method"] {
        assert_eq!(via.3[k], direct.3[k], "{k}");
    }
    assert_eq!(leftover_cmds(&via.3), ["sleep 1600"]);
    assert_eq!(
        via.3["leftovers"][0]["ended_by"],
        direct.3["leftovers"][0]["ended_by"]
    );
    assert!(
        via.4.contains("cgjob: rogue: sleep 1600 (pid PID)"),
        "{}",
        via.4
    );
    assert_eq!(via.4, direct.4);
    assert_eq!((via.5, direct.5), (0, 0));
    assert_eq!(via.6, direct.6);
    assert_eq!(via.6 .0, 125);
    // The daemon did the "via" job's work, and only that.
    let results = std::fs::read_to_string(t.path("lib/results.jsonl")).unwrap();
    assert!(results.contains(r#""job_id":"via""#), "{results}");
    assert!(!results.contains(r#""job_id":"direct""#), "{results}");
}

/// A user who may not write cgroupfs runs the job commands through the daemon: their own job
/// works end to end (create, exec into it, status, cleanup); root's job is refused.
#[test]
fn a_user_runs_job_commands_through_the_daemon() {
    let t = TestJob::new("duser");
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(&t);
    ok(&d
        .conn()
        .rq(json!({"v":1,"op":"create","job_id":"roots","uid":0})));
    let as_nobody = |sock: Option<&Path>, args: &[&str]| {
        let mut c = job_cmd(&t, sock, args);
        c.uid(65534).gid(65534);
        c
    };
    let sock = Some(d.sock.as_path());
    // Without the daemon a user cannot even make the job.
    let o = run_bounded(as_nobody(None, &["create", "--job-id", "u1"]), IO_LIMIT);
    assert_eq!(code(&o), 125, "{}", stderr_of(&o));
    let o = run_bounded(as_nobody(sock, &["create", "--job-id", "u1"]), IO_LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let mut c = as_nobody(sock, &["exec", "--job-id", "u1", "--", "sleep", "1700"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut job = c.spawn().unwrap();
    let cg = t.parent.join("job-u1");
    t.wait_for("the job in its cgroup", IO_LIMIT, || {
        procs(&cg).contains(&(job.id() as i32))
    });
    let o = run_bounded(
        as_nobody(sock, &["status", "--job-id", "u1", "--json"]),
        IO_LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert_eq!(
        json_out(&o)["processes"][0]["cmdline"],
        json!(["sleep", "1700"])
    );
    let o = run_bounded(as_nobody(sock, &["status", "--job-id", "roots"]), IO_LIMIT);
    assert_eq!(code(&o), 125);
    assert!(
        stderr_of(&o).contains("permission denied: job roots belongs to uid 0"),
        "{}",
        stderr_of(&o)
    );
    let o = run_bounded(as_nobody(sock, &["cleanup", "--job-id", "roots"]), IO_LIMIT);
    assert_eq!(code(&o), 125);
    assert!(t.parent.join("job-roots").is_dir());
    let o = run_bounded(
        as_nobody(sock, &["cleanup", "--job-id", "u1", "--grace", "100ms"]),
        IO_LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains("cgjob: rogue: sleep 1700"),
        "{}",
        stderr_of(&o)
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(job.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert!(!cg.exists());
}

pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after "pid (comm) ".
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_daemon_uses_no_cpu() {
    let t = TestJob::new("didle");
    let d = Daemon::start(&t);
    let mut c = d.conn();
    let mut kids = Vec::new();
    for i in 0..3 {
        ok(&c.rq(json!({"v":1,"op":"create","job_id":format!("i{i}")})));
        let k = sleeper(&t, "exec sleep 1300");
        ok(&c.rq(json!({"v":1,"op":"attach","job_id":format!("i{i}"),"pids":[k.id()]})));
        kids.push(k);
    }
    let mut ev = d.conn();
    ok(&ev.rq(json!({"v":1,"op":"subscribe"})));
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(d.pid()) - before;
    // A tick is 10 ms: a polling loop would show; a blocked epoll_wait shows 0.
    assert!(used <= 1, "idle daemon used {used} clock ticks in 1 s");
    let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", d.pid())).unwrap_or_default();
    assert!(
        wchan.is_empty() || wchan.contains("epoll") || wchan == "0",
        "blocked in {wchan:?}"
    );
    for mut k in kids {
        k.kill().unwrap();
        k.wait().unwrap();
    }
}

/// The unit file as shipped (with ExecStart pointing at the built binary, which
/// `systemd-analyze verify` requires to exist) verifies with no complaint at all.
#[test]
fn systemd_unit_verifies_cleanly() {
    let tool = Path::new("/usr/bin/systemd-analyze");
    assert!(
        tool.exists(),
        "systemd-analyze is missing: install the Debian package `systemd` (CI={:?})",
        std::env::var("CI").ok()
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/cgjob.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/cgjob "), "{unit}");
    for want in ["Type=notify", "Delegate=yes", "KillMode=process"] {
        assert!(unit.lines().any(|l| l == want), "unit lacks {want}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cgjob.service");
    std::fs::write(
        &p,
        unit.replace("/usr/local/bin/cgjob", env!("CARGO_BIN_EXE_cgjob")),
    )
    .unwrap();
    let o = Command::new(tool).arg("verify").arg(&p).output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.trim().is_empty(),
        "systemd-analyze verify: {}: {out}",
        o.status
    );
}

/// Readiness is told through $NOTIFY_SOCKET once the socket answers.
#[test]
fn readiness_is_notified() {
    let t = TestJob::new("dnotify");
    let nsock = t.path("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&nsock).unwrap();
    rx.set_read_timeout(Some(IO_LIMIT)).unwrap();
    let sock = t.path("run/cgjob.sock");
    let mut c = bare_daemon_cmd(&t, &sock, "r.jsonl");
    c.env("NOTIFY_SOCKET", &nsock).stderr(Stdio::null());
    let d = Daemon {
        child: c.spawn().unwrap(),
        sock,
    };
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("a READY=1 datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\nSTATUS=serving 0 jobs"), "{msg:?}");
    // Ready means answering.
    ok(&d.conn().rq(json!({"v":1,"op":"list"})));
    // A second daemon on the same socket stops before touching anything.
    let o = run_bounded(bare_daemon_cmd(&t, &d.sock, "r2.jsonl"), IO_LIMIT);
    assert_eq!(code(&o), 125);
    assert!(
        stderr_of(&o).contains("another daemon answers on"),
        "{}",
        stderr_of(&o)
    );
    ok(&d.conn().rq(json!({"v":1,"op":"list"})));
    assert_eq!(d.stop().code(), Some(0));
}
