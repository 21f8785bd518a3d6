//! The daemon's one loop: `epoll_wait` with no timeout over the listening socket, every client
//! connection, every job's `cgroup.events` (EPOLLPRI: the kernel's populated/empty
//! notification), a signalfd (SIGTERM, SIGINT) and a wake-up socket for cleanup workers. Idle,
//! it blocks in the kernel and uses no CPU.
//!
//! A cleanup waits out its grace period and kill passes (seconds), so it runs on a worker
//! thread of its own, and its reply is sent when it is done; the loop keeps serving meanwhile.
//! So does a `create` that finds processes of an earlier job of the same id to kill.
//!
//! Also in the loop: a timerfd armed for the next job time limit to pass (the job is then
//! cleaned up: SIGTERM, its grace, kill); a pidfd per `cgjob run` supervisor under the parent
//! (when one dies and its guardian did not finish, the job is emptied and removed as `gc`
//! would, and what was in it reported); and, when policing is on, a timerfd for the next
//! sweep of the node for processes outside every job.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::{json, Value};

use super::auth::{self, Peer};
use super::metrics::{Metrics, MetricsFile};
use super::police::{self, Offender, Policy};
use super::protocol::{self, Request, MAX_LINE};
use super::results::ResultsLog;
use super::timer::Timer;
use crate::cgroup::{kill, Cgroup, EventsFile};
use crate::job::batch::{self, JobId};
use crate::job::cleanup::{self, Cleaned, CleanupSpec, CreateSpec};
use crate::job::gc;
use crate::job::leftovers::{EndedBy, Tracker};
use crate::job::meta::{self, JobMeta, TimeLimit};
use crate::process::pidfd::PidFd;
use crate::process::procinfo;

/// Settings of the daemon, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub parent: PathBuf,
    pub results: ResultsLog,
    pub metrics: Option<MetricsFile>,
    /// Node policing, when on.
    pub police: Option<Policy>,
    /// Most connections one user (other than root) may hold open at once.
    pub max_clients_per_user: usize,
    /// Most jobs a user other than root may create for themselves.
    pub max_jobs_per_user: usize,
    /// A scheduler's job empty this long is removed (`None`: never).
    pub remove_empty_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another daemon answers on {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Gc(#[from] gc::GcError),
    #[error(transparent)]
    Fs(#[from] crate::cgroup::CgroupFsError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> DaemonError {
    move |source| DaemonError::Sys { what, source }
}

const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const WAKE: u64 = 2;
const PARENT_DIR: u64 = 3;
const DEADLINE: u64 = 4;
const POLICE: u64 = 5;
/// Client tokens are `CLIENT + n`, `cgjob run` supervisors' `RUN + n`, job tokens `JOB + n`.
const CLIENT: u64 = 1 << 32;
const RUN: u64 = 1 << 40;
const JOB: u64 = 1 << 48;

/// A subscriber that lets this much output pile up unread is dropped.
const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// A client's requests are served one at a time, in order: while one is being answered on a
/// worker (cleanup, attach, list, a create that kills), its next lines wait, up to
/// [`MAX_INPUT`] bytes, beyond which the client is dropped. (More at once: more connections.)
const MAX_IN_FLIGHT: usize = 1;
const MAX_INPUT: usize = 1024 * 1024;

/// The metrics file is rewritten at most this often (a scrape reads it every 15 s or so).
/// Rewritten after every request, it took about a third of the loop's time under load (a
/// file created, then renamed over the old one, which on ext4 also starts its writeback) and
/// lengthened every reply: `cargo bench --bench daemon_load`.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

struct Client {
    stream: UnixStream,
    peer: Peer,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Registered for EPOLLOUT (output is waiting).
    writing: bool,
    subscribed: bool,
    /// Inside an oversized line: input is dropped up to the next newline.
    discarding: bool,
    /// The client shut down its sending side; it is dropped once it has every reply.
    eof: bool,
    /// A slot per request not yet answered, in request order: replies go out in that order,
    /// also when some are made on worker threads (cleanup, attach, list, a create that kills).
    slots: VecDeque<Option<String>>,
    /// The sequence number of `slots[0]`.
    first_seq: u64,
}

/// Where a reply goes: a client's token and the sequence number of its request.
type ReplyTo = (u64, u64);

/// Why a job is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A client asked (the epilog).
    Request,
    /// Its time limit passed.
    Timeout,
    /// It has been empty for `remove_empty_after` (an epilog that never came).
    Empty,
}

impl Why {
    /// The `kind` of its record in the results log.
    fn kind(self) -> &'static str {
        match self {
            Why::Request => "cleanup",
            Why::Timeout => "timeout",
            Why::Empty => "empty",
        }
    }
}

struct Watched {
    uid: Option<u32>,
    events: EventsFile,
    populated: bool,
    token: u64,
    cleaning: bool,
    /// When its time limit passes, and the grace between SIGTERM and the kill then.
    deadline: Option<(Instant, Duration)>,
    /// Since when it holds no process.
    empty_since: Option<Instant>,
}

/// A `cgjob run` job under the parent, watched through its supervisor's pidfd.
struct RunWatch {
    name: String,
    supervisor: PidFd,
}

/// Work finished on a worker thread.
enum Done {
    Cleanup {
        /// Who asked; `None` for a time limit the daemon enforced.
        client: Option<ReplyTo>,
        id: JobId,
        uid: Option<u32>,
        why: Why,
        result: Result<Cleaned, String>,
    },
    /// A `create` that found processes of an earlier job of the same id.
    Created {
        client: ReplyTo,
        id: JobId,
        uid: u32,
        timeout: Option<TimeLimit>,
        result: Result<cleanup::Created, String>,
    },
    /// A `cgjob run` job whose supervisor died, collected as `gc` would.
    Stale {
        name: String,
        result: Result<Option<gc::StaleJob>, String>,
    },
    Police(Vec<Offender>),
    /// A request answered on a worker (attach, list).
    Reply {
        to: ReplyTo,
        result: Result<Value, String>,
    },
}

pub struct Daemon {
    cfg: Config,
    epoll: Epoll,
    listener: UnixListener,
    signals: SignalFd,
    /// inotify on the parent cgroup: job cgroups made or removed without the daemon
    /// (`cgjob job create`/`cleanup` run directly, gc) are adopted or dropped.
    parent_dir: OwnedFd,
    wake_rx: UnixStream,
    /// Shared by the workers (no descriptor per worker: a daemon out of descriptors still
    /// answers).
    wake_tx: std::sync::Arc<UnixStream>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    clients: HashMap<u64, Client>,
    jobs: HashMap<String, Watched>,
    job_tokens: HashMap<u64, String>,
    /// `cgjob run` jobs by supervisor token, and their names.
    runs: HashMap<u64, RunWatch>,
    run_names: HashMap<String, u64>,
    /// Armed for the earliest job time limit.
    deadline_timer: Timer,
    deadlines_changed: bool,
    /// Armed for the next policing sweep; one sweep at a time.
    police_timer: Timer,
    policing: bool,
    next: u64,
    /// Not accepting for want of descriptors (see `accept`).
    paused: bool,
    metrics: Metrics,
    /// The metrics changed since they were last written.
    dirty: bool,
    /// When the metrics file was last written.
    metrics_written: Option<Instant>,
}

