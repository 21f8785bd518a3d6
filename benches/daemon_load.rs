//! Load benchmark of the node daemon, `cgjob daemon` (a `cargo bench` target, `harness =
//! false`). Not a timed test: a missed target is reported, not a failure.
//!
//! It drives the cgjob binary as a process and talks to it over its socket only (JSON lines,
//! written here by hand); it does not use the cgjob library API. The daemon runs on a private
//! socket in a scratch directory, over a private parent cgroup
//! (`<cgroup2 mount>/cgjob-bench-daemon-<pid>`), with private results and metrics files, so
//! it cannot disturb a daemon serving the node. Several client connections at once:
//!
//! 1. `create` N jobs;
//! 2. `attach` 3 `sleep` processes (started here) to each;
//! 3. `status` of every job;
//! 4. 10 more jobs, one `attach` each, 100 ms apart (as tasks start now and then), with a
//!    `hello` sent right behind each on another connection; then cleaned;
//! 5. with every job live: the daemon's RSS (VmRSS, VmHWM), its CPU time and context
//!    switches over an idle window, `list`, and `hello` round trips from one idle client;
//! 6. `cleanup` of every job (the epilog: SIGTERM, grace, kill, rmdir), then check that every
//!    job cgroup is gone and every sleeper has exited.
//!
//! Baselines, measured in the same run by the same client threads, interleaved: every 10th
//! job has a raw twin cgroup (beside the daemon's parent, not under it) that gets a `mkdir`,
//! its 3 sleepers written to `cgroup.procs`, then `cgroup.kill` + wait for `populated 0` +
//! `rmdir`; every `status` is paired with a `status` of a job that does not exist (a round
//! trip through the daemon's loop that touches one path). A prober connection sends `hello`
//! every 10 ms throughout the busy phases: its latency shows whether anything blocks the loop.
//! Per phase, the CPU time of the daemon's loop (its main thread, from schedstat) per request
//! answered, and the time it waited for a CPU: tails that grow with that wait come from the
//! machine's load, not from the daemon's work.
//!
//! Targets (from the issue): `create` and `status` p99 <= 5 ms; VmRSS with N jobs <= 30 MiB;
//! no CPU time while idle.
//!
//! Environment: `CGJOB_BENCH_DAEMON_JOBS` (jobs, default 1000, at most 1200: 3 sleepers each
//! keeps the bench under ~4000 processes), `CGJOB_BENCH_DAEMON_CLIENTS` (concurrent client
//! connections, default 4), `CGJOB_BENCH_DAEMON_IDLE_SECS` (the idle window, default 5),
//! `CGJOB_BENCH_DAEMON_METRICS=0` (no `--metrics` file; by default the daemon writes one in
//! the scratch directory), `CGJOB_BENCH_BIN` (the cgjob binary; default: the one cargo
//! built). Quick mode, for CI:
//! `CGJOB_BENCH_DAEMON_JOBS=100 CGJOB_BENCH_DAEMON_IDLE_SECS=2 cargo bench --bench daemon_load`.
//! Run without `--bench` (as `cargo test --all-targets` does) it is a smoke test with small
//! defaults (20 jobs, 1 s idle). Needs root and a writable cgroup2 hierarchy.
//!
//! Exit status: 0 when every measurement was sound (whatever the targets); 1 when one was
//! broken (a request refused, a cgroup or a process left over, the daemon dying).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{
    cgjob_bin, cgroup2_mount, env_usize, kill_and_remove_cgroup, median, ms, nearest_rank,
    rmdir_retry, sorted, wait_unpopulated, Result,
};

const SLEEPERS_PER_JOB: usize = 3;
/// Every RAW_EVERY-th job has a raw twin cgroup (the baseline).
const RAW_EVERY: usize = 10;
const MAX_JOBS: usize = 1200;
const MAX_CLIENTS: usize = 32;
/// How long one request, or the daemon's start or stop, may take before the run is broken.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(10);
const IDLE_HELLOS: usize = 200;
const LISTS: usize = 3;
const SPARSE_JOBS: usize = 10;
const SPARSE_GAP: Duration = Duration::from_millis(100);

const TARGET_P99: Duration = Duration::from_millis(5);
const TARGET_RSS_KIB: u64 = 30 * 1024;
const TARGET_IDLE_TICKS: u64 = 0;

// ---------------------------------------------------------------------------------------
// What this run owns, for the teardown: the daemon, the sleepers, the cgroups. A Drop guard
// in `main` and a panic hook (in case a profile aborts on panic) both call `teardown`, which
// takes everything out of the registry, so it runs once.
// ---------------------------------------------------------------------------------------

