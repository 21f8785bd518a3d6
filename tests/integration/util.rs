//! Test support: every test owns a uniquely named parent cgroup and a marker that all of its
//! job's processes carry in their environment (as a scheduler's job id). The guard finds
//! survivors by that marker, kills them by pid, empties and removes every cgroup it made —
//! also when the test fails.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const MARKER_VAR: &str = "CGJOB_TEST_MARKER";

/// The cgroup2 mount, found as cgjob finds it. A test that needs it and does not find it
/// fails: a containment test that passes without a kernel to test proves nothing.
pub fn cgroup2_root() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect();
    mounts.sort_by_key(|m| m != Path::new("/sys/fs/cgroup"));
    let m = mounts.into_iter().next().unwrap_or_else(|| {
        panic!(
            "no cgroup2 mount: these tests need a writable cgroup2 hierarchy (CI={:?})",
            std::env::var("CI").ok()
        )
    });
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the real-kernel tests run as root"
    );
    m
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's world: its parent cgroup, marker, scratch directory.
pub struct TestJob {
    pub name: String,
    pub marker: String,
    pub root: PathBuf,
    pub parent: PathBuf,
    pub dir: tempfile::TempDir,
    extra_cgroups: Vec<PathBuf>,
    v1_cgroups: Vec<PathBuf>,
}

impl TestJob {
    pub fn new(test: &str) -> TestJob {
        let root = cgroup2_root();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("{test}-{}-{n}", std::process::id());
        let parent = root.join("cgjob-test").join(&name);
        std::fs::create_dir_all(&parent).expect("create the test's parent cgroup");
        let marker = format!("cgjobtest-{name}-{}", nanos());
        TestJob {
            name,
            marker,
            root,
            parent,
            dir: tempfile::tempdir().unwrap(),
            extra_cgroups: Vec::new(),
            v1_cgroups: Vec::new(),
        }
    }

