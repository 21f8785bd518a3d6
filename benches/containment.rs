//! Containment benchmark for `cgjob` (a `cargo bench` target, `harness = false`).
//!
//! It drives binaries as processes only; it does not use the cgjob library API.
//!
//! 1. Startup: median and p90 wall time of `/bin/true`, `tini -s -- /bin/true` and
//!    `cgjob run -- /bin/true`, interleaved per iteration.
//! 2. Teardown of N sleeping processes: a raw reference (own cgroup, `cgroup.kill`,
//!    wait for `populated 0` with poll(POLLPRI)) against `cgjob run` being sent SIGTERM
//!    (clock stops when cgjob has exited; the job cgroup must be gone and no process left).
//!
//! Environment: `CGJOB_BENCH_RUNS` (startup runs, default 200, plus 10 warm-up runs),
//! `CGJOB_BENCH_PROCS` (sleepers per teardown run, default 1000),
//! `CGJOB_BENCH_KILL_RUNS` (teardown runs, default 5), `CGJOB_BENCH_BIN` (the cgjob binary;
//! default: the one cargo built, `CARGO_BIN_EXE_cgjob`).
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it is a quick smoke test with
//! small defaults (5 startup runs, 50 processes, 1 teardown run).
//!
//! Exit status: 0 when every measurement was sound (a missed target is reported, not a
//! failure); 1 when a measurement was broken (a cgroup not removed, a process left over,
//! a tool missing or failing).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

use common::{
    cgjob_bin, cgroup2_mount, env_usize, kill_and_remove_cgroup, median, ms, nearest_rank,
    poll_one, read_populated, rmdir_retry, sorted, wait_unpopulated, Result,
};

const WARMUP_RUNS: usize = 10;
const TARGET_RATIO: f64 = 1.20;
/// Generous bound for anything that should take well under a second.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Cleanup registry: guards register what they own so that a panic hook can clean up even
// if the profile aborts on panic (Drop does not run then).
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Registry {
    cgroups: Vec<PathBuf>,
    pids: Vec<i32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    cgroups: Vec::new(),
    pids: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn install_panic_cleanup() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let (pids, cgroups) = match REGISTRY.try_lock() {
            Ok(r) => (r.pids.clone(), r.cgroups.clone()),
            Err(std::sync::TryLockError::Poisoned(e)) => {
                let r = e.into_inner();
                (r.pids.clone(), r.cgroups.clone())
            }
            Err(_) => return,
        };
        // SIGTERM first so that a cgjob supervisor tears its own job down; then the cgroups
        // we own; then SIGKILL whatever child is left, and reap it.
        for &pid in &pids {
            // SAFETY: plain kill(2) of a pid this program spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for cg in cgroups {
            let _ = kill_and_remove_cgroup(&cg);
        }
        for pid in pids {
            terminate_pid(pid, Duration::from_secs(5));
        }
    }));
}

/// Owns a cgroup directory: on drop, kills everything in it and removes it.
struct CgroupGuard {
    path: PathBuf,
}

impl CgroupGuard {
    /// Creates `path` (it must not exist) and takes ownership of it.
    fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        registry().cgroups.push(path.clone());
        Ok(CgroupGuard { path })
    }

    /// Takes ownership of a cgroup someone else (cgjob, on our behalf) creates.
    fn adopt(path: PathBuf) -> Self {
        registry().cgroups.push(path.clone());
        CgroupGuard { path }
    }

    /// Removes the cgroup (retrying EBUSY); the guard then has nothing left to do.
    fn remove(self) -> Result<()> {
        let r = rmdir_retry(&self.path);
        // Drop runs kill_and_remove_cgroup, which is a no-op once the directory is gone.
        drop(self);
        r
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = kill_and_remove_cgroup(&self.path) {
            eprintln!("containment bench: cleanup of {}: {e}", self.path.display());
        }
        registry().cgroups.retain(|p| p != &self.path);
    }
}

/// Owns a spawned child: on drop, SIGKILLs and reaps it if it was not reaped yet.
struct ChildGuard {
    child: Option<Child>,
    pid: i32,
}