struct Registry {
    daemon: Option<i32>,
    sleepers: Vec<i32>,
    /// Cgroup subtrees made here, removed in reverse order.
    cgroups: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    daemon: None,
    sleepers: Vec::new(),
    cgroups: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stop the daemon (SIGTERM, then SIGKILL), kill and reap the sleepers, remove the cgroups.
fn teardown() {
    let (daemon, sleepers, cgroups) = {
        let mut r = registry();
        (
            r.daemon.take(),
            std::mem::take(&mut r.sleepers),
            std::mem::take(&mut r.cgroups),
        )
    };
    if let Some(pid) = daemon {
        let _ = stop_child(pid, Duration::from_secs(10));
    }
    for pid in sleepers {
        // SAFETY: kill(2) + waitpid(2) of our own unreaped child (its pid cannot be reused
        // before we reap it).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    for cg in cgroups.iter().rev() {
        if let Err(e) = kill_and_remove_cgroup(cg) {
            eprintln!("daemon_load bench: cleanup of {}: {e}", cg.display());
        }
    }
}

struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        teardown();
    }
}

fn install_panic_teardown() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        // The lock is only held for a moment; if the panicking thread holds it, the Drop
        // guard tears down instead (unwinding) or nothing can (aborting).
        if REGISTRY.try_lock().is_ok() {
            teardown();
        }
    }));
}