    /// `cgjob run --parent <ours> --name job <args…>` with the marker in the environment.
    pub fn run_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cgjob"));
        c.arg("run")
            .arg("--parent")
            .arg(&self.parent)
            .arg("--name")
            .arg("job");
        c.args(args);
        c.env(MARKER_VAR, &self.marker);
        c.env("TMPD", self.dir.path());
        c.stdin(Stdio::null());
        c
    }

    /// A bare cgjob command with the marker set.
    pub fn cgjob(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cgjob"));
        c.env(MARKER_VAR, &self.marker);
        c.env("TMPD", self.dir.path());
        c.stdin(Stdio::null());
        c
    }

    pub fn job_cgroup(&self) -> PathBuf {
        self.parent.join("job")
    }

    /// A cgroup of the test's own outside cgjob's parent (for escape tests); removed at the end.
    pub fn outside_cgroup(&mut self, name: &str) -> PathBuf {
        let p = self
            .root
            .join("cgjob-test")
            .join(format!("{}-{name}", self.name));
        std::fs::create_dir_all(&p).unwrap();
        self.extra_cgroups.push(p.clone());
        p
    }

    /// `cgjob job <sub> --parent <ours> <args…>` with the marker set.
    pub fn job_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.cgjob();
        c.arg("job")
            .arg(args[0])
            .arg("--parent")
            .arg(&self.parent)
            .args(&args[1..]);
        c
    }

    /// A cgroup of the v1 freezer for this test, removed at the end. A task it freezes ignores
    /// SIGKILL (state D) until thawed: a real unkillable process, made on demand. Needs a
    /// hybrid host; fails where there is none.
    pub fn v1_freezer(&mut self) -> PathBuf {
        let v1 = Path::new("/sys/fs/cgroup/freezer");
        assert!(
            v1.join("cgroup.procs").exists(),
            "this test needs the v1 freezer (hybrid host)"
        );
        let frz = v1.join(format!("cgjob-test-{}", self.name));
        std::fs::create_dir_all(&frz).unwrap();
        self.on_drop_remove(frz.clone());
        frz
    }

    /// A cgroup v1 directory the test made (a safety net): emptied and removed at the end.
    pub fn on_drop_remove(&mut self, v1: PathBuf) {
        self.v1_cgroups.push(v1);
    }

    /// For limit tests: enable in the test's own `cgjob-test` cgroup whatever v2 controllers it
    /// has available (pure v2 hosts; nothing on hybrid ones), so that the job parent has them
    /// in `cgroup.controllers` — and register, for removal at the end, every v1 cgroup cgjob
    /// would make for the job on a hybrid host (`<v1 mount>/cgjob-test/<test>/job`, deepest
    /// first). Returns those v1 job cgroups.
    pub fn prepare_limits(&mut self) -> Vec<PathBuf> {
        self.prepare_limits_for(&["job"])
    }

    /// [`TestJob::prepare_limits`] for job cgroups named `jobs` (`job-<id>` for scheduler
    /// jobs).
    pub fn prepare_limits_for(&mut self, jobs: &[&str]) -> Vec<PathBuf> {
        let top = self.root.join("cgjob-test");
        if let Ok(avail) = std::fs::read_to_string(top.join("cgroup.controllers")) {
            for c in avail.split_whitespace() {
                let _ = std::fs::write(top.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
        let rel = self.parent.strip_prefix(&self.root).unwrap().to_owned();
        let mut out = Vec::new();
        for m in v1_mounts(&["memory", "pids", "cpu", "cpuset"]) {
            for name in jobs {
                let job = m.join(&rel).join(name);
                self.on_drop_remove(job.clone());
                out.push(job);
            }
            self.on_drop_remove(m.join(&rel));
            self.on_drop_remove(m.join("cgjob-test"));
        }
        out
    }

    /// Write a bash script into the scratch directory; returns its path.
    pub fn script(&self, name: &str, body: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, format!("set -u\n{body}\n")).unwrap();
        p.to_string_lossy().into_owned()
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// Pids the job wrote, one per line, to a file in the scratch directory.
    pub fn pids_in(&self, f: &str) -> Vec<i32> {
        std::fs::read_to_string(self.path(f))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Live (non-zombie) processes carrying this test's marker.
    pub fn survivors(&self) -> Vec<String> {
        survivors_with(&self.marker)
    }

    /// The invariant of every containment test: nothing of the job left, the job cgroup gone.
    pub fn assert_clean(&self) {
        let s = self.survivors();
        assert!(s.is_empty(), "processes of the job survived: {s:#?}");
        assert!(
            !self.job_cgroup().exists(),
            "job cgroup {} was not removed",
            self.job_cgroup().display()
        );
    }

    /// Wait (event-free but bounded) until `f` holds; for observing the system from outside.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestJob {
    fn drop(&mut self) {
        // Kill what carries our marker, by pid, through a pidfd.
        for _ in 0..50 {
            let pids = marker_pids(&self.marker);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                kill_pid(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for cg in std::iter::once(self.parent.clone()).chain(self.extra_cgroups.clone()) {
            remove_cgroup_tree(&cg);
        }
        for v1 in &self.v1_cgroups {
            for _ in 0..100 {
                let pids = procs(v1);
                if pids.is_empty() {
                    break;
                }
                pids.into_iter().for_each(kill_pid);
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir(v1);
        }
        let _ = std::fs::remove_dir(self.root.join("cgjob-test"));
    }
}

/// A v1 pids cgroup with `max`, as a fork-bomb safety net; `None` where v1 pids is not mounted.
pub fn pids_net(t: &mut TestJob, max: u32) -> Option<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    if !v1.join("cgroup.procs").exists() {
        return None;
    }
    let p = v1.join(format!("cgjob-test-{}", t.name));
    std::fs::create_dir_all(&p).ok()?;
    std::fs::write(p.join("pids.max"), max.to_string()).ok()?;
    t.on_drop_remove(p.clone());
    Some(p)
}

/// Make `cmd` join cgroup `cg` (v1 or v2) between fork and exec; nothing when `cg` is `None`.
pub fn join_before_exec(cmd: &mut Command, cg: Option<&Path>) {
    use std::os::unix::process::CommandExt;
    let Some(cg) = cg else { return };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .unwrap();
    // SAFETY: only a write(2) on an already open fd between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use std::io::Write;
            (&f).write_all(b"0")?;
            Ok(())
        });
    }
}

/// Give `cmd` the descriptor limit (`RLIMIT_NOFILE`) `soft`:`hard`, set between fork and exec.
pub fn limit_nofile_before_exec(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit between fork and exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A job script body that leaves behind a process that moves itself into the v1 freezer
/// cgroup `frz`, writes its pid to `$TMPD/pids` and becomes `sleep SECS`; frozen there (see
/// [`freeze_once_written`]), it survives every SIGKILL until thawed.
pub fn joins_freezer_body(frz: &Path, secs: u32) -> String {
    format!(
        "bash -c 'echo $BASHPID > {}/cgroup.procs; echo $BASHPID > $TMPD/pids; exec sleep {secs} </dev/null >/dev/null 2>&1' & sleep 0.3; exit 0",
        frz.display()
    )
}

/// On a thread: freeze the v1 freezer cgroup `frz` as soon as file `ready` exists (the job
/// writes it once its process has joined `frz`), or after 10 s without it.
pub fn freeze_once_written(frz: &Path, ready: PathBuf) -> std::thread::JoinHandle<()> {
    let frz = frz.to_owned();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        while !ready.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::write(frz.join("freezer.state"), "FROZEN").unwrap();
    })
}

/// The guardian of the `cgjob run` supervisor `sup`: its child that is cgjob itself.
pub fn guardian_of(sup: &Child) -> i32 {
    std::fs::read_to_string(format!("/proc/{}/task/{0}/children", sup.id()))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cgjob")
        })
        .expect("the guardian")
}