impl ChildGuard {
    fn new(child: Child) -> Self {
        let pid = child.id() as i32;
        registry().pids.push(pid);
        ChildGuard {
            child: Some(child),
            pid,
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already reaped")
    }

    /// Reaps the child (blocking) and disarms the guard.
    fn wait(&mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().expect("child already reaped");
        let st = c.wait().map_err(|e| format!("wait {}: {e}", self.pid))?;
        registry().pids.retain(|&p| p != self.pid);
        Ok(st)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            // SIGTERM first: a cgjob supervisor then removes its job (and its cgroup, wherever
            // that is); SIGKILL if it does not exit in time.
            // SAFETY: kill(2) of our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            terminate_pid(self.pid, Duration::from_secs(10));
            drop(c);
            registry().pids.retain(|&p| p != self.pid);
        }
    }
}

/// Waits up to `grace` for our child `pid` to exit, then SIGKILLs it; reaps it.
fn terminate_pid(pid: i32, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        // SAFETY: waitpid(2) on our own child, no status pointer needed.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if r != 0 {
            return; // reaped, or not our child (any more)
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) + waitpid(2) of our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// cgroup helpers
// ---------------------------------------------------------------------------------------

/// Pids in `cg` and all its descendants.
fn subtree_pids(cg: &Path) -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    let mut stack = vec![cg.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        for e in fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(pids)
}

// ---------------------------------------------------------------------------------------
// process helpers
// ---------------------------------------------------------------------------------------

/// (state, starttime) from /proc/PID/stat, or None if the pid is gone.
fn proc_state(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    // starttime is field 22 overall; `rest` starts at field 3.
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Pids (with their start times) of `pids` that are still alive: same process (start time)
/// and not a zombie.
fn still_alive(procs: &[(i32, u64)]) -> Vec<i32> {
    procs
        .iter()
        .filter(
            |&&(pid, start)| matches!(proc_state(pid), Some((st, s)) if s == start && st != 'Z'),
        )
        .map(|&(pid, _)| pid)
        .collect()
}

/// At most 10 pids, for messages.
fn some_pids(pids: &[i32]) -> String {
    let mut s = format!("{:?}", &pids[..pids.len().min(10)]);
    if pids.len() > 10 {
        s.push_str(" ...");
    }
    s
}

fn snapshot(pids: &[i32]) -> Vec<(i32, u64)> {
    pids.iter()
        .filter_map(|&p| proc_state(p).map(|(_, s)| (p, s)))
        .collect()
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with flags 0; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        None
    } else {
        // SAFETY: fd is a fresh file descriptor we own.
        Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Reads from `fd` until a line equal to `want` arrives (or EOF / timeout).
fn wait_for_line(fd: RawFd, want: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if buf.split(|&b| b == b'\n').any(|l| l == want.as_bytes()) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !poll_one(fd, libc::POLLIN, left)? {
            return Err(format!("no {want:?} line within {timeout:?}"));
        }
        // SAFETY: reading into a valid buffer of the given length.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("read: {e}"));
        }
        if n == 0 {
            return Err(format!(
                "EOF before {want:?} (got {:?})",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n as usize]);
    }
}

/// The job script: N background sleepers, then `ready`, then wait.
fn sleeper_script(n: usize) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do sleep 1000 >/dev/null 2>&1 & i=$((i+1)); done; echo ready; wait"
    )
}

// ---------------------------------------------------------------------------------------
// statistics and output
// ---------------------------------------------------------------------------------------

struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
    max: Duration,
}

/// Median, p90, min and max of the samples (there is at least one: every run is measured).
fn stats(samples: &[Duration]) -> Stats {
    let s = sorted(samples).expect("at least one sample");
    Stats {
        median: median(&s),
        p90: nearest_rank(&s, 0.9),
        min: s[0],
        max: s[s.len() - 1],
    }
}

/// "static" or "dynamic": whether an ELF64 executable has a program interpreter (PT_INTERP).
fn linkage(path: &std::path::Path) -> &'static str {
    let Ok(b) = std::fs::read(path) else {
        return "unreadable";
    };
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|x| u64::from_le_bytes(x.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return "not ELF64";
    };
    let has_interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    });
    if has_interp {
        "dynamic"
    } else {
        "static"
    }
}