/// Bind the socket: its directory made 0755, the socket 0666 (anyone may connect; what they
/// may do is decided per request from their credentials). A socket file nobody answers on is
/// a dead daemon's and is replaced; one that answers is an error.
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io("chmod", dir))?;
        }
    }
    if UnixStream::connect(path).is_ok() {
        return Err(DaemonError::AlreadyRunning(path.to_owned()));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove the old socket", path)(e))
        }
        _ => {}
    }
    let l = UnixListener::bind(path).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io("chmod", path))?;
    l.set_nonblocking(true).map_err(io("configure", path))?;
    Ok(l)
}

impl Daemon {
    /// Set up: signals blocked (before any thread starts, so that every thread inherits the
    /// mask and only the signalfd sees them), stale jobs removed, the others adopted, the
    /// socket bound.
    pub fn start(cfg: Config) -> Result<Daemon, DaemonError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(sys("block signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys("signalfd"))?;
        if !cfg.parent.is_dir() {
            Cgroup::ensure(&cfg.parent)?;
        }
        // Bound first: a second daemon stops here, before it touches any job.
        let listener = bind(&cfg.socket)?;
        // Stale jobs first, by gc's rules (a dead `cgjob run` supervisor; an empty scheduler
        // job older than an hour): what a crashed daemon could not finish.
        let mut metrics = Metrics::default();
        for s in gc::sweep(&cfg.parent, false)? {
            if s.outcome == gc::GcOutcome::Removed {
                metrics.stale_jobs_removed += 1;
            }
            tracing::info!(cgroup = %s.cgroup.display(), "{}", s.describe());
            let rec = json!({"time": now(), "kind": "stale", "result": s});
            cfg.results.append_or_warn(&rec);
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
        let (wake_rx, wake_tx) = UnixStream::pair().map_err(io("socketpair", Path::new("-")))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(io("configure", Path::new("-")))?;
        let (done_tx, done_rx) = channel();
        let parent_dir = watch_dir(&cfg.parent).map_err(io("watch", &cfg.parent))?;
        let timer = || Timer::new().map_err(io("create a timer", Path::new("-")));
        let (deadline_timer, police_timer) = (timer()?, timer()?);
        let mut d = Daemon {
            cfg,
            epoll,
            listener,
            signals,
            parent_dir,
            wake_rx,
            wake_tx: std::sync::Arc::new(wake_tx),
            done_tx,
            done_rx,
            clients: HashMap::new(),
            jobs: HashMap::new(),
            job_tokens: HashMap::new(),
            runs: HashMap::new(),
            run_names: HashMap::new(),
            deadline_timer,
            deadlines_changed: false,
            police_timer,
            policing: false,
            next: 0,
            paused: false,
            metrics,
            dirty: true,
            metrics_written: None,
        };
        let ins = EpollFlags::EPOLLIN;
        d.epoll
            .add(d.listener.as_fd(), EpollEvent::new(ins, LISTENER))
            .map_err(sys("epoll_ctl"))?;
        d.epoll
            .add(d.signals.as_fd(), EpollEvent::new(ins, SIGNALS))
            .map_err(sys("epoll_ctl"))?;
        d.epoll
            .add(d.wake_rx.as_fd(), EpollEvent::new(ins, WAKE))
            .map_err(sys("epoll_ctl"))?;
        d.epoll
            .add(d.parent_dir.as_fd(), EpollEvent::new(ins, PARENT_DIR))
            .map_err(sys("epoll_ctl"))?;
        d.epoll
            .add(d.deadline_timer.as_fd(), EpollEvent::new(ins, DEADLINE))
            .map_err(sys("epoll_ctl"))?;
        d.epoll
            .add(d.police_timer.as_fd(), EpollEvent::new(ins, POLICE))
            .map_err(sys("epoll_ctl"))?;
        if let Some(p) = &d.cfg.police {
            tracing::info!(action = ?p.action, uids = ?p.uids, interval = ?p.interval, "node policing on");
            // The first sweep at once.
            d.police_timer
                .set(Some(Instant::now()))
                .map_err(io("set a timer", Path::new("-")))?;
        }
        // After the directory watch is set: a job made in between is seen twice, not never.
        d.adopt();
        d.write_metrics();
        Ok(d)
    }

    /// Watch every job cgroup under the parent: scheduler jobs through their
    /// `cgroup.events`, `cgjob run` jobs through their supervisor.
    fn adopt(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.cfg.parent) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let cg = Cgroup::at(e.path());
            let Some(m) = meta::read(&cg).ok().flatten() else {
                continue;
            };
            match name.strip_prefix("job-").and_then(|s| JobId::parse(s).ok()) {
                Some(id) if m.is_batch() => {
                    self.watch(&id, Some(m.uid));
                    self.set_deadline(&id, &m);
                }
                _ if !m.is_batch() => self.watch_run(&name),
                _ => {}
            }
        }
        tracing::info!(
            jobs = self.jobs.len(),
            runs = self.runs.len(),
            "adopted the existing jobs"
        );
    }

    /// Arm job `id`'s time limit from its record (a limit already past fires at once).
    fn set_deadline(&mut self, id: &JobId, m: &JobMeta) {
        let Some(t) = m.timeout else {
            return;
        };
        let left = t.left();
        if let Some(w) = self.jobs.get_mut(id.as_str()) {
            if w.deadline.is_none() && !w.cleaning {
                w.deadline = Some((Instant::now() + left, t.kill_after()));
                self.deadlines_changed = true;
            }
        }
    }