/// SIGTERM our child `pid`, wait up to `grace` for it, then SIGKILL; reap it. Its exit
/// status (`None` if it had to be killed).
fn stop_child(pid: i32, grace: Duration) -> Option<i32> {
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let end = Instant::now() + grace;
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) of our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r < 0 {
            return None;
        }
        if Instant::now() >= end {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// cgroup helpers
// ---------------------------------------------------------------------------------------

/// Make a cgroup this run owns (it must not exist yet), registered for the teardown first.
fn own_cgroup(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(format!("{} exists already", path.display()));
    }
    registry().cgroups.push(path.to_owned());
    fs::create_dir(path).map_err(|e| format!("mkdir {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// processes
// ---------------------------------------------------------------------------------------

/// `n` `sleep 3600` processes, children of this bench, registered for the teardown.
fn spawn_sleepers(n: usize) -> Result<Vec<i32>> {
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        let c = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn sleep: {e}"))?;
        // Dropping a Child neither kills nor reaps it: reaped by pid (reap_sleepers, teardown).
        let pid = c.id() as i32;
        registry().sleepers.push(pid);
        pids.push(pid);
    }
    Ok(pids)
}

/// Reap every sleeper (they were all sent SIGTERM by a cleanup); the pids of those still
/// alive after `timeout` (left in the registry, for the teardown to SIGKILL).
fn reap_sleepers(timeout: Duration) -> Vec<i32> {
    let end = Instant::now() + timeout;
    loop {
        let mut r = registry();
        r.sleepers.retain(|&pid| {
            // SAFETY: waitpid(2) of our own child.
            let w = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            w == 0
        });
        if r.sleepers.is_empty() || Instant::now() >= end {
            return r.sleepers.clone();
        }
        drop(r);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fields of /proc/PID/stat after the command name (field 3, the state, is index 0).
fn stat_fields(pid: i32) -> Result<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 2..])
        .ok_or("malformed /proc/PID/stat")?;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// utime + stime of `pid`, in clock ticks (all its threads, the exited ones included).
fn cpu_ticks(pid: i32) -> Result<u64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15.
    Ok(f[11] + f[12])
}

/// Run time of every live thread of `pid` in ns (/proc/PID/task/*/schedstat, first field):
/// finer than clock ticks; `None` where the kernel has no schedstat.
fn runtime_ns(pid: i32) -> Option<u64> {
    let mut sum = 0;
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let s = fs::read_to_string(e.path().join("schedstat")).ok()?;
        sum += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// A numeric field of /proc/PID/status (`VmRSS`, `Threads`, …), without its unit.
fn status_field(pid: i32, key: &str) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

/// Voluntary + involuntary context switches of every live thread of `pid`: wake-ups.
fn ctxt_switches(pid: i32) -> Result<u64> {
    let mut sum = 0;
    let rd = fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("{e}"))?;
    for e in rd.flatten() {
        let s = fs::read_to_string(e.path().join("status")).map_err(|e| format!("{e}"))?;
        for l in s.lines() {
            if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                sum += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(sum)
}

/// Total time (µs) some task waited for a CPU, machine-wide (`some` in /proc/pressure/cpu);
/// `None` without PSI.
fn cpu_pressure_us() -> Option<u64> {
    let s = fs::read_to_string("/proc/pressure/cpu").ok()?;
    s.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total=")?.parse().ok())
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

// ---------------------------------------------------------------------------------------
// the daemon and its protocol
// ---------------------------------------------------------------------------------------

struct Daemon {
    pid: i32,
    sock: PathBuf,
    log: PathBuf,
    results: PathBuf,
}

impl Daemon {
    /// Start `cgjob -v daemon` (as the shipped unit runs it) on a socket in `dir`, over
    /// `parent`, and wait until it answers `hello` for that parent.
    fn start(dir: &Path, parent: &Path, metrics: bool) -> Result<Daemon> {
        let prom = dir.join("cgjob.prom");
        let d = Daemon {
            pid: 0,
            sock: dir.join("run/cgjob.sock"),
            log: dir.join("daemon.log"),
            results: dir.join("lib/results.jsonl"),
        };
        let log = File::create(&d.log).map_err(|e| format!("create daemon.log: {e}"))?;
        let bin = cgjob_bin();
        let child = Command::new(&bin)
            .args(["-v", "daemon", "--parent"])
            .arg(parent)
            .arg("--socket")
            .arg(&d.sock)
            .arg("--results")
            .arg(&d.results)
            .args(
                metrics
                    .then(|| [OsStr::new("--metrics"), prom.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            // Never tell a service manager the bench runs under that this daemon is ready.
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let pid = child.id() as i32;
        registry().daemon = Some(pid);
        let d = Daemon { pid, ..d };
        let end = Instant::now() + IO_TIMEOUT;
        let mut conn = loop {
            if let Ok(c) = Conn::to(&d.sock) {
                break c;
            }
            // SAFETY: waitpid(2) of our own child.
            if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == pid {
                registry().daemon = None;
                return Err(format!("the daemon exited at start: {}", d.log_tail()));
            }
            if Instant::now() >= end {
                return Err(format!("the daemon did not answer: {}", d.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (v, _) = conn.ok(&json!({"v": 1, "op": "hello"}))?;
        if v["parent"].as_str().map(Path::new) != Some(parent) {
            return Err(format!("the daemon serves another parent: {v}"));
        }
        Ok(d)
    }

    fn alive(&self) -> Result<()> {
        // The state (field 3): gone or a zombie means it died.
        let state = fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 2..].chars().next());
        match state {
            Some(c) if c != 'Z' => Ok(()),
            _ => Err(format!("the daemon died: {}", self.log_tail())),
        }
    }

    fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

/// One client connection, JSON lines.
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
    line: String,
}

impl Conn {
    fn to(sock: &Path) -> Result<Conn> {
        let w = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
        w.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| w.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| format!("socket timeout: {e}"))?;
        let r = BufReader::new(w.try_clone().map_err(|e| format!("dup: {e}"))?);
        Ok(Conn {
            w,
            r,
            line: String::new(),
        })
    }

    /// One request and its reply, and the time from the first byte sent to the whole reply
    /// line read (serialization and parsing left out).
    fn call(&mut self, req: &Value) -> Result<(Value, Duration)> {
        let mut bytes = serde_json::to_vec(req).expect("a JSON value serializes");
        bytes.push(b'\n');
        self.line.clear();
        let t = Instant::now();
        self.w
            .write_all(&bytes)
            .map_err(|e| format!("send {req}: {e}"))?;
        let n = self
            .r
            .read_line(&mut self.line)
            .map_err(|e| format!("reply to {req}: {e}"))?;
        let d = t.elapsed();
        if n == 0 {
            return Err(format!("the daemon closed the connection after {req}"));
        }
        let v: Value = serde_json::from_str(&self.line)
            .map_err(|e| format!("bad reply to {req}: {e}: {:?}", self.line))?;
        Ok((v, d))
    }

    /// A request that must succeed.
    fn ok(&mut self, req: &Value) -> Result<(Value, Duration)> {
        let (v, d) = self.call(req)?;
        if v["ok"] != true {
            return Err(format!("{req} refused: {v}"));
        }
        Ok((v, d))
    }
}

fn job_id(i: usize) -> String {
    format!("b{i}")
}

// ---------------------------------------------------------------------------------------
// phases: K client threads, each over every K-th job, plus a prober
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Samples {
    create: Vec<Duration>,
    attach: Vec<Duration>,
    status: Vec<Duration>,
    status_missing: Vec<Duration>,
    cleanup: Vec<Duration>,
    raw_mkdir: Vec<Duration>,
    raw_attach: Vec<Duration>,
    raw_kill: Vec<Duration>,
    /// `hello` from the prober while the phase ran.
    probe: Vec<Duration>,
    /// Most daemon threads the prober saw.
    max_threads: u64,
}

impl Samples {
    fn merge(&mut self, o: Samples) {
        self.create.extend(o.create);
        self.attach.extend(o.attach);
        self.status.extend(o.status);
        self.status_missing.extend(o.status_missing);
        self.cleanup.extend(o.cleanup);
        self.raw_mkdir.extend(o.raw_mkdir);
        self.raw_attach.extend(o.raw_attach);
        self.raw_kill.extend(o.raw_kill);
        self.probe.extend(o.probe);
        self.max_threads = self.max_threads.max(o.max_threads);
    }
}

struct Setup {
    jobs: usize,
    clients: usize,
    sock: PathBuf,
    daemon_pid: i32,
    /// Where the raw twins live (beside the daemon's parent).
    raw: PathBuf,
}

impl Setup {
    fn raw_twin(&self, i: usize) -> Option<PathBuf> {
        (i % RAW_EVERY == 0).then(|| self.raw.join(format!("r{i}")))
    }
}

/// Run `step` for every job, over `clients` connections at once, with a prober sending
/// `hello` meanwhile; the samples of all, and the wall time.
fn phase<F>(s: &Setup, name: &'static str, step: F) -> Result<(Samples, Phase)>
where
    F: Fn(&mut Conn, usize, &mut Samples) -> Result<()> + Sync,
{
    let done = AtomicBool::new(false);
    let sched0 = loop_schedstat(s.daemon_pid);
    let started = Instant::now();
    let mut all = Samples::default();
    let mut wall = Duration::ZERO;
    std::thread::scope(|sc| -> Result<()> {
        let prober = sc.spawn(|| -> Result<Samples> {
            let mut c = Conn::to(&s.sock)?;
            let mut out = Samples::default();
            while !done.load(Ordering::Relaxed) {
                let (_, d) = c.ok(&json!({"v": 1, "op": "hello"}))?;
                out.probe.push(d);
                if let Ok(t) = status_field(s.daemon_pid, "Threads") {
                    out.max_threads = out.max_threads.max(t);
                }
                std::thread::sleep(PROBE_EVERY);
            }
            Ok(out)
        });
        let workers: Vec<_> = (0..s.clients)
            .map(|t| {
                let step = &step;
                sc.spawn(move || -> Result<Samples> {
                    let mut c = Conn::to(&s.sock)?;
                    let mut out = Samples::default();
                    for i in (t..s.jobs).step_by(s.clients) {
                        step(&mut c, i, &mut out)?;
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut first_err = None;
        for w in workers {
            match w.join().expect("a client thread panicked") {
                Ok(o) => all.merge(o),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        wall = started.elapsed();
        done.store(true, Ordering::Relaxed);
        match prober.join().expect("the prober panicked") {
            Ok(o) => all.merge(o),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    let sched = sched0
        .zip(loop_schedstat(s.daemon_pid))
        .map(|((r0, w0), (r1, w1))| (r1.saturating_sub(r0), w1.saturating_sub(w0)));
    let requests = all.create.len()
        + all.attach.len()
        + all.status.len()
        + all.status_missing.len()
        + all.cleanup.len()
        + all.probe.len();
    let p = Phase {
        name,
        wall,
        requests,
        loop_run: sched.map(|s| Duration::from_nanos(s.0)),
        loop_wait: sched.map(|s| Duration::from_nanos(s.1)),
        probe: std::mem::take(&mut all.probe),
    };
    Ok((all, p))
}

/// One phase: its wall time, the requests the daemon answered, the CPU time of the daemon's
/// loop (its main thread) and the time that thread waited for a CPU, the prober's samples.
struct Phase {
    name: &'static str,
    wall: Duration,
    requests: usize,
    loop_run: Option<Duration>,
    loop_wait: Option<Duration>,
    probe: Vec<Duration>,
}

/// (time on a CPU, time waiting for one) of the daemon's main thread, the epoll loop, in ns:
/// /proc/PID/task/PID/schedstat. `None` where the kernel has no schedstat.
fn loop_schedstat(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

fn create_step(s: &Setup, c: &mut Conn, i: usize, out: &mut Samples) -> Result<()> {
    let req =
        json!({"v": 1, "op": "create", "job_id": job_id(i), "uid": 65534, "scheduler": "slurm"});
    let (v, d) = c.ok(&req)?;
    if v["created"] != true {
        return Err(format!("{req}: not a new cgroup: {v}"));
    }
    out.create.push(d);
    if let Some(twin) = s.raw_twin(i) {
        let t = Instant::now();
        fs::create_dir(&twin).map_err(|e| format!("mkdir {}: {e}", twin.display()))?;
        out.raw_mkdir.push(t.elapsed());
    }
    Ok(())
}

/// The sleepers of every job, and of its raw twin if it has one, started before the attach
/// phase (so that forking them does not load the machine while attaches are timed).
fn spawn_all(s: &Setup) -> Result<Vec<Sleepers>> {
    let mut all: Vec<Option<Sleepers>> = (0..s.jobs).map(|_| None).collect();
    std::thread::scope(|sc| -> Result<()> {
        let workers: Vec<_> = (0..s.clients)
            .map(|t| {
                sc.spawn(move || -> Result<Vec<(usize, Sleepers)>> {
                    let mut out = Vec::new();
                    for i in (t..s.jobs).step_by(s.clients) {
                        let job = spawn_sleepers(SLEEPERS_PER_JOB)?;
                        let twin = match s.raw_twin(i) {
                            Some(_) => spawn_sleepers(SLEEPERS_PER_JOB)?,
                            None => Vec::new(),
                        };
                        out.push((i, Sleepers { job, twin }));
                    }
                    Ok(out)
                })
            })
            .collect();
        for w in workers {
            for (i, sl) in w.join().expect("a spawning thread panicked")? {
                all[i] = Some(sl);
            }
        }
        Ok(())
    })?;
    Ok(all.into_iter().map(|s| s.expect("every job")).collect())
}

struct Sleepers {
    job: Vec<i32>,
    /// Empty without a raw twin.
    twin: Vec<i32>,
}

fn attach_step(s: &Setup, sl: &Sleepers, c: &mut Conn, i: usize, out: &mut Samples) -> Result<()> {
    let pids = &sl.job;
    let twin = s.raw_twin(i).map(|t| (t, &sl.twin));
    // Moving a process takes a write lock whose first taker after a quiet spell waits an RCU
    // grace period (cgroup_threadgroup_rwsem), and the next ones, close behind, do not: the
    // raw twin goes first for every other twin, so that neither side always follows.
    let raw_first = i % (2 * RAW_EVERY) == 0;
    if let (true, Some((twin, pids))) = (raw_first, &twin) {
        out.raw_attach.push(raw_attach(twin, pids)?);
    }
    let req = json!({"v": 1, "op": "attach", "job_id": job_id(i), "pids": pids});
    let (v, d) = c.ok(&req)?;
    if v["moved"] != json!(pids) {
        return Err(format!("{req}: moved {}", v["moved"]));
    }
    out.attach.push(d);
    if let (false, Some((twin, pids))) = (raw_first, &twin) {
        out.raw_attach.push(raw_attach(twin, pids)?);
    }
    Ok(())
}

/// Samples of the sparse attaches.
#[derive(Default)]
struct Sparse {
    attach: Vec<Duration>,
    raw_attach: Vec<Duration>,
    /// A `hello` sent on another connection right after each attach.
    hello_behind: Vec<Duration>,
}

/// Attaches one at a time, SPARSE_GAP apart, as a scheduler launching tasks now and then
/// makes them: each waits for an RCU grace period in the kernel (see `attach_step`), with
/// the daemon's loop blocked meanwhile, which a `hello` sent right behind it shows. The raw
/// twins get the same spacing. SPARSE_JOBS extra jobs, one sleeper each, cleaned at the end.
fn sparse_attaches(s: &Setup) -> Result<Sparse> {
    let mut out = Sparse::default();
    let mut a = Conn::to(&s.sock)?;
    let mut b = Conn::to(&s.sock)?;
    for k in 0..SPARSE_JOBS {
        let id = format!("sparse{k}");
        a.ok(&json!({"v": 1, "op": "create", "job_id": id}))?;
        let twin = s.raw.join(format!("s{k}"));
        fs::create_dir(&twin).map_err(|e| format!("mkdir {}: {e}", twin.display()))?;
        let pids = spawn_sleepers(2)?;
        std::thread::sleep(SPARSE_GAP);
        out.raw_attach.push(raw_attach(&twin, &pids[1..])?);
        std::thread::sleep(SPARSE_GAP);
        let req = json!({"v": 1, "op": "attach", "job_id": id, "pids": [pids[0]]});
        let mut line = serde_json::to_vec(&req).expect("serializes");
        line.push(b'\n');
        let t = Instant::now();
        a.w.write_all(&line)
            .map_err(|e| format!("send {req}: {e}"))?;
        // Right behind it, on another connection: answered once the loop is free again.
        let (_, hello) = b.ok(&json!({"v": 1, "op": "hello"}))?;
        a.line.clear();
        a.r.read_line(&mut a.line)
            .map_err(|e| format!("reply to {req}: {e}"))?;
        let d = t.elapsed();
        let v: Value = serde_json::from_str(&a.line).map_err(|e| format!("{e}: {:?}", a.line))?;
        if v["ok"] != true {
            return Err(format!("{req} refused: {v}"));
        }
        out.attach.push(d);
        out.hello_behind.push(hello);
    }
    for k in 0..SPARSE_JOBS {
        let req = json!({"v": 1, "op": "cleanup", "job_id": format!("sparse{k}")});
        let (v, _) = a.ok(&req)?;
        if v["cgroup_removed"] != true || v["unkillable"] != false {
            return Err(format!("{req}: {v}"));
        }
        kill_and_remove_cgroup(&s.raw.join(format!("s{k}")))?;
    }
    Ok(out)
}

/// Write each pid to the twin's `cgroup.procs` (one open and write per pid, as the daemon
/// does); the time it took.
fn raw_attach(twin: &Path, pids: &[i32]) -> Result<Duration> {
    let procs = twin.join("cgroup.procs");
    let t = Instant::now();
    for p in pids {
        fs::write(&procs, p.to_string())
            .map_err(|e| format!("write {p} to {}: {e}", procs.display()))?;
    }
    Ok(t.elapsed())
}

fn status_step(c: &mut Conn, i: usize, out: &mut Samples) -> Result<()> {
    let req = json!({"v": 1, "op": "status", "job_id": job_id(i)});
    let (v, d) = c.ok(&req)?;
    let n = v["processes"].as_array().map_or(0, |a| a.len());
    if n != SLEEPERS_PER_JOB {
        return Err(format!("{req}: {n} processes: {v}"));
    }
    out.status.push(d);
    let req = json!({"v": 1, "op": "status", "job_id": format!("missing{i}")});
    let (v, d) = c.call(&req)?;
    if v["ok"] != false {
        return Err(format!("{req}: a job that does not exist: {v}"));
    }
    out.status_missing.push(d);
    Ok(())
}

fn cleanup_step(s: &Setup, c: &mut Conn, i: usize, out: &mut Samples) -> Result<()> {
    let req = json!({"v": 1, "op": "cleanup", "job_id": job_id(i)});
    let (v, d) = c.ok(&req)?;
    let found = v["leftovers"].as_array().map_or(0, |a| a.len());
    if v["cgroup_removed"] != true || v["unkillable"] != false || found != SLEEPERS_PER_JOB {
        return Err(format!("{req}: {v}"));
    }
    out.cleanup.push(d);
    if let Some(twin) = s.raw_twin(i) {
        let mut events = File::open(twin.join("cgroup.events"))
            .map_err(|e| format!("open {}/cgroup.events: {e}", twin.display()))?;
        let t = Instant::now();
        fs::write(twin.join("cgroup.kill"), "1")
            .map_err(|e| format!("write {}/cgroup.kill: {e}", twin.display()))?;
        wait_unpopulated(&mut events, IO_TIMEOUT)?;
        rmdir_retry(&twin)?;
        out.raw_kill.push(t.elapsed());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// statistics and the report
// ---------------------------------------------------------------------------------------

struct Stats {
    n: usize,
    median: Duration,
    p99: Duration,
    max: Duration,
}

/// Count, median, p99 and max of the samples; `None` if there are none.
fn stats(samples: &[Duration]) -> Option<Stats> {
    let s = sorted(samples)?;
    Some(Stats {
        n: s.len(),
        median: median(&s),
        p99: nearest_rank(&s, 0.99),
        max: s[s.len() - 1],
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

/// One latency row: the samples, the target on p99 if any, and a baseline.
fn row(
    name: &str,
    samples: &[Duration],
    target: Option<Duration>,
    base: Option<(&str, &[Duration])>,
) {
    let Some(s) = stats(samples) else {
        println!("{name:<26} no samples");
        return;
    };
    let t = match target {
        Some(t) => format!("p99 <= {:.0} ms {:<6}", ms(t), verdict(s.p99 <= t)),
        None => format!("{:<19}", "-"),
    };
    let b = match base.and_then(|(n, b)| Some((n, stats(b)?))) {
        Some((bn, b)) => format!(
            "{bn:<28} {:8.3}  x{:.1}",
            ms(b.median),
            s.median.as_secs_f64() / b.median.as_secs_f64()
        ),
        None => "-".into(),
    };
    println!(
        "{name:<26} {:5} {:8.3} {:8.3} {:8.3}  {t}  {b}",
        s.n,
        ms(s.median),
        ms(s.p99),
        ms(s.max)
    );
}

fn run() -> Result<()> {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (d_jobs, d_idle) = if bench_mode { (1000, 5) } else { (20, 1) };
    let jobs = env_usize("CGJOB_BENCH_DAEMON_JOBS", d_jobs, MAX_JOBS)?;
    let clients = env_usize("CGJOB_BENCH_DAEMON_CLIENTS", 4, MAX_CLIENTS)?.min(jobs);
    let idle = Duration::from_secs(env_usize("CGJOB_BENCH_DAEMON_IDLE_SECS", d_idle, 600)? as u64);
    let metrics = std::env::var("CGJOB_BENCH_DAEMON_METRICS").map_or(true, |v| v != "0");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the daemon benchmark runs as root (it makes cgroups, runs the daemon)".into());
    }
    let mount = cgroup2_mount()?;
    let me = std::process::id();
    let parent = mount.join(format!("cgjob-bench-daemon-{me}"));
    let raw = mount.join(format!("cgjob-bench-daemon-{me}-raw"));
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    own_cgroup(&parent)?;
    own_cgroup(&raw)?;

    println!(
        "daemon load benchmark{}",
        if bench_mode {
            ""
        } else {
            " (smoke-test mode: run via `cargo bench` for real numbers)"
        }
    );
    println!("  cgjob      {}", cgjob_bin().display());
    println!(
        "  cgroup2    {} (parent {})",
        mount.display(),
        parent.display()
    );
    println!(
        "  cpus       {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  jobs       {jobs}, {SLEEPERS_PER_JOB} sleep processes each; a raw twin for every \
         {RAW_EVERY}th; {clients} client connections at once"
    );
    println!("  idle       {} s", idle.as_secs());
    println!(
        "  metrics    {}",
        if metrics {
            "--metrics <scratch>/cgjob.prom"
        } else {
            "none (CGJOB_BENCH_DAEMON_METRICS=0)"
        }
    );
    println!();

    let d = Daemon::start(dir.path(), &parent, metrics)?;
    let started = Instant::now();
    let psi0 = cpu_pressure_us();
    let rss_empty = status_field(d.pid, "VmRSS")?;
    let s = Setup {
        jobs,
        clients,
        sock: d.sock.clone(),
        daemon_pid: d.pid,
        raw,
    };
    let mut all = Samples::default();
    let mut phases = Vec::new();

    let (p, ph) = phase(&s, "create", |c, i, o| create_step(&s, c, i, o))?;
    all.merge(p);
    phases.push(ph);
    d.alive()?;
    let sleepers = spawn_all(&s)?;
    let (p, ph) = phase(&s, "attach", |c, i, o| {
        attach_step(&s, &sleepers[i], c, i, o)
    })?;
    all.merge(p);
    phases.push(ph);
    d.alive()?;
    let (p, ph) = phase(&s, "status", status_step)?;
    all.merge(p);
    phases.push(ph);
    d.alive()?;

    let sparse = sparse_attaches(&s)?;
    d.alive()?;

    // Steady state, every job live: memory, then the idle window (nobody connected).
    let rss_full = status_field(d.pid, "VmRSS")?;
    let hwm_full = status_field(d.pid, "VmHWM")?;
    let fds_full = open_fds(d.pid);
    // The daemon may write its metrics file up to a second after the last request.
    std::thread::sleep(Duration::from_secs(2));
    let (t0, n0, c0) = (cpu_ticks(d.pid)?, runtime_ns(d.pid), ctxt_switches(d.pid)?);
    std::thread::sleep(idle);
    let (t1, n1, c1) = (cpu_ticks(d.pid)?, runtime_ns(d.pid), ctxt_switches(d.pid)?);
    let idle_ticks = t1 - t0;
    let idle_ns = n0.zip(n1).map(|(a, b)| b.saturating_sub(a));
    let idle_wakeups = c1 - c0;

    // One idle client: the protocol's floor; then `list` of every job.
    let mut c = Conn::to(&s.sock)?;
    let mut hello_idle = Vec::with_capacity(IDLE_HELLOS);
    for _ in 0..IDLE_HELLOS {
        hello_idle.push(c.ok(&json!({"v": 1, "op": "hello"}))?.1);
    }
    let mut list = Vec::new();
    for _ in 0..LISTS {
        let (v, d) = c.ok(&json!({"v": 1, "op": "list"}))?;
        let n = v["jobs"].as_array().map_or(0, |a| a.len());
        if n != jobs {
            return Err(format!("list: {n} jobs, want {jobs}"));
        }
        list.push(d);
    }
    drop(c);

    let (p, ph) = phase(&s, "cleanup", |c, i, o| cleanup_step(&s, c, i, o))?;
    let cleanup_threads = p.max_threads;
    let cleanup_wall = ph.wall;
    all.merge(p);
    phases.push(ph);
    d.alive()?;

    // Everything gone: the job cgroups, the sleepers; the daemon watches nothing.
    let left: Vec<String> = fs::read_dir(&parent)
        .map_err(|e| format!("read {}: {e}", parent.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !left.is_empty() {
        return Err(format!(
            "{} job cgroups left after cleanup, e.g. {:?}",
            left.len(),
            &left[..left.len().min(5)]
        ));
    }
    let alive = reap_sleepers(Duration::from_secs(10));
    if !alive.is_empty() {
        return Err(format!(
            "{} sleepers alive after their cleanup, e.g. {:?}",
            alive.len(),
            &alive[..alive.len().min(5)]
        ));
    }
    let (v, _) = Conn::to(&s.sock)?.ok(&json!({"v": 1, "op": "list"}))?;
    if v["jobs"].as_array().is_none_or(|a| !a.is_empty()) {
        return Err(format!("list after cleanup: {v}"));
    }
    let rss_after = status_field(d.pid, "VmRSS")?;
    let hwm_after = status_field(d.pid, "VmHWM")?;
    let results = fs::read_to_string(&d.results)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let log = fs::read_to_string(&d.log).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();

    let psi = psi0
        .zip(cpu_pressure_us())
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6 / started.elapsed().as_secs_f64() * 100.0);
    let status = stop_child(d.pid, IO_TIMEOUT);
    registry().daemon = None;
    if d.sock.exists() {
        return Err("the daemon left its socket behind after SIGTERM".into());
    }
    // The cgroups go with the teardown (Drop guard in main), checked there.

    let tick_ms = 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!(
        "{:<8} {:>7} {:>9} {:>12} {:>15} {:>16}",
        "phase", "wall s", "requests", "loop CPU ms", "CPU/request us", "loop CPU-wait ms"
    );
    for ph in &phases {
        let opt = |d: Option<Duration>| d.map_or("n/a".to_string(), |d| format!("{:.1}", ms(d)));
        println!(
            "{:<8} {:>7.2} {:>9} {:>12} {:>15} {:>16}",
            ph.name,
            ph.wall.as_secs_f64(),
            ph.requests,
            opt(ph.loop_run),
            ph.loop_run.map_or("n/a".into(), |d| format!(
                "{:.0}",
                d.as_secs_f64() * 1e6 / ph.requests.max(1) as f64
            )),
            opt(ph.loop_wait),
        );
    }
    println!("(the loop: the daemon's main thread; CPU-wait: its time runnable but not running)");
    println!();
    println!(
        "{:<26} {:>5} {:>8} {:>8} {:>8}  {:<19}  {:<28} {:>8}  ratio",
        "request latency (ms)",
        "n",
        "median",
        "p99",
        "max",
        "target",
        "baseline (same run)",
        "median"
    );
    row(
        "create",
        &all.create,
        Some(TARGET_P99),
        Some(("raw mkdir", &all.raw_mkdir)),
    );
    row(
        "status",
        &all.status,
        Some(TARGET_P99),
        Some(("status of a missing job", &all.status_missing)),
    );
    row(
        &format!("attach ({SLEEPERS_PER_JOB} pids)"),
        &all.attach,
        None,
        Some(("raw cgroup.procs writes", &all.raw_attach)),
    );
    row(
        "cleanup",
        &all.cleanup,
        None,
        Some(("raw cgroup.kill+wait+rmdir", &all.raw_kill)),
    );
    row(
        &format!("list ({jobs} jobs)"),
        &list,
        None,
        Some(("hello, idle", &hello_idle)),
    );
    for ph in &phases {
        let name = format!("hello during {}", ph.name);
        row(&name, &ph.probe, None, Some(("hello, idle", &hello_idle)));
    }
    let gap = ms(SPARSE_GAP);
    row(
        &format!("attach, 1 pid, {gap:.0} ms apart"),
        &sparse.attach,
        None,
        Some(("raw, 1 pid, as far apart", &sparse.raw_attach)),
    );
    row(
        "hello right behind it",
        &sparse.hello_behind,
        None,
        Some(("hello, idle", &hello_idle)),
    );
    row("status of a missing job", &all.status_missing, None, None);
    row("hello, idle (1 client)", &hello_idle, None, None);
    println!();
    println!(
        "daemon RSS, {jobs} jobs live   VmRSS {:.1} MiB (VmHWM {:.1} MiB, {fds_full} fds); empty {:.1} MiB, {:+.1} KiB/job   target <= {:.0} MiB {}",
        mib(rss_full),
        mib(hwm_full),
        mib(rss_empty),
        (rss_full as f64 - rss_empty as f64) / jobs as f64,
        mib(TARGET_RSS_KIB),
        verdict(rss_full <= TARGET_RSS_KIB)
    );
    println!(
        "daemon idle CPU, {} s        {idle_ticks} ticks utime+stime ({:.0} ms), {} run, {idle_wakeups} context switches   target {TARGET_IDLE_TICKS} ticks {}",
        idle.as_secs(),
        idle_ticks as f64 * tick_ms,
        idle_ns.map_or("n/a ns".into(), |n| format!("{n} ns")),
        verdict(idle_ticks == TARGET_IDLE_TICKS)
    );
    println!(
        "cleanup of {jobs} jobs          {:.2} s with {clients} clients ({:.1} jobs/s); daemon threads at most {cleanup_threads}",
        cleanup_wall.as_secs_f64(),
        jobs as f64 / cleanup_wall.as_secs_f64()
    );
    println!(
        "after cleanup               VmRSS {:.1} MiB (VmHWM {:.1} MiB); 0 job cgroups, 0 sleepers left; {results} results lines; daemon exit on SIGTERM: {}",
        mib(rss_after),
        mib(hwm_after),
        match status {
            Some(st) if libc::WIFEXITED(st) => format!("status {}", libc::WEXITSTATUS(st)),
            Some(st) => format!("signal {}", libc::WTERMSIG(st)),
            None => "killed after the timeout".into(),
        }
    );
    println!(
        "CPU pressure                {} (/proc/pressure/cpu: share of the run some task waited for a CPU; other load on the machine makes tails longer)",
        psi.map_or("n/a".into(), |p| format!("{p:.0}%"))
    );
    if !warnings.is_empty() {
        println!("daemon log: {} warnings or errors, e.g.:", warnings.len());
        for w in warnings.iter().take(5) {
            println!("    {w}");
        }
    }
    if results != jobs + SPARSE_JOBS {
        return Err(format!(
            "results log has {results} lines, want {}",
            jobs + SPARSE_JOBS
        ));
    }
    Ok(())
}

fn main() {
    install_panic_teardown();
    let guard = Teardown;
    let r = run();
    // The teardown, checked: nothing of ours may be left.
    let cgroups = registry().cgroups.clone();
    drop(guard);
    let left: Vec<&PathBuf> = cgroups.iter().filter(|c| c.exists()).collect();
    let code = match (r, left.is_empty()) {
        (Ok(()), true) => 0,
        (r, _) => {
            if let Err(e) = r {
                eprintln!("daemon_load bench: BROKEN MEASUREMENT: {e}");
            }
            if !left.is_empty() {
                eprintln!("daemon_load bench: cgroups left behind: {left:?}");
            }
            1
        }
    };
    std::process::exit(code);
}