struct RatioLine {
    name: &'static str,
    ratio: f64,
    target: Option<f64>,
}

// ---------------------------------------------------------------------------------------
// part 1: startup
// ---------------------------------------------------------------------------------------

fn time_run(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let st = cmd
        .status()
        .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let d = t.elapsed();
    if !st.success() {
        return Err(format!("{cmd:?} exited with {st}"));
    }
    Ok(d)
}

fn quiet(program: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

struct StartupResult {
    true_: Stats,
    tini: Stats,
    cgjob: Option<Stats>,
    /// The other containment modes, each beside its own baseline: (name, stats).
    modes: Vec<(&'static str, Stats)>,
}

fn bench_startup(runs: usize, with_cgjob: bool) -> Result<StartupResult> {
    let cgjob = cgjob_bin();
    let mut cmds: Vec<Command> = vec![
        quiet("/bin/true", &[]),
        quiet("tini", &["-s", "--", "/bin/true"]),
    ];
    // The other containment modes (issue 6), measured in the same interleaving: subreaper
    // mode plainly; PID-namespace mode as PID 1 of a fresh namespace, beside `unshare` alone.
    let unshare = ["--pid", "--fork", "--mount", "--mount-proc"];
    let mode_cmds: Vec<(&'static str, Command)> = if with_cgjob {
        let c = cgjob.to_string_lossy().into_owned();
        let in_ns = |tail: &[&str]| quiet("unshare", &[&unshare[..], tail].concat());
        vec![
            (
                "subreaper",
                quiet(
                    &cgjob,
                    &["run", "--containment", "subreaper", "--", "/bin/true"],
                ),
            ),
            ("unshare", in_ns(&["/bin/true"])),
            (
                "pidns",
                in_ns(&[
                    &c,
                    "run",
                    "--containment",
                    "pid-namespace",
                    "--",
                    "/bin/true",
                ]),
            ),
        ]
    } else {
        Vec::new()
    };
    if with_cgjob {
        cmds.push(quiet(&cgjob, &["run", "--", "/bin/true"]));
    }
    let base = cmds.len();
    let mode_names: Vec<&'static str> = mode_cmds.iter().map(|(n, _)| *n).collect();
    cmds.extend(mode_cmds.into_iter().map(|(_, c)| c));
    let mut samples = vec![Vec::with_capacity(runs); cmds.len()];
    for it in 0..WARMUP_RUNS + runs {
        // Interleave, rotating the order each iteration to cancel drift and order effects.
        for k in 0..cmds.len() {
            let j = (it + k) % cmds.len();
            let d = time_run(&mut cmds[j])?;
            if it >= WARMUP_RUNS {
                samples[j].push(d);
            }
        }
    }
    Ok(StartupResult {
        true_: stats(&samples[0]),
        tini: stats(&samples[1]),
        cgjob: with_cgjob.then(|| stats(&samples[2])),
        modes: mode_names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, stats(&samples[base + i])))
            .collect(),
    })
}

fn print_startup(name: &str, s: &Stats) {
    println!(
        "startup  {name:<6} median {:7.3} ms  p90 {:7.3} ms  min {:7.3} ms  max {:7.3} ms",
        ms(s.median),
        ms(s.p90),
        ms(s.min),
        ms(s.max)
    );
}

// ---------------------------------------------------------------------------------------
// part 2: teardown
// ---------------------------------------------------------------------------------------