    /// Watch the supervisor of the `cgjob run` job `name`: the process holding the lock on
    /// its cgroup (found in /proc/locks, which names it in the daemon's PID namespace
    /// whatever the supervisor's), else the supervisor pid of the record when it checks out.
    fn watch_run(&mut self, name: &str) {
        if self.run_names.contains_key(name) {
            return;
        }
        let cg = Cgroup::at(self.cfg.parent.join(name));
        let Some(m) = meta::read(&cg).ok().flatten().filter(|m| !m.is_batch()) else {
            return;
        };
        let holder = cg
            .lock_holder()
            .or_else(|| m.supervisor_alive().then_some(m.supervisor_pid))
            .filter(|p| *p > 0);
        let Some(pid) = holder else {
            if cg.is_locked() == Some(false) {
                // Its supervisor is gone already.
                self.collect_run(name);
            }
            return;
        };
        let pidfd = match PidFd::open(pid) {
            Ok(Some(fd)) => fd,
            Ok(None) => {
                self.collect_run(name);
                return;
            }
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "cannot watch the supervisor");
                return;
            }
        };
        self.next += 1;
        let token = RUN + self.next;
        if let Err(e) = self
            .epoll
            .add(pidfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
        {
            tracing::warn!(job = %name, error = %e, "cannot watch the supervisor");
            return;
        }
        tracing::debug!(job = %name, supervisor = pid, "watching a cgjob run job");
        self.run_names.insert(name.to_owned(), token);
        self.runs.insert(
            token,
            RunWatch {
                name: name.to_owned(),
                supervisor: pidfd,
            },
        );
    }

    fn unwatch_run(&mut self, name: &str) -> Option<RunWatch> {
        let token = self.run_names.remove(name)?;
        let w = self.runs.remove(&token)?;
        let _ = self.epoll.delete(w.supervisor.as_fd());
        Some(w)
    }

    /// A `cgjob run` supervisor ended. Its cgroup is gone (a normal end), or its guardian is
    /// emptying it, or nobody is: then the daemon does, as `gc` would, and reports what was
    /// in it. A lock still held means another holder (the lock was passed on): watch that.
    fn run_ended(&mut self, token: u64) {
        let Some(name) = self.runs.get(&token).map(|w| w.name.clone()) else {
            return;
        };
        let old = self.unwatch_run(&name).map(|w| w.supervisor.pid());
        let cg = Cgroup::at(self.cfg.parent.join(&name));
        match cg.is_locked() {
            Some(false) => self.collect_run(&name),
            Some(true) if cg.lock_holder().is_some_and(|p| Some(p) != old) => self.watch_run(&name),
            _ => {}
        }
    }

    /// Empty and remove a `cgjob run` job whose supervisor is gone, on a worker thread.
    fn collect_run(&mut self, name: &str) {
        let cg = Cgroup::at(self.cfg.parent.join(name));
        let name = name.to_owned();
        tracing::info!(job = %name, "the supervisor of a cgjob run job is gone; collecting it");
        let r = self.spawn_worker(format!("collect-{name}"), move || {
            let result = gc::collect(&cg, false).map_err(|e| crate::commands::error_line(&e));
            Done::Stale { name, result }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot collect a stale job");
        }
    }

    /// Run `work` on a thread of its own; its result comes back through the loop.
    fn spawn_worker(
        &self,
        name: String,
        work: impl FnOnce() -> Done + Send + 'static,
    ) -> Result<(), String> {
        let tx = self.done_tx.clone();
        let wake = self.wake_tx.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _ = tx.send(work());
                let _ = (&*wake).write_all(b"x");
            })
            .map(drop)
            .map_err(|e| format!("cannot start a worker: {e}"))
    }

    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    fn write_metrics(&mut self) {
        self.dirty = false;
        let Some(f) = &self.cfg.metrics else {
            return;
        };
        self.metrics_written = Some(Instant::now());
        self.metrics.jobs = self.jobs.len() as u64;
        self.metrics.jobs_populated = self.jobs.values().filter(|w| w.populated).count() as u64;
        if let Err(e) = f.write(&self.metrics) {
            tracing::warn!(error = %e, "cannot write the metrics file");
        }
    }

    /// Job cgroups made or removed under the parent by someone else.
    fn parent_changed(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: read into a local buffer of its size.
            let n = unsafe {
                libc::read(
                    self.parent_dir.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
            for (mask, name) in inotify_events(&buf[..n as usize]) {
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    // Events were lost: look at the directory itself.
                    self.adopt();
                    let gone: Vec<String> = self
                        .jobs
                        .keys()
                        .filter(|id| {
                            let id = JobId::parse(id).expect("watched ids are valid");
                            !batch::job_cgroup(&self.cfg.parent, &id).path().is_dir()
                        })
                        .cloned()
                        .collect();
                    for id in gone {
                        self.removed(&id);
                    }
                    continue;
                }
                let Some(id) = name.strip_prefix("job-").and_then(|s| JobId::parse(s).ok()) else {
                    // A `cgjob run` job: its owner record (xattr: IN_ATTRIB) is written
                    // after the supervisor took the lock, so that is when to watch it.
                    if mask & libc::IN_ATTRIB != 0 {
                        self.watch_run(&name);
                    } else if mask & libc::IN_DELETE != 0 {
                        self.unwatch_run(&name);
                    }
                    continue;
                };
                if mask & libc::IN_ATTRIB != 0 {
                    // Its owner record written (by a `cgjob job create` run directly): the
                    // owner and the time limit.
                    let cg = batch::job_cgroup(&self.cfg.parent, &id);
                    if let Some(m) = meta::read(&cg).ok().flatten().filter(|m| m.is_batch()) {
                        if let Some(w) = self.jobs.get_mut(id.as_str()) {
                            w.uid = Some(m.uid);
                        }
                        self.set_deadline(&id, &m);
                    }
                    continue;
                }
                if mask & libc::IN_CREATE != 0 && !self.jobs.contains_key(id.as_str()) {
                    // Made by a `cgjob job create` that did not go through the daemon. Its
                    // owner record is written just after the mkdir: read when needed.
                    self.watch(&id, None);
                    self.emit("created", id.as_str(), None, Value::Null);
                } else if mask & libc::IN_DELETE != 0 && self.jobs.contains_key(id.as_str()) {
                    self.removed(id.as_str());
                }
            }
        }
    }

    fn removed(&mut self, id: &str) {
        let uid = self.jobs.get(id).and_then(|w| w.uid);
        self.unwatch(id);
        tracing::info!(job = %id, "job cgroup removed");
        self.emit("removed", id, uid, Value::Null);
    }

    fn watch(&mut self, id: &JobId, uid: Option<u32>) {
        if let Some(w) = self.jobs.get_mut(id.as_str()) {
            w.uid = uid;
            return;
        }
        let cg = batch::job_cgroup(&self.cfg.parent, id);
        let events = match EventsFile::open(cg.path()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot watch the job");
                return;
            }
        };
        let populated = events.read().map(|e| e.populated).unwrap_or(false);
        self.next += 1;
        let token = JOB + self.next;
        if let Err(e) = self
            .epoll
            .add(events.fd(), EpollEvent::new(EpollFlags::EPOLLPRI, token))
        {
            tracing::warn!(job = %id, error = %e, "cannot watch the job");
            return;
        }
        self.dirty = true;
        self.deadlines_changed = true;
        self.job_tokens.insert(token, id.to_string());
        self.jobs.insert(
            id.to_string(),
            Watched {
                uid,
                events,
                populated,
                token,
                cleaning: false,
                deadline: None,
                empty_since: (!populated).then(Instant::now),
            },
        );
    }

    fn unwatch(&mut self, id: &str) {
        if let Some(w) = self.jobs.remove(id) {
            self.dirty = true;
            self.deadlines_changed |= w.deadline.is_some();
            let _ = self.epoll.delete(w.events.fd());
            self.job_tokens.remove(&w.token);
        }
    }

    /// Serve until SIGTERM or SIGINT. Jobs are left running: stopping the daemon never kills
    /// them, and the next daemon adopts them.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            if self.deadlines_changed {
                self.arm_deadlines();
            }
            // Before blocking: the metrics, if the last batch of events changed them — now,
            // or (written less than METRICS_INTERVAL ago) when the wait times out. Nothing
            // changed, no timeout: idle, the daemon does not wake.
            let timeout = self.write_metrics_when_due();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(sys("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept(),
                    SIGNALS => {
                        if let Ok(Some(si)) = self.signals.read_signal() {
                            tracing::info!(signal = si.ssi_signo, "stopping; jobs keep running");
                            if self.dirty {
                                self.write_metrics();
                            }
                            let _ = std::fs::remove_file(&self.cfg.socket);
                            return Ok(());
                        }
                    }
                    WAKE => self.finish_work(),
                    PARENT_DIR => self.parent_changed(),
                    DEADLINE => self.deadlines_passed(),
                    POLICE => self.police(),
                    t if t >= JOB => self.job_changed(t),
                    t if t >= RUN => self.run_ended(t),
                    t => self.client_ready(t, ev.events()),
                }
            }
        }
    }

    /// Write the metrics if they changed and the last write is METRICS_INTERVAL old; how
    /// long the loop may then block: until the next write is due if one is pending, else
    /// for good.
    fn write_metrics_when_due(&mut self) -> EpollTimeout {
        if !self.dirty {
            return EpollTimeout::NONE;
        }
        let due = self.metrics_written.map(|t| t + METRICS_INTERVAL);
        match due.map(|due| due.saturating_duration_since(Instant::now())) {
            Some(left) if !left.is_zero() && self.cfg.metrics.is_some() => {
                // Rounded up, so as not to wake a moment early and spin until due.
                let ms = left.as_micros().div_ceil(1000) as u64;
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            }
            _ => {
                self.write_metrics();
                EpollTimeout::NONE
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE): stop listening until a client
                    // leaves — the listener stays readable, and level-triggered epoll would
                    // spin. The connections wait in the backlog meanwhile.
                    tracing::warn!(error = %e, clients = self.clients.len(), "cannot accept a connection; pausing until a client leaves");
                    if self.epoll.delete(self.listener.as_fd()).is_ok() {
                        self.paused = true;
                    }
                    return;
                }
            };
            let peer = match auth::peer_of(stream.as_fd()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "no peer credentials; connection closed");
                    continue;
                }
            };
            if !peer.is_root() {
                let held = self
                    .clients
                    .values()
                    .filter(|c| c.peer.uid == peer.uid)
                    .count();
                if held >= self.cfg.max_clients_per_user {
                    tracing::warn!(
                        uid = peer.uid,
                        held,
                        "too many connections from one user; refused"
                    );
                    let r = protocol::error_reply(&format!(
                        "too many connections from uid {} (at most {} at once)",
                        peer.uid, self.cfg.max_clients_per_user
                    ));
                    // Best effort, without blocking: a fresh socket's buffer takes one line.
                    let _ = stream.set_nonblocking(true);
                    let _ = (&stream).write(r.as_bytes());
                    continue;
                }
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next += 1;
            let token = CLIENT + self.next;
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if self
                .epoll
                .add(stream.as_fd(), EpollEvent::new(flags, token))
                .is_err()
            {
                continue;
            }
            tracing::debug!(uid = peer.uid, pid = peer.pid, "client connected");
            self.clients.insert(
                token,
                Client {
                    stream,
                    peer,
                    input: Vec::new(),
                    output: Vec::new(),
                    writing: false,
                    subscribed: false,
                    discarding: false,
                    eof: false,
                    slots: VecDeque::new(),
                    first_seq: 0,
                },
            );
        }
    }

    fn drop_client(&mut self, token: u64) {
        if let Some(c) = self.clients.remove(&token) {
            let _ = self.epoll.delete(c.stream.as_fd());
            drop(c);
            if self.paused {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN, LISTENER);
                self.paused = self.epoll.add(self.listener.as_fd(), ev).is_err();
            }
        }
    }

    fn client_ready(&mut self, token: u64, flags: EpollFlags) {
        if flags.contains(EpollFlags::EPOLLOUT) {
            self.flush(token);
        }
        if !flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP) {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        // A bounded number of reads per wake-up, so that one client streaming without pause
        // cannot starve the others (epoll is level-triggered: the rest is read next time).
        for _ in 0..32 {
            let Some(c) = self.clients.get_mut(&token) else {
                return;
            };
            if c.eof {
                return;
            }
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    // The client is done sending (`echo … | nc -U` shuts down its side): a
                    // last line without its newline still counts, and the replies still go
                    // out, a cleanup's when it ends.
                    c.eof = true;
                    if !c.input.is_empty() && !c.discarding {
                        c.input.push(b'\n');
                    }
                    self.serve_lines(token);
                    self.flush(token);
                    return;
                }
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_client(token);
                    return;
                }
            }
            self.serve_lines(token);
        }
    }

    /// Answer every complete line in the client's input. An oversized line is answered with
    /// an error as soon as it passes the limit, and the rest of it, up to its newline, is
    /// discarded as it arrives; the connection then goes on.
    fn serve_lines(&mut self, token: u64) {
        loop {
            let Some(c) = self.clients.get_mut(&token) else {
                return;
            };
            if c.slots.len() >= MAX_IN_FLIGHT {
                if c.input.len() > MAX_INPUT {
                    tracing::warn!(
                        uid = c.peer.uid,
                        "client sends without waiting for its replies; dropped"
                    );
                    self.drop_client(token);
                }
                return;
            }
            let nl = c.input.iter().position(|b| *b == b'\n');
            if c.discarding {
                match nl {
                    Some(nl) => {
                        c.input.drain(..=nl);
                        c.discarding = false;
                        continue;
                    }
                    None => {
                        c.input.clear();
                        return;
                    }
                }
            }
            let Some(nl) = nl.filter(|nl| *nl <= MAX_LINE) else {
                if c.input.len() > MAX_LINE {
                    c.discarding = true;
                    let uid = c.peer.uid;
                    tracing::warn!(uid, "request line over {MAX_LINE} bytes; discarded");
                    let r = protocol::error_reply(&format!(
                        "request longer than {MAX_LINE} bytes; discarded up to its end"
                    ));
                    let to = self.slot(token);
                    self.reply(to, r);
                    continue;
                }
                return;
            };
            let line: Vec<u8> = c.input.drain(..=nl).take(nl).collect();
            let peer = c.peer;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let to = self.slot(token);
            let reply = match protocol::parse_request(&line) {
                Ok(req) => self.handle(to, &peer, req),
                Err(e) => {
                    self.metrics.requests_refused += 1;
                    self.dirty = true;
                    Some(protocol::error_reply(&e))
                }
            };
            if let Some(r) = reply {
                self.reply(to, r);
            }
        }
    }

    /// A reply slot for the next request of client `token`.
    fn slot(&mut self, token: u64) -> ReplyTo {
        let Some(c) = self.clients.get_mut(&token) else {
            return (token, 0);
        };
        c.slots.push_back(None);
        (token, c.first_seq + c.slots.len() as u64 - 1)
    }

    /// Fill a reply slot, and send every reply now due in request order.
    fn reply(&mut self, to: ReplyTo, r: String) {
        let Some(c) = self.clients.get_mut(&to.0) else {
            return;
        };
        let i = to.1.wrapping_sub(c.first_seq) as usize;
        if let Some(slot) = c.slots.get_mut(i) {
            *slot = Some(r);
        }
        let mut out = Vec::new();
        while let Some(Some(_)) = c.slots.front() {
            if let Some(Some(r)) = c.slots.pop_front() {
                out.extend_from_slice(r.as_bytes());
            }
            c.first_seq += 1;
        }
        if out.is_empty() {
            // Its EOF handling waits for the last reply.
            self.flush(to.0);
        } else {
            self.send(to.0, &out);
        }
    }

    /// Queue bytes for a client and write what the socket takes now.
    fn send(&mut self, token: u64, bytes: &[u8]) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        if c.output.len() + bytes.len() > MAX_OUTPUT {
            tracing::warn!(
                uid = c.peer.uid,
                "client does not read its replies; dropped"
            );
            self.drop_client(token);
            return;
        }
        c.output.extend_from_slice(bytes);
        self.flush(token);
    }

    fn flush(&mut self, token: u64) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        while !c.output.is_empty() {
            match c.stream.write(&c.output) {
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_client(token);
                    return;
                }
            }
        }
        let want = !c.output.is_empty();
        if c.eof {
            if !want && c.slots.is_empty() && c.input.is_empty() && !c.subscribed {
                self.drop_client(token);
                return;
            }
            // At EOF the socket stays readable for good: only ask for what is still to
            // write, or nothing (level-triggered EPOLLIN would spin).
            let flags = if want {
                EpollFlags::EPOLLOUT
            } else {
                EpollFlags::empty()
            };
            c.writing = want;
            let _ = self
                .epoll
                .modify(c.stream.as_fd(), &mut EpollEvent::new(flags, token));
        } else if want != c.writing {
            c.writing = want;
            let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if want {
                flags |= EpollFlags::EPOLLOUT;
            }
            let _ = self
                .epoll
                .modify(c.stream.as_fd(), &mut EpollEvent::new(flags, token));
        }
    }

    /// An event about the node rather than a job: to root's subscribers.
    fn emit_node(&mut self, event: &str, extra: Value) {
        let line = protocol::node_event_line(event, extra);
        let to: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.subscribed && c.peer.is_root())
            .map(|(t, _)| *t)
            .collect();
        for t in to {
            self.send(t, line.as_bytes());
        }
    }

    /// An event to every subscriber allowed to see the job (root, and the job's owner).
    fn emit(&mut self, event: &str, id: &str, owner: Option<u32>, extra: Value) {
        let owner = owner.or_else(|| self.owner_uid(id));
        let line = protocol::event_line(event, id, extra);
        let to: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.subscribed && (c.peer.is_root() || Some(c.peer.uid) == owner))
            .map(|(t, _)| *t)
            .collect();
        for t in to {
            self.send(t, line.as_bytes());
        }
    }

    fn job_changed(&mut self, token: u64) {
        let Some(id) = self.job_tokens.get(&token).cloned() else {
            return;
        };
        let uid = self.jobs.get(&id).and_then(|w| w.uid);
        let uid = uid.or_else(|| self.owner_uid(&id));
        let Some(w) = self.jobs.get_mut(&id) else {
            return;
        };
        w.uid = uid;
        match w.events.read() {
            Ok(ev) if ev.populated != w.populated => {
                w.populated = ev.populated;
                w.empty_since = (!ev.populated).then(Instant::now);
                self.deadlines_changed = true;
                self.dirty = true;
                let uid = w.uid;
                let name = if ev.populated { "populated" } else { "empty" };
                tracing::info!(job = %id, "job is {name}");
                self.emit(name, &id, uid, Value::Null);
            }
            Ok(_) => {}
            Err(e) => {
                // Removed behind the daemon's back (`cgjob job cleanup` run directly, gc):
                // a removed cgroup's file reports errors from now on, so stop watching it.
                if !e.is_gone() {
                    tracing::warn!(job = %id, error = %e, "cannot read cgroup.events");
                }
                self.removed(&id);
            }
        }
    }

    /// The uid recorded on a job's cgroup, if any.
    fn owner_uid(&self, id: &str) -> Option<u32> {
        let id = JobId::parse(id).ok()?;
        let cg = batch::job_cgroup(&self.cfg.parent, &id);
        meta::read(&cg).ok().flatten().map(|m| m.uid)
    }

    /// The job's owner from its record on the cgroup; `Err` if the job has no cgroup.
    fn owner(&self, id: &JobId) -> Result<(Cgroup, Option<u32>), String> {
        let cg = batch::job_cgroup(&self.cfg.parent, id);
        if !cg.path().is_dir() {
            // Worded as `cgjob job` words it when acting directly.
            return Err(format!(
                "no cgroup for job {id} in {} (was `cgjob job create` run for it?)",
                self.cfg.parent.display()
            ));
        }
        let owner = meta::read(&cg).ok().flatten().map(|m| m.uid);
        Ok((cg, owner))
    }

    /// Answer one request; `None` when the reply comes later (cleanup).
    fn handle(&mut self, to: ReplyTo, peer: &Peer, req: Request) -> Option<String> {
        let span = tracing::info_span!("request", uid = peer.uid, pid = peer.pid);
        let _g = span.enter();
        let r = self.handle_inner(to, peer, req);
        self.dirty = true;
        // A request answered later (on a worker) is counted when it is.
        match &r {
            Ok(Some(_)) => self.metrics.requests_ok += 1,
            Ok(None) => {}
            Err(_) => self.metrics.requests_refused += 1,
        }
        match r {
            Ok(Some(v)) => Some(protocol::ok_reply(v)),
            Ok(None) => None,
            Err(e) => {
                tracing::info!(error = %e, "request refused");
                Some(protocol::error_reply(&e))
            }
        }
    }

    fn handle_inner(
        &mut self,
        to: ReplyTo,
        peer: &Peer,
        req: Request,
    ) -> Result<Option<Value>, String> {
        let token = to.0;
        match req {
            Request::Create {
                job_id,
                uid,
                scheduler,
                timeout,
                limits,
                limits_via,
            } => {
                let uid = uid.unwrap_or(peer.uid);
                let spec = CreateSpec {
                    scheduler,
                    uid,
                    timeout,
                    limits,
                    limits_via,
                };
                auth::may_create_for(peer, uid)?;
                // An existing cgroup of the same id is reused, and whatever runs in it killed
                // as stale: only its owner (or root) may do that.
                if let Ok((_, owner)) = self.owner(&job_id) {
                    auth::may_act_on(peer, job_id.as_str(), owner)?;
                }
                if self.jobs.get(job_id.as_str()).is_some_and(|w| w.cleaning) {
                    return Err(format!(
                        "job {job_id}: its cgroup is being emptied; try again when that ends"
                    ));
                }
                if !peer.is_root() && !self.jobs.contains_key(job_id.as_str()) {
                    let held = self.jobs.values().filter(|w| w.uid == Some(uid)).count();
                    if held >= self.cfg.max_jobs_per_user {
                        return Err(format!(
                            "uid {uid} has {held} jobs already (at most {} for a user other than root)",
                            self.cfg.max_jobs_per_user
                        ));
                    }
                }
                let cg = batch::job_cgroup(&self.cfg.parent, &job_id);
                let stale = EventsFile::open(cg.path())
                    .and_then(|e| e.read())
                    .is_ok_and(|e| e.populated);
                if stale {
                    // Processes of an earlier job of the same id to kill (seconds, maybe):
                    // on a worker, as a cleanup, while the loop serves on.
                    let parent = self.cfg.parent.clone();
                    let id = job_id.clone();
                    self.spawn_worker(format!("create-{job_id}"), move || {
                        let result = cleanup::create(&parent, &id, &spec)
                            .map_err(|e| crate::commands::error_line(&e));
                        Done::Created {
                            client: to,
                            id,
                            uid,
                            timeout,
                            result,
                        }
                    })?;
                    self.watch(&job_id, Some(uid));
                    if let Some(w) = self.jobs.get_mut(job_id.as_str()) {
                        w.cleaning = true;
                    }
                    return Ok(None);
                }
                let c = cleanup::create(&self.cfg.parent, &job_id, &spec)
                    .map_err(|e| crate::commands::error_line(&e))?;
                self.created(&job_id, uid, timeout, &c);
                Ok(Some(val(&c)))
            }
            Request::Attach { job_id, pids } => {
                let (cg, owner) = self.owner(&job_id)?;
                auth::may_act_on(peer, job_id.as_str(), owner)?;
                // Who may move which process is decided here; the moves themselves on a
                // worker: a write to cgroup.procs can wait for an RCU grace period (~10 ms
                // after a quiet spell), and the loop serves everyone else meanwhile.
                let mut allowed = Vec::new();
                let mut failed = Vec::new();
                for pid in pids {
                    match auth::may_move(peer, pid, procinfo::read_uid(pid)) {
                        Ok(()) => allowed.push(pid),
                        Err(e) => failed.push(e),
                    }
                }
                self.spawn_worker(format!("attach-{job_id}"), move || {
                    let mut moved = Vec::new();
                    for pid in allowed {
                        match crate::job::limits::add_to_job(&cg, pid) {
                            Ok(()) => moved.push(pid),
                            Err(e) => failed.push(match e.errno() {
                                Some(libc::ESRCH) => format!("no such process {pid}"),
                                _ => format!("cannot move process {pid}: {}", e.source),
                            }),
                        }
                    }
                    let result = if failed.is_empty() {
                        Ok(json!({"job_id": job_id.as_str(), "moved": moved}))
                    } else {
                        Err(format!("{} (moved: {moved:?})", failed.join("; ")))
                    };
                    Done::Reply { to, result }
                })?;
                Ok(None)
            }
            Request::Signal { job_id, signal } => {
                let (cg, owner) = self.owner(&job_id)?;
                auth::may_act_on(peer, job_id.as_str(), owner)?;
                let sent =
                    kill::signal_each(&cg, signal).map_err(|e| crate::commands::error_line(&e))?;
                Ok(Some(json!({"job_id": job_id.as_str(), "signalled": sent})))
            }
            Request::Status { job_id } => {
                let (cg, owner) = self.owner(&job_id)?;
                auth::may_act_on(peer, job_id.as_str(), owner)?;
                let mut t = Tracker::cgroup_only();
                t.scan(&cg).map_err(|e| crate::commands::error_line(&e))?;
                Ok(Some(json!({
                    "job_id": job_id.as_str(),
                    "cgroup": cg.path(),
                    "owner": val(&meta::read(&cg).ok().flatten()),
                    "processes": val(&t.leftovers),
                    "usage": val(&crate::job::limits::current_usage(&cg)),
                    "cleaning": self.jobs.get(job_id.as_str()).is_some_and(|w| w.cleaning),
                })))
            }
            Request::List => {
                // ~50 µs a job (its owner record and processes): on a worker.
                let parent = self.cfg.parent.clone();
                let watched: HashSet<String> = self.jobs.keys().cloned().collect();
                let peer = *peer;
                self.spawn_worker("list".into(), move || Done::Reply {
                    to,
                    result: Ok(json!({"jobs": list(&parent, &peer, &watched)})),
                })?;
                Ok(None)
            }
            Request::Hello => Ok(Some(json!({
                "daemon": concat!("cgjob ", env!("CARGO_PKG_VERSION")),
                "parent": self.cfg.parent,
            }))),
            Request::Subscribe => {
                if let Some(c) = self.clients.get_mut(&token) {
                    c.subscribed = true;
                }
                Ok(Some(json!({"subscribed": true})))
            }
            Request::Cleanup {
                job_id,
                grace,
                kill_timeout,
            } => {
                // A job without a cgroup is clean already: the cleanup finds nothing and says
                // so, as an epilog run twice expects.
                let owner = match self.owner(&job_id) {
                    Ok((_, owner)) => {
                        auth::may_act_on(peer, job_id.as_str(), owner)?;
                        owner
                    }
                    Err(_) => None,
                };
                if self.jobs.get(job_id.as_str()).is_some_and(|w| w.cleaning) {
                    return Err(format!("job {job_id}: a cleanup is already running"));
                }
                self.start_cleanup(Some(to), &job_id, owner, grace, kill_timeout, Why::Request)?;
                Ok(None)
            }
        }
    }

    /// Clean job `id` up on a worker thread (TERM, `grace`, kill passes for up to
    /// `kill_timeout`, remove); `client` gets the result when it is done.
    fn start_cleanup(
        &mut self,
        client: Option<ReplyTo>,
        id: &JobId,
        owner: Option<u32>,
        grace: Duration,
        kill_timeout: Duration,
        why: Why,
    ) -> Result<(), String> {
        let spec = CleanupSpec {
            grace,
            kill_timeout,
            sweep: None,
            spare_ancestors_to: None,
        };
        let parent = self.cfg.parent.clone();
        let id2 = id.clone();
        self.spawn_worker(format!("cleanup-{id}"), move || {
            let result =
                cleanup::cleanup(&parent, &id2, &spec).map_err(|e| crate::commands::error_line(&e));
            Done::Cleanup {
                client,
                id: id2,
                uid: owner,
                why,
                result,
            }
        })?;
        if let Some(w) = self.jobs.get_mut(id.as_str()) {
            w.cleaning = true;
            // Ended now, one way or the other.
            self.deadlines_changed |= w.deadline.take().is_some();
        }
        Ok(())
    }

    /// When an empty job is removed, if ever.
    fn empty_until(&self, w: &Watched) -> Option<Instant> {
        Some(w.empty_since? + self.cfg.remove_empty_after?)
    }

    /// Arm the timer for the earliest time limit of a job not being cleaned up, or the
    /// earliest end of a job's time empty.
    fn arm_deadlines(&mut self) {
        self.deadlines_changed = false;
        let next = self
            .jobs
            .values()
            .filter(|w| !w.cleaning)
            .flat_map(|w| [w.deadline.map(|d| d.0), self.empty_until(w)])
            .flatten()
            .min();
        if let Err(e) = self.deadline_timer.set(next) {
            tracing::warn!(error = %e, "cannot set the time-limit timer");
        }
    }

    /// Jobs past their time limit: SIGTERM, the grace, kill, remove — and say so.
    fn deadlines_passed(&mut self) {
        self.deadline_timer.clear();
        self.deadlines_changed = true;
        let now = Instant::now();
        let due: Vec<(String, Duration)> = self
            .jobs
            .iter()
            .filter(|(_, w)| !w.cleaning)
            .filter_map(|(id, w)| w.deadline.filter(|d| d.0 <= now).map(|d| (id.clone(), d.1)))
            .collect();
        for (id, grace) in due {
            let Ok(jid) = JobId::parse(&id) else { continue };
            let uid = self.jobs.get(&id).and_then(|w| w.uid);
            tracing::info!(job = %id, "time limit passed; ending the job");
            self.metrics.jobs_timed_out += 1;
            self.emit("timeout", &id, uid, Value::Null);
            let r = self.start_cleanup(
                None,
                &jid,
                uid,
                grace,
                protocol::DEFAULT_KILL_TIMEOUT,
                Why::Timeout,
            );
            if let Err(e) = r {
                // Tried again at the next wake-up of the timer.
                tracing::warn!(job = %id, error = %e, "cannot end the job");
                if let Some(w) = self.jobs.get_mut(&id) {
                    w.deadline = Some((now + Duration::from_secs(1), grace));
                }
            }
        }
        // Jobs empty for long enough: their epilog never came (or they were made and never
        // used). Removed as a cleanup would (it finds nothing to kill).
        let empty: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, w)| !w.cleaning && !w.populated)
            .filter(|(_, w)| self.empty_until(w).is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in empty {
            let Ok(jid) = JobId::parse(&id) else { continue };
            let uid = self.jobs.get(&id).and_then(|w| w.uid);
            tracing::info!(job = %id, "job empty for --remove-empty-after; removing it");
            self.metrics.stale_jobs_removed += 1;
            let r = self.start_cleanup(
                None,
                &jid,
                uid,
                Duration::ZERO,
                protocol::DEFAULT_KILL_TIMEOUT,
                Why::Empty,
            );
            if let Err(e) = r {
                tracing::warn!(job = %id, error = %e, "cannot remove the job");
                if let Some(w) = self.jobs.get_mut(&id) {
                    w.empty_since = Some(now);
                }
            }
        }
    }

    /// The policing timer: one sweep on a worker thread (reading all of /proc takes a while
    /// on a busy node; the loop keeps serving).
    fn police(&mut self) {
        self.police_timer.clear();
        let Some(p) = self.cfg.police.clone() else {
            return;
        };
        if self.policing {
            return;
        }
        match self.spawn_worker("police".into(), move || Done::Police(police::sweep(&p))) {
            Ok(()) => self.policing = true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep the node");
                self.police_again();
            }
        }
    }

    fn police_again(&mut self) {
        if let Some(p) = &self.cfg.police {
            if let Err(e) = self.police_timer.set(Some(Instant::now() + p.interval)) {
                tracing::warn!(error = %e, "cannot set the policing timer");
            }
        }
    }

    fn policed(&mut self, found: Vec<Offender>) {
        self.policing = false;
        self.police_again();
        if found.is_empty() {
            return;
        }
        self.dirty = true;
        let killed = found.iter().filter(|o| o.killed).count();
        self.metrics.police_found += found.len() as u64;
        self.metrics.police_killed += killed as u64;
        for o in &found {
            let cmd = if o.cmdline.is_empty() {
                format!("[{}]", o.comm)
            } else {
                o.cmdline.join(" ")
            };
            tracing::warn!(pid = o.pid, uid = o.uid, cgroup = %o.cgroup.display(), killed = o.killed, "process outside every job: {cmd}");
        }
        let v = val(&found);
        let action = self.cfg.police.as_ref().map(|p| p.action);
        let rec = json!({"time": now(), "kind": "police", "action": action, "processes": v});
        self.cfg.results.append_or_warn(&rec);
        // To root's subscribers only (no job, so no owner).
        self.emit_node("police", json!({"processes": v}));
    }

    fn finish_work(&mut self) {
        let mut buf = [0u8; 64];
        while matches!(self.wake_rx.read(&mut buf), Ok(n) if n > 0) {}
        self.take_done();
        // Clients held at MAX_IN_FLIGHT may go on.
        let held: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.input.is_empty() && c.slots.len() < MAX_IN_FLIGHT)
            .map(|(t, _)| *t)
            .collect();
        for t in held {
            self.serve_lines(t);
            self.flush(t);
        }
    }

    fn take_done(&mut self) {
        while let Ok(d) = self.done_rx.try_recv() {
            match d {
                Done::Cleanup {
                    client,
                    id,
                    uid,
                    why,
                    result,
                } => self.cleaned(client, id, uid, why, result),
                Done::Stale { name, result } => self.collected(&name, result),
                Done::Created {
                    client,
                    id,
                    uid,
                    timeout,
                    result,
                } => self.created_later(client, id, uid, timeout, result),
                Done::Police(found) => self.policed(found),
                Done::Reply { to, result } => {
                    self.dirty = true;
                    let r = match result {
                        Ok(v) => {
                            self.metrics.requests_ok += 1;
                            protocol::ok_reply(v)
                        }
                        Err(e) => {
                            self.metrics.requests_refused += 1;
                            protocol::error_reply(&e)
                        }
                    };
                    self.reply(to, r);
                }
            }
        }
    }

    /// A `cgjob run` job collected after its supervisor died.
    fn collected(&mut self, name: &str, result: Result<Option<gc::StaleJob>, String>) {
        match result {
            Ok(Some(s)) => {
                self.dirty = true;
                if s.outcome == gc::GcOutcome::Removed {
                    self.metrics.stale_jobs_removed += 1;
                }
                self.metrics.leftovers_found += s.processes.len() as u64;
                self.metrics.leftovers_killed += s
                    .processes
                    .iter()
                    .filter(|l| matches!(l.ended_by, Some(EndedBy::Killed)))
                    .count() as u64;
                tracing::warn!(job = %name, "{}", s.describe());
                let rec = json!({"time": now(), "kind": "stale", "result": s});
                self.cfg.results.append_or_warn(&rec);
                let owner = s.processes.first().and_then(|p| p.uid);
                self.emit(
                    "stale",
                    name,
                    owner,
                    json!({"outcome": rec["result"]["outcome"], "leftovers": rec["result"]["processes"]}),
                );
            }
            Ok(None) => tracing::debug!(job = %name, "nothing to collect"),
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "cannot collect a stale job");
            }
        }
    }

    /// Job `id` was created: watched, its time limit armed, subscribers told.
    fn created(&mut self, id: &JobId, uid: u32, timeout: Option<TimeLimit>, c: &cleanup::Created) {
        self.watch(id, Some(uid));
        if let Some(w) = self.jobs.get_mut(id.as_str()) {
            // A new job: a limit of the old one of the same id goes.
            w.cleaning = false;
            w.deadline = timeout.map(|t| (Instant::now() + t.left(), t.kill_after()));
            self.deadlines_changed = true;
        }
        self.metrics.jobs_created += 1;
        self.emit(
            "created",
            id.as_str(),
            Some(uid),
            json!({"uid": uid, "stale": c.stale.len()}),
        );
        if !c.stale.is_empty() {
            self.emit(
                "leftovers",
                id.as_str(),
                Some(uid),
                json!({"leftovers": val(&c.stale)}),
            );
        }
    }

    /// A create that had stale processes to kill ended on its worker.
    fn created_later(
        &mut self,
        client: ReplyTo,
        id: JobId,
        uid: u32,
        timeout: Option<TimeLimit>,
        result: Result<cleanup::Created, String>,
    ) {
        self.dirty = true;
        let reply = match result {
            Ok(c) => {
                self.metrics.requests_ok += 1;
                self.created(&id, uid, timeout, &c);
                protocol::ok_reply(val(&c))
            }
            Err(e) => {
                self.metrics.requests_refused += 1;
                if let Some(w) = self.jobs.get_mut(id.as_str()) {
                    w.cleaning = false;
                }
                protocol::error_reply(&e)
            }
        };
        self.reply(client, reply);
    }

    /// A cleanup ended: the results log, metrics, events, and the reply to whoever asked.
    fn cleaned(
        &mut self,
        client: Option<ReplyTo>,
        id: JobId,
        uid: Option<u32>,
        why: Why,
        result: Result<Cleaned, String>,
    ) {
        let id = id.to_string();
        if let Some(w) = self.jobs.get_mut(&id) {
            w.cleaning = false;
        }
        self.dirty = true;
        let reply = match &result {
            Ok(c) => {
                let m = &mut self.metrics;
                if c.unkillable {
                    m.cleanups_unkillable += 1;
                } else {
                    m.cleanups_clean += 1;
                }
                m.cleanup_seconds_sum += c.duration_ms / 1000.0;
                m.leftovers_found += c.leftovers.len() as u64;
                m.leftovers_killed += c
                    .leftovers
                    .iter()
                    .filter(|l| matches!(l.ended_by, Some(EndedBy::Killed)))
                    .count() as u64;
                let v = serde_json::to_value(c).expect("serializes");
                let kind = why.kind();
                let rec = json!({"time": now(), "kind": kind, "uid": uid, "result": v});
                self.cfg.results.append_or_warn(&rec);
                if !c.leftovers.is_empty() {
                    self.emit("leftovers", &id, uid, json!({"leftovers": v["leftovers"]}));
                }
                self.emit(
                    "cleaned",
                    &id,
                    uid,
                    json!({"removed": c.cgroup_removed, "unkillable": c.unkillable, "why": why.kind()}),
                );
                if c.cgroup_removed {
                    self.unwatch(&id);
                }
                protocol::ok_reply(v)
            }
            Err(e) => {
                self.metrics.cleanups_failed += 1;
                protocol::error_reply(e)
            }
        };
        if let Some(client) = client {
            match &result {
                Ok(_) => self.metrics.requests_ok += 1,
                Err(_) => self.metrics.requests_refused += 1,
            }
            self.reply(client, reply);
        }
    }
}