/// SIGKILL the guardian of supervisor `sup` and wait (bounded by `limit`) until it is gone
/// (dead or a zombie). `sup` itself is left running.
pub fn kill_guardian(sup: &Child, limit: Duration) {
    let guardian = guardian_of(sup);
    // SAFETY: kill of a process our own cgjob started, by pid.
    unsafe { libc::kill(guardian, libc::SIGKILL) };
    let end = Instant::now() + limit;
    while state_of(guardian).is_some_and(|s| s != 'Z') {
        assert!(
            Instant::now() < end,
            "timed out waiting for the guardian {guardian} to die"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points of the cgroup v1 hierarchies holding any of `controllers`.
pub fn v1_mounts(controllers: &[&str]) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            if post.next()? != "cgroup" {
                return None;
            }
            let opts = post.nth(1)?;
            opts.split(',')
                .any(|o| controllers.contains(&o))
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn kill_pid(pid: i32) {
    // SAFETY: pidfd syscalls with integer arguments; the fd is closed right after.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd >= 0 {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<u8>(),
                0,
            );
            libc::close(fd as i32);
        }
    }
}

/// Kill every process in a cgroup subtree made by a test, wait for it to empty, remove it.
pub fn remove_cgroup_tree(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let populated = std::fs::read_to_string(cg.join("cgroup.events"))
            .map(|s| s.contains("populated 1"))
            .unwrap_or(false);
        if !populated {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut dirs = vec![cg.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn marker_pids(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = format!("{MARKER_VAR}={marker}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Live processes with `marker` in their environment, described.
pub fn survivors_with(marker: &str) -> Vec<String> {
    marker_pids(marker)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            if state == 'Z' {
                return None;
            }
            // cgjob itself and its guardian carry the marker too while they run.
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            Some(format!("pid {pid} state {state}: {cmd}"))
        })
        .collect()
}

/// State letter of a pid, if it exists.
pub fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Pids that exist and are zombies whose parent is PID 1 (a reaping failure).
pub fn orphaned_zombies(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .is_some_and(|s| {
                    let rest = s
                        .rsplit_once(") ")
                        .map(|x| x.1.to_owned())
                        .unwrap_or_default();
                    let mut it = rest.split_whitespace();
                    it.next() == Some("Z") && it.next() == Some("1")
                })
        })
        .collect()
}

/// Run to completion with a hard time bound; a hang is a failure, and the hung cgjob is killed.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn cgjob");
    wait_bounded(&mut child, limit)
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Output {
    let end = Instant::now() + limit;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe; the readers
    // are waited for with the same bound (a process that outlives cgjob holding its stdout
    // would otherwise hang the test instead of failing it).
    let reader = |p: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut s) = p {
                let _ = s.read_to_end(&mut v);
            }
            let _ = tx.send(v);
        });
        rx
    };
    let r1 = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let r2 = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cgjob did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let left = end
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let stdout = r1
        .recv_timeout(left)
        .expect("something still holds cgjob's stdout open after it exited");
    let stderr = r2
        .recv_timeout(left)
        .expect("something still holds cgjob's stderr open after it exited");
    Output {
        status,
        stdout,
        stderr,
    }
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON record a `--json` run printed last on stderr.
pub fn record_of(o: &Output) -> serde_json::Value {
    let err = stderr_of(o);
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON record on stderr:\n{err}"));
    serde_json::from_str(line).expect("valid JSON record")
}

/// Leftover command lines from a record, for assertions.
pub fn leftover_cmds(rec: &serde_json::Value) -> Vec<String> {
    rec["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["cmdline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Leftover command names (`comm`) from a record.
pub fn leftover_comms(rec: &serde_json::Value) -> Vec<String> {
    rec["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["comm"].as_str().unwrap().to_owned())
        .collect()
}

/// How each leftover of a record ended (`ended_by`).
pub fn leftover_ended_by(rec: &serde_json::Value) -> Vec<String> {
    rec["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ended_by"].as_str().unwrap().to_owned())
        .collect()
}

pub fn code(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

/// Pids read from cgroup.procs (for checks from outside).
pub fn procs(cg: &Path) -> HashSet<i32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A pid-hopper (forks a copy of itself and exits, forever, ignoring SIGTERM) and a shell that
/// forks without pause, as a job script body: a killer that lists pids and signals them one by
/// one keeps missing the newest. Few are alive at any moment, so it is bounded without a limit.
pub const CHASERS: &str = r#"
python3 -c '
import os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    if os.fork() != 0:
        os._exit(0)
' &
bash -c 'trap "" TERM; while :; do (trap "" TERM; sleep 0.01) & wait; done' &
sleep 0.5
exit 0
"#;

/// Put an owner record (`attr`: `trusted.cgjob.job` or `user.cgjob.job`) on a cgroup, as
/// cgjob would.
pub fn set_owner_record(cg: &Path, attr: &std::ffi::CStr, json: &str) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(cg.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            attr.as_ptr(),
            json.as_ptr().cast(),
            json.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// Whether cgroup `cg` has cgjob's owner record (as root: `trusted.cgjob.job`).
pub fn has_owner_record(cg: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(cg.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings; a zero-size query of the value's length.
    unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.cgjob.job".as_ptr(),
            std::ptr::null_mut(),
            0,
        ) > 0
    }
}