/// Waits until exactly `want` pids (other than `exclude`) are in the subtree of `cg`.
fn wait_for_count(cg: &Path, want: usize, exclude: Option<i32>) -> Result<Vec<i32>> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let mut pids = subtree_pids(cg).map_err(|e| format!("read {}: {e}", cg.display()))?;
        pids.retain(|&p| Some(p) != exclude);
        if pids.len() == want {
            return Ok(pids);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: {} processes, expected {want}",
                cg.display(),
                pids.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One raw reference run; returns kill → `populated 0`.
fn teardown_raw(mount: &Path, n: usize, run: usize) -> Result<Duration> {
    let cg =
        CgroupGuard::create(mount.join(format!("cgjob-bench-raw-{}-{run}", std::process::id())))?;
    let procs = OpenOptions::new()
        .write(true)
        .open(cg.path.join("cgroup.procs"))
        .map_err(|e| format!("open cgroup.procs: {e}"))?;
    let procs_fd = procs.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(sleeper_script(n))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: the hook only calls write(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildGuard::new(cmd.spawn().map_err(|e| format!("spawn sh: {e}"))?);
    drop(procs);
    let out_fd = child.child().stdout.as_ref().unwrap().as_raw_fd();
    wait_for_line(out_fd, "ready", SETUP_TIMEOUT)?;
    let pids = wait_for_count(&cg.path, n + 1, None)?;
    let snap = snapshot(&pids);

    let mut events = File::open(cg.path.join("cgroup.events"))
        .map_err(|e| format!("open cgroup.events: {e}"))?;
    read_populated(&mut events).map_err(|e| format!("read cgroup.events: {e}"))?;
    let mut kill = OpenOptions::new()
        .write(true)
        .open(cg.path.join("cgroup.kill"))
        .map_err(|e| format!("open cgroup.kill: {e}"))?;

    let t = Instant::now();
    kill.write_all(b"1")
        .map_err(|e| format!("write cgroup.kill: {e}"))?;
    wait_unpopulated(&mut events, TEARDOWN_TIMEOUT)?;
    let d = t.elapsed();

    child.wait()?;
    drop(events);
    cg.remove()?;
    let left = still_alive(&snap);
    if !left.is_empty() {
        return Err(format!(
            "raw: {} processes still alive: {}",
            left.len(),
            some_pids(&left)
        ));
    }
    Ok(d)
}

/// One cgjob run; returns SIGTERM → cgjob exited, cgjob's exit status and its stderr
/// (which is kept out of the report unless something goes wrong).
fn teardown_cgjob(mount: &Path, n: usize, run: usize) -> Result<(Duration, ExitStatus, String)> {
    let mut err_file = tempfile::tempfile().map_err(|e| format!("tempfile: {e}"))?;
    let err_out = err_file
        .try_clone()
        .map_err(|e| format!("dup tempfile: {e}"))?;
    let r = teardown_cgjob_inner(mount, n, run, err_out);
    // By now cgjob has exited (or its guard has stopped it).
    let mut stderr = String::new();
    let _ = err_file.seek(SeekFrom::Start(0));
    let _ = err_file.read_to_string(&mut stderr);
    let stderr = stderr.trim_end().to_string();
    match r {
        Ok((d, st)) => Ok((d, st, stderr)),
        Err(e) if stderr.is_empty() => Err(e),
        Err(e) => Err(format!("{e}\n--- cgjob stderr ---\n{stderr}")),
    }
}

fn teardown_cgjob_inner(
    mount: &Path,
    n: usize,
    run: usize,
    stderr: File,
) -> Result<(Duration, ExitStatus)> {
    let name = format!("bench-{}-{run}", std::process::id());
    let cg_path = mount.join("cgjob").join(&name);
    if cg_path.exists() {
        return Err(format!("{} exists before the run", cg_path.display()));
    }
    let mut cmd = Command::new(cgjob_bin());
    cmd.args(["run", "--name", &name, "--", "/bin/sh", "-c"])
        .arg(sleeper_script(n))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    let mut child = ChildGuard::new(cmd.spawn().map_err(|e| format!("spawn cgjob: {e}"))?);
    // Declared after `child`, so it drops first: the job is killed before cgjob is.
    let cg = CgroupGuard::adopt(cg_path.clone());
    let cgjob_pid = child.pid;
    let out_fd = child.child().stdout.as_ref().unwrap().as_raw_fd();
    wait_for_line(out_fd, "ready", SETUP_TIMEOUT)?;
    if !cg_path.is_dir() {
        return Err(format!(
            "job printed ready but {} does not exist",
            cg_path.display()
        ));
    }
    let pids = wait_for_count(&cg_path, n + 1, Some(cgjob_pid))?;
    let snap = snapshot(&pids);
    let pidfd = pidfd_open(cgjob_pid);

    let t = Instant::now();
    // SAFETY: kill(2) of our own unreaped child.
    if unsafe { libc::kill(cgjob_pid, libc::SIGTERM) } != 0 {
        return Err(format!("kill cgjob: {}", io::Error::last_os_error()));
    }
    if let Some(fd) = &pidfd {
        if !poll_one(fd.as_raw_fd(), libc::POLLIN, TEARDOWN_TIMEOUT)? {
            return Err(format!(
                "cgjob did not exit within {TEARDOWN_TIMEOUT:?} of SIGTERM"
            ));
        }
    }
    let status = child.wait()?;
    let d = t.elapsed();

    let mut problems = Vec::new();
    if cg_path.exists() {
        problems.push(format!("job cgroup {} still exists", cg_path.display()));
    }
    let left = still_alive(&snap);
    if !left.is_empty() {
        problems.push(format!(
            "{} job processes still alive: {}",
            left.len(),
            some_pids(&left)
        ));
    }
    drop(cg); // removes the cgroup if cgjob left it behind
    if !problems.is_empty() {
        return Err(format!("cgjob: {}", problems.join("; ")));
    }
    Ok((d, status))
}

fn print_teardown(name: &str, n: usize, samples: &[Duration]) {
    let s = stats(samples);
    let all: Vec<String> = samples.iter().map(|d| format!("{:.1}", ms(*d))).collect();
    println!(
        "teardown {name:<6} {n} procs  median {:8.2} ms  min {:8.2} ms  max {:8.2} ms  runs [{}]",
        ms(s.median),
        ms(s.min),
        ms(s.max),
        all.join(", ")
    );
}

// ---------------------------------------------------------------------------------------

fn preflight_cgjob() -> Result<()> {
    let bin = cgjob_bin();
    // A stub that ignores its arguments must not pass: the command's status has to come back.
    let out = Command::new(&bin)
        .args(["run", "--", "/bin/sh", "-c", "exit 3"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    if out.status.code() != Some(3) {
        return Err(format!(
            "`{} run -- /bin/sh -c 'exit 3'` exited with {} (want 3); stderr: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn preflight_tini() -> Result<()> {
    match Command::new("tini")
        .args(["-s", "--", "/bin/true"])
        .stdin(Stdio::null())
        .status()
    {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(format!("`tini -s -- /bin/true` exited with {st}")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err("tini not found in PATH (apt-get install -y tini)".into())
        }
        Err(e) => Err(format!("spawn tini: {e}")),
    }
}

fn run() -> Result<bool> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` / `--benches` runs this
    // binary without it: then it is a quick smoke test of the same code paths.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (d_runs, d_procs, d_kill) = if bench_mode {
        (200, 1000, 5)
    } else {
        (5, 50, 1)
    };
    let runs = env_usize("CGJOB_BENCH_RUNS", d_runs, usize::MAX)?;
    let nprocs = env_usize("CGJOB_BENCH_PROCS", d_procs, usize::MAX)?;
    let kill_runs = env_usize("CGJOB_BENCH_KILL_RUNS", d_kill, usize::MAX)?;
    let mount = cgroup2_mount()?;

    if let Err(e) = preflight_tini() {
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! ERROR: {e}");
        eprintln!("!!! the startup comparison needs tini; aborting the benchmark");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
        return Err("tini missing or broken".into());
    }
    let cgjob_ok = match preflight_cgjob() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("!!! ERROR: cgjob is not functional, its measurements are skipped: {e}");
            false
        }
    };

    println!(
        "containment benchmark{}",
        if bench_mode {
            ""
        } else {
            " (smoke-test mode: run via `cargo bench` for real numbers)"
        }
    );
    println!(
        "  cgjob      {} ({})",
        cgjob_bin().display(),
        linkage(&cgjob_bin())
    );
    println!("  cgroup2    {}", mount.display());
    println!(
        "  cpus       {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  startup    {runs} runs (+{WARMUP_RUNS} warm-up), interleaved");
    println!("  teardown   {nprocs} sleeping processes, {kill_runs} runs each");
    println!();

    let st = bench_startup(runs, cgjob_ok)?;
    print_startup("true", &st.true_);
    print_startup("tini", &st.tini);
    if let Some(c) = &st.cgjob {
        print_startup("cgjob", c);
    }
    for (name, m) in &st.modes {
        print_startup(name, m);
    }
    let median = |n: &str| {
        st.modes
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, s)| s.median)
    };
    if let (Some(sr), Some(us), Some(pn)) =
        (median("subreaper"), median("unshare"), median("pidns"))
    {
        println!(
            "startup  modes: subreaper/tini {:.2}; pid-namespace/unshare {:.2} (cgroup-v2/tini above)",
            sr.as_secs_f64() / st.tini.median.as_secs_f64(),
            pn.as_secs_f64() / us.as_secs_f64()
        );
    }
    println!();

    // Teardown: alternate raw and cgjob runs.
    let mut raw = Vec::new();
    let mut cg = Vec::new();
    for i in 0..kill_runs {
        raw.push(teardown_raw(&mount, nprocs, i)?);
        if cgjob_ok {
            let (d, status, stderr) = teardown_cgjob(&mount, nprocs, i)?;
            if i == 0 {
                println!("teardown cgjob run 0: {status} after SIGTERM; its stderr:");
                for line in stderr.lines().take(5) {
                    println!("    {line}");
                }
            }
            cg.push(d);
        }
    }
    print_teardown("raw", nprocs, &raw);
    if cgjob_ok {
        print_teardown("cgjob", nprocs, &cg);
    }

    let mut ratios = vec![];
    if let Some(c) = &st.cgjob {
        ratios.push(RatioLine {
            name: "cgjob/tini (startup)",
            ratio: ms(c.median) / ms(st.tini.median),
            target: Some(TARGET_RATIO),
        });
        ratios.push(RatioLine {
            name: "cgjob/true (startup)",
            ratio: ms(c.median) / ms(st.true_.median),
            target: None,
        });
    }
    ratios.push(RatioLine {
        name: "tini/true (startup)",
        ratio: ms(st.tini.median) / ms(st.true_.median),
        target: None,
    });
    if cgjob_ok {
        ratios.push(RatioLine {
            name: "cgjob/raw (teardown)",
            ratio: ms(stats(&cg).median) / ms(stats(&raw).median),
            target: Some(TARGET_RATIO),
        });
    }

    println!();
    println!("==================== summary ====================");
    println!(
        "startup  median  true {:.3} ms  tini {:.3} ms  cgjob {}",
        ms(st.true_.median),
        ms(st.tini.median),
        st.cgjob
            .as_ref()
            .map_or("n/a".to_string(), |c| format!("{:.3} ms", ms(c.median)))
    );
    println!(
        "teardown median  raw {:.2} ms  cgjob {}  ({nprocs} procs)",
        ms(stats(&raw).median),
        if cgjob_ok {
            format!("{:.2} ms", ms(stats(&cg).median))
        } else {
            "n/a".into()
        }
    );
    for r in &ratios {
        match r.target {
            Some(t) => println!(
                "RATIO {} = {:.2} (target <= {t:.2}) {}",
                r.name,
                r.ratio,
                if r.ratio <= t { "PASS" } else { "MISS" }
            ),
            None => println!("RATIO {} = {:.2}", r.name, r.ratio),
        }
    }
    if !cgjob_ok {
        println!("RATIO cgjob/tini (startup) = n/a  NOT MEASURED (cgjob not functional)");
        println!("RATIO cgjob/raw (teardown) = n/a  NOT MEASURED (cgjob not functional)");
    }
    println!("=================================================");
    Ok(cgjob_ok)
}

fn main() {
    install_panic_cleanup();
    let code = match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("containment bench: BROKEN MEASUREMENT: {e}");
            1
        }
    };
    std::process::exit(code);
}