/// The scheduler jobs under `parent` that `peer` may see.
fn list(parent: &Path, peer: &Peer, watched: &HashSet<String>) -> Vec<Value> {
    let mut jobs = Vec::new();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return jobs;
    };
    for e in rd.flatten().filter(|e| e.path().is_dir()) {
        let cg = Cgroup::at(e.path());
        let Some(m) = meta::read(&cg).ok().flatten().filter(|m| m.is_batch()) else {
            continue;
        };
        if !peer.is_root() && m.uid != peer.uid {
            continue;
        }
        jobs.push(json!({
            "job_id": m.job_id.clone().unwrap_or_default(),
            "cgroup": cg.path(),
            "scheduler": m.scheduler,
            "uid": m.uid,
            "created": m.created,
            "processes": cg.procs_recursive().map(|p| p.len()).unwrap_or(0),
            "watched": m.job_id.as_deref().is_some_and(|j| watched.contains(j)),
        }));
    }
    jobs.sort_by(|a, b| a["job_id"].as_str().cmp(&b["job_id"].as_str()));
    jobs
}

/// An inotify descriptor watching `dir` for subdirectories made and removed.
fn watch_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: inotify_init1 with flags; the fd is owned right away.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_ATTRIB | libc::IN_ONLYDIR;
    // SAFETY: a valid C string path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The (mask, name) of each `struct inotify_event` in a read buffer.
fn inotify_events(mut buf: &[u8]) -> Vec<(u32, String)> {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while buf.len() >= HEAD {
        let mask = u32::from_ne_bytes(buf[4..8].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
        let Some(name) = buf.get(HEAD..HEAD + len) else {
            break;
        };
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        out.push((mask, String::from_utf8_lossy(name).into_owned()));
        buf = &buf[HEAD + len..];
    }
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn val<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializes")
}
