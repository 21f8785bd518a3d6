//! POLICY: supervising one job from its cgroup's creation to its removal. One blocking point:
//! epoll over the signalfd, the main process's pidfd, the cgroup's `cgroup.events` and the
//! pidfds of leftovers being waited for, with the timeout taken from the escalation ladder's
//! next deadline. No sleep loops.
//!
//! Without a cgroup (`pid-namespace`, `subreaper`) the same loop runs over a [`Scope`] found
//! through /proc: the job is over when no recorded process is alive and a fresh look finds
//! no other (every exit of a recorded process wakes the loop through its pidfd, and a
//! process's children are handed on before its pidfd says it exited). There is no freezer
//! to stop forks: a kill pass SIGKILLs everything found, looks again, and repeats until a
//! look finds nothing new.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::SigmaskHow;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::WaitStatus;

use super::containment::{Containment, ContainmentError, Prepared};
use super::guardian::Guardian;
use super::leftovers::{Scope, Tracker};
use super::limits::JobLimits;
use super::meta::{self, JobMeta};
use super::place::{self, PlaceError};
use super::policy::{self, Action, Escalation, Event, MainExit, Phase};
use super::record::{CpuUsage, JobRecord, TimeoutRecord};
use crate::cgroup::kill::{self, KillError};
use crate::cgroup::limits::Usage;
use crate::cgroup::{Cgroup, CgroupFsError, EventsFile, KillMethod};
use crate::config::{ForwardTo, RunConfig};
use crate::process::spawn::{self, SpawnError, SpawnSpec};
use crate::process::terminal::Terminal;
use crate::process::{reap, signals, PidFd};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error(transparent)]
    Containment(#[from] ContainmentError),
    #[error(transparent)]
    Kill(#[from] KillError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Fs(#[from] CgroupFsError),
    #[error("cannot {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    fn setup(what: &'static str) -> impl FnOnce(Errno) -> RunError {
        move |e| RunError::Setup {
            what,
            source: e.into(),
        }
    }

    /// The exit status for this failure (README table).
    pub fn exit_status(&self) -> i32 {
        match self {
            RunError::Spawn(SpawnError::NotFound(_)) => policy::exit::NOT_FOUND,
            RunError::Spawn(SpawnError::NotExecutable { .. }) => policy::exit::NOT_EXECUTABLE,
            _ => policy::exit::FAILURE,
        }
    }
}

/// A job cgroup (and its cgroup v1 cgroups) removed on drop unless the job got going: nothing
/// is left behind by a failed start.
struct RemoveOnError<'a>(Option<Cgroup>, Option<&'a JobLimits>);

impl Drop for RemoveOnError<'_> {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "cannot remove the job cgroup after a failed start");
            }
            if let Some(l) = self.1.take() {
                l.remove_v1();
            }
        }
    }
}

const TAG_SIGNAL: u64 = 0;
const TAG_MAIN: u64 = 1;
const TAG_EVENTS: u64 = 2;
const TAG_LEFTOVER: u64 = 3;

/// Bound on waiting for `frozen 1` before reading a complete process list.
const FREEZE_WAIT: Duration = Duration::from_millis(500);

/// Without a cgroup, look-and-kill rounds in one kill pass: a round that finds nothing new
/// ends it; a process still forking faster than that is met again at the next pass.
const TREE_KILL_ROUNDS: usize = 64;

/// The job cgroup's handles, in `cgroup-v2` containment.
struct CgroupCtl<'a> {
    cg: &'a Cgroup,
    events: &'a EventsFile,
    method: KillMethod,
}

/// Run one job to its end, in the containment `prep` set up.
pub fn run(cfg: &RunConfig, prep: &Prepared) -> Result<JobRecord, RunError> {
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let name = &prep.name;
    let span = tracing::info_span!("job", job = %name);
    let _enter = span.enter();
    let job_cg = prep.cgroup.as_ref();
    let cg = job_cg.map(|j| &j.cg);
    let mut cleanup = RemoveOnError(cg.cloned(), prep.limits.as_ref());
    if let Some(l) = &prep.limits {
        tracing::info!(applied_via = %l.via, v1_cgroups = ?l.v1.iter().map(|c| c.cg.path()).collect::<Vec<_>>(), "resource limits set");
    }
    // Opened before the clone: the child only writes to them.
    let v1_joins = match &prep.limits {
        Some(l) => l.open_joins()?,
        None => Vec::new(),
    };

    // Held for the life of the job (closed in the command at exec, in the guardian at once):
    // `gc` knows a live job by it.
    let _alive = cg.map(|c| c.hold_lock()).transpose()?;
    let method = cg.map(|c| kill::resolve(c, cfg.kill)).transpose()?;
    let events = cg.map(|c| EventsFile::open(c.path())).transpose()?;

    let set = signals::supervisor_set();
    let old_mask = set
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(RunError::setup("block signals"))?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(RunError::setup("create a signalfd"))?;
    reap::become_subreaper().map_err(RunError::setup("become a child subreaper"))?;
    let nofile = crate::process::raise_nofile();
    // The guardian exists before the job does: there is no moment at which killing cgjob
    // would leave the job running unsupervised. It acts on the cgroup; without one, in a
    // PID namespace the kernel kills every process of it when its PID 1 dies, and as a
    // subreaper the main process gets SIGKILL (its descendants are out of reach then: the
    // documented weakness of that mode).
    let v1_cgroups: Vec<&Cgroup> = prep
        .limits
        .iter()
        .flat_map(|l| l.v1.iter().map(|v| &v.cg))
        .collect();
    let guardian = match (cg, method) {
        (Some(c), Some(m)) => {
            Some(
                Guardian::start(c, &v1_cgroups, m).map_err(|source| RunError::Setup {
                    what: "start the guardian process",
                    source,
                })?,
            )
        }
        _ => None,
    };
    let release = |g: Option<Guardian>| {
        if let Some(g) = g {
            g.release();
        }
    };
    // Job control: the command gets its own process group, in the terminal's foreground if
    // cgjob is there now.
    let tty = Terminal::of_session();

    let spec = SpawnSpec {
        argv: &cfg.command,
        cgroup: cg,
        method: cfg.spawn,
        parent_death_signal: (prep.containment == Containment::Subreaper).then_some(libc::SIGKILL),
        foreground_tty: tty.filter(|t| t.ours_in_front()).map(|t| t.fd()),
        sigmask: old_mask,
        nofile,
        v1_joins: &v1_joins,
    };
    let launch = match spawn::spawn(&spec) {
        Ok(s) => s,
        Err(e) => {
            release(guardian);
            return Err(e.into());
        }
    };

    // While the kernel loads the command on another CPU, finish what need not come first.
    if let Some(c) = cg {
        if let Err(e) = meta::write(c, &JobMeta::for_self("run")) {
            tracing::warn!(error = %e, "cannot record the job's owner on its cgroup; `cgjob gc` will not recognise it");
        }
    }
    let setup = || -> Result<Epoll, RunError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(RunError::setup("create an epoll set"))?;
        let add = |fd: BorrowedFd<'_>, flags: EpollFlags, tag: u64| {
            epoll
                .add(fd, EpollEvent::new(flags, tag))
                .map_err(RunError::setup("watch a descriptor"))
        };
        add(sfd.as_fd(), EpollFlags::EPOLLIN, TAG_SIGNAL)?;
        add(launch.pidfd().as_fd(), EpollFlags::EPOLLIN, TAG_MAIN)?;
        if let Some(ev) = &events {
            add(ev.fd(), EpollFlags::EPOLLPRI, TAG_EVENTS)?;
        }
        Ok(epoll)
    };
    let epoll = setup();
    let child = match launch.wait_exec() {
        Ok(c) => c,
        Err(e) => {
            release(guardian);
            return Err(e.into());
        }
    };
    let epoll = epoll?;
    tracing::info!(pid = child.pid, containment = %prep.containment, cgroup = cg.map(|c| c.path().display().to_string()), method = %child.method, "started");
    // From here on the job runs: its cgroup is removed by the end-of-job sweep, not on error.
    cleanup.0 = None;

    let self_pid = std::process::id() as i32;
    let guardian_pid = guardian.as_ref().map(|g| g.pid());
    let scope = match (job_cg, prep.containment) {
        (Some(j), _) => Scope::Cgroup(&j.cg),
        (None, Containment::PidNamespace) => Scope::Namespace,
        (None, _) => Scope::Descendants,
    };
    let mut exclude = vec![self_pid, child.pid];
    exclude.extend(guardian_pid);
    let mut sup = Supervisor {
        cfg,
        cgroup: match (cg, &events, method) {
            (Some(cg), Some(events), Some(method)) => Some(CgroupCtl { cg, events, method }),
            _ => None,
        },
        scope,
        epoll: &epoll,
        main: Some(child.pidfd),
        main_pid: child.pid,
        main_exit: None,
        main_exit_at: None,
        empty_at: None,
        esc: Escalation::new(cfg.ladder.clone(), started),
        tracker: Tracker::new(
            self_pid,
            &exclude,
            job_cg
                .map(|j| place::proc_view(&j.hier, &j.cg))
                .unwrap_or_default(),
        ),
        watched: HashSet::new(),
        tree_watched: 0,
        kill_passes: 0,
        tty,
        guardian_pid,
    };
    let res = sup.supervise(&sfd);

    // The end-of-job sweep.
    let unkillable = matches!(sup.esc.phase(), Phase::Done { unkillable: true });
    sup.tracker.mark_at_end();
    reap::reap_ready();
    let (cpu, usage, removed) = match cg {
        Some(c) => {
            let cpu = c.cpu_stat().ok().map(|s| CpuUsage::from_stat(&s));
            let usage = match &prep.limits {
                Some(l) => l.usage(c),
                None => crate::cgroup::limits::usage_v2(c),
            };
            let removed = !unkillable
                && match c.remove() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot remove the job cgroup");
                        false
                    }
                };
            (cpu, Some(usage), Some(removed))
        }
        None => (CpuUsage::of_children(), None, None),
    };
    drop(v1_joins);
    // The v1 cgroups go with the v2 one (a process of the job still in them keeps them).
    let limits = prep.limits.as_ref().map(|l| {
        let v1_removed = (!l.v1.is_empty()).then(|| removed == Some(true) && l.remove_v1());
        l.record(v1_removed)
    });
    if let Some(t) = tty {
        t.take_back_from(sup.main_pid);
    }
    // Dismissed now, the guardian exits while the record is built; it is reaped last.
    let guardian = guardian.map(Guardian::dismiss);
    res?;
    let timeout_phase = sup.esc.timeout_phase();
    let exit_status = policy::exit_status(sup.main_exit, timeout_phase, unkillable);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let record = JobRecord {
        version: 1,
        name: name.to_string(),
        containment: prep.containment,
        cgroup: cg.map(|c| c.path().to_owned()),
        command: cfg
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        supervisor_pid: self_pid,
        main_pid: Some(sup.main_pid),
        spawn_method: Some(child.method),
        started_at: humantime::format_rfc3339_millis(started_wall).to_string(),
        ended_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        duration_ms: ms(started.elapsed()),
        exit: sup.main_exit,
        exit_status,
        timeout: TimeoutRecord {
            limit_ms: cfg.ladder.timeout.map(|t| t.as_millis() as u64),
            phase: timeout_phase,
        },
        leftover_policy: cfg.ladder.leftovers,
        leftovers: std::mem::take(&mut sup.tracker.leftovers),
        kill_method: method,
        kill_passes: sup.kill_passes,
        main_exit_to_empty_ms: match (sup.main_exit_at, sup.empty_at) {
            (Some(a), Some(b)) => Some(ms(b.saturating_duration_since(a))),
            _ => None,
        },
        cpu,
        oom_killed: oom_killed(sup.main_exit, timeout_phase, usage.as_ref()),
        limits,
        usage,
        unkillable,
        cgroup_removed: removed,
    };
    if let Some(g) = guardian {
        g.reap();
    }
    Ok(record)
}

/// The main process died of the OOM killer: SIGKILL, not sent by cgjob at a timeout, and the
/// job's memory cgroup counted an OOM kill.
fn oom_killed(
    exit: Option<MainExit>,
    timeout: policy::TimeoutPhase,
    usage: Option<&Usage>,
) -> bool {
    matches!(
        exit,
        Some(MainExit::Signal {
            signal: libc::SIGKILL,
            ..
        })
    ) && timeout != policy::TimeoutPhase::Killed
        && usage.and_then(|u| u.oom_kills).unwrap_or(0) > 0
}

struct Supervisor<'a> {
    cfg: &'a RunConfig,
    /// `None` without a cgroup.
    cgroup: Option<CgroupCtl<'a>>,
    /// Which processes are the job's.
    scope: Scope<'a>,
    epoll: &'a Epoll,
    main: Option<PidFd>,
    main_pid: i32,
    main_exit: Option<MainExit>,
    main_exit_at: Option<Instant>,
    empty_at: Option<Instant>,
    esc: Escalation,
    tracker: Tracker,
    /// Leftover pids whose pidfds are in the epoll set.
    watched: HashSet<i32>,
    /// Without a cgroup: how many of the tracker's records have their pidfd in the epoll set.
    tree_watched: usize,
    kill_passes: u32,
    tty: Option<Terminal>,
    guardian_pid: Option<i32>,
}

impl Supervisor<'_> {
    fn supervise(&mut self, sfd: &SignalFd) -> Result<(), RunError> {
        let mut evbuf = [EpollEvent::empty(); 32];
        loop {
            let timeout = match self.esc.next_deadline() {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up: waking before the deadline would spin.
                    let ms = left.as_micros().div_ceil(1000);
                    EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
                }
                None => EpollTimeout::NONE,
            };
            let n = match self.epoll.wait(&mut evbuf, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    return Err(RunError::Setup {
                        what: "wait for events",
                        source: e.into(),
                    })
                }
            };
            if let Some(c) = self
                .cgroup
                .as_ref()
                .filter(|_| evbuf[..n].iter().any(|e| e.data() == TAG_EVENTS))
            {
                // Reading re-arms the notification (kernfs reports EPOLLPRI until the file is
                // read again); emptiness itself is judged below, from a fresh read.
                match c.events.read() {
                    Ok(_) => {}
                    Err(e) if e.is_gone() => {
                        let _ = self.epoll.delete(c.events.fd());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let now = Instant::now();

            while let Ok(Some(si)) = sfd.read_signal() {
                let sig = si.ssi_signo as i32;
                match sig {
                    libc::SIGCHLD | libc::SIGTTOU | libc::SIGTTIN => continue,
                    // Ctrl-Z while cgjob's group has the terminal (started with `&`, then
                    // `fg`): stop the job; its stop then stops cgjob (see `suspend`).
                    libc::SIGTSTP => {
                        if self.main.is_some() {
                            let target = if self.tty.is_some() {
                                -self.main_pid
                            } else {
                                self.main_pid
                            };
                            // SAFETY: plain syscall.
                            unsafe { libc::kill(target, libc::SIGTSTP) };
                        }
                        continue;
                    }
                    libc::SIGCONT => self.resume_job(),
                    _ => {}
                }
                tracing::debug!(signal = %signals::name(sig), "received");
                let acts = self.esc.on(Event::Signal(sig), now);
                if self.act(acts)? {
                    return Ok(());
                }
            }

            if self.reap(now)? {
                let empty = self.is_empty()?;
                let acts = self.esc.on(Event::MainExited { empty }, now);
                if empty {
                    self.empty_at = Some(Instant::now());
                }
                if self.act(acts)? {
                    return Ok(());
                }
            }

            if self.esc.wants_empty() && self.is_empty()? {
                self.empty_at = Some(Instant::now());
                let acts = self.esc.on(Event::Empty, Instant::now());
                if self.act(acts)? {
                    return Ok(());
                }
            }

            let acts = self.esc.on(Event::Tick, Instant::now());
            if self.act(acts)? {
                return Ok(());
            }
        }
    }

    /// Reap every ready child. Returns true when the main process has just exited.
    fn reap(&mut self, now: Instant) -> Result<bool, RunError> {
        let mut main_done = false;
        for st in reap::reap_ready() {
            match st {
                WaitStatus::Exited(pid, code) if pid.as_raw() == self.main_pid => {
                    self.main_exit = Some(MainExit::Code(code));
                    main_done = true;
                }
                WaitStatus::Signaled(pid, sig, core) if pid.as_raw() == self.main_pid => {
                    self.main_exit = Some(MainExit::Signal {
                        signal: sig as i32,
                        core_dumped: core,
                    });
                    main_done = true;
                }
                WaitStatus::Stopped(pid, sig) if pid.as_raw() == self.main_pid => {
                    use nix::sys::signal::Signal::*;
                    if matches!(sig, SIGTSTP | SIGTTIN | SIGTTOU) {
                        self.suspend();
                    }
                }
                WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)
                    if Some(pid.as_raw()) == self.guardian_pid =>
                {
                    tracing::warn!(
                        pid = pid.as_raw(),
                        "the guardian process died; the job is unguarded should cgjob be killed"
                    );
                }
                _ => {}
            }
        }
        if main_done {
            if let Some(m) = self.main.take() {
                let _ = self.epoll.delete(m.as_fd());
            }
            self.main_exit_at = Some(now);
            if let Some(e) = self.main_exit {
                tracing::info!(status = %e, "main process exited");
            }
        }
        Ok(main_done)
    }

    /// The main process was stopped by the terminal (Ctrl-Z, or a read or write from the
    /// background): stop cgjob too, so that the shell sees the job stopped — taking the
    /// terminal back first if the job had it. When continued (`fg`, `bg`), continue the job,
    /// and give it the terminal if the shell gave it to cgjob.
    fn suspend(&mut self) {
        let Some(t) = self.tty else { return };
        t.take_back_from(self.main_pid);
        // SAFETY: plain syscalls. SIGSTOP, because cgjob blocks the terminal stop signals.
        unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        self.resume_job();
    }

    /// cgjob was continued: if it holds the terminal, hand it to the job's group; continue
    /// the group.
    fn resume_job(&mut self) {
        let Some(t) = self.tty else { return };
        if self.main.is_none() {
            return;
        }
        if t.ours_in_front() {
            t.give_to(self.main_pid);
        }
        // SAFETY: plain syscall.
        unsafe { libc::kill(-self.main_pid, libc::SIGCONT) };
    }

    /// Nothing of the job is left: the cgroup is not populated, no descendant of cgjob that
    /// left it is alive, and every recorded leftover has finished exiting (so that its
    /// children have been handed to us and can be reaped).
    fn is_empty(&mut self) -> Result<bool, RunError> {
        let Some(c) = &self.cgroup else {
            return self.tree_is_empty();
        };
        let (cg, events) = (c.cg, c.events);
        let populated = match events.read() {
            Ok(e) => e.populated,
            Err(e) if e.is_gone() => false,
            Err(e) => return Err(e.into()),
        };
        // The main process can have left the cgroup (a root job may move itself): the job
        // is not over while it runs.
        if populated || self.main.is_some() {
            return Ok(false);
        }
        // Reap first: a zombie child would look like a descendant to examine.
        reap::reap_ready();
        if self.tracker.has_other_descendants()
            && self.tracker.scan(cg)? > 0
            && matches!(self.esc.phase(), Phase::Killing { .. })
        {
            self.tracker.mark_at_kill();
            self.tracker.kill_escaped();
        }
        let pending: Vec<(i32, RawFd)> = self
            .tracker
            .alive()
            .filter(|l| l.ended_by != Some(super::leftovers::EndedBy::Unkillable))
            .filter_map(|l| l.pidfd().map(|p| (l.pid, p.as_fd().as_raw_fd())))
            .collect();
        if pending.is_empty() {
            return Ok(true);
        }
        for (pid, fd) in pending {
            if self.watched.insert(pid) {
                // SAFETY: the fd is owned by the tracker, which outlives the epoll set's use.
                let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = self.epoll.add(
                    bfd,
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, TAG_LEFTOVER),
                );
            }
        }
        Ok(false)
    }

    /// [`Supervisor::is_empty`] without a cgroup: the main process is gone, no recorded
    /// process is alive, and a fresh look at the scope finds no other. The look is taken only
    /// once every recorded process is gone — while one lives the job is not over anyway, and
    /// the exit of the last wakes the loop (a process's pidfd reports its exit after its
    /// children were handed on, so none is missed) — which keeps a large job's end from
    /// walking the tree at every exit.
    fn tree_is_empty(&mut self) -> Result<bool, RunError> {
        if self.main.is_some() {
            return Ok(false);
        }
        reap::reap_ready();
        if self.watch_alive() {
            return Ok(false);
        }
        let found = self.tracker.scan_in(&self.scope)?;
        if found > 0 && matches!(self.esc.phase(), Phase::Killing { .. }) {
            // Forked while being killed: killed in turn.
            self.tracker.mark_at_kill();
            self.tracker.kill_escaped();
        }
        Ok(!self.watch_alive())
    }

    /// Watch the pidfd of every recorded leftover not watched yet (records are only ever
    /// appended, so an index marks them; a pid can be recorded twice, reused); whether any may
    /// be alive.
    fn watch_alive(&mut self) -> bool {
        let from = self.tree_watched;
        self.tree_watched = self.tracker.leftovers.len();
        for l in &self.tracker.leftovers[from..] {
            let Some(p) = l.pidfd() else { continue };
            if !l.is_gone() {
                // SAFETY: the fd is owned by the tracker, which outlives the epoll set's use.
                let bfd = unsafe { BorrowedFd::borrow_raw(p.as_fd().as_raw_fd()) };
                let _ = self.epoll.add(
                    bfd,
                    EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, TAG_LEFTOVER),
                );
            }
        }
        self.tracker.any_alive()
    }

    /// Carry out actions; true when supervision is over.
    fn act(&mut self, acts: Vec<Action>) -> Result<bool, RunError> {
        for (i, a) in acts.iter().enumerate() {
            tracing::debug!(action = ?a, "escalation");
            match a {
                Action::Forward(sig) => self.forward(*sig)?,
                Action::SignalMain(sig) => {
                    tracing::info!(signal = %signals::name(*sig), "timeout: signalling the main process");
                    if let Some(m) = &self.main {
                        let _ = m.send(*sig);
                        if *sig != libc::SIGKILL && *sig != libc::SIGCONT {
                            let _ = m.send(libc::SIGCONT);
                        }
                    }
                }
                // A snapshot right before SIGTERM is taken by the SIGTERM step itself.
                Action::Snapshot if acts.get(i + 1) == Some(&Action::TermLeftovers) => {}
                Action::Snapshot => self.record_all(None)?,
                Action::TermLeftovers => self.record_all(Some(libc::SIGTERM))?,
                Action::KillPass => self.kill_pass()?,
                Action::Finish => return Ok(true),
            }
        }
        Ok(false)
    }

    fn forward(&mut self, sig: i32) -> Result<(), RunError> {
        match (&self.main, self.cfg.forward_to, &self.cgroup) {
            (Some(m), ForwardTo::Main, _) => {
                if let Err(e) = m.send(sig) {
                    tracing::warn!(signal = %signals::name(sig), error = %e, "cannot forward signal");
                }
            }
            (_, _, Some(c)) => {
                kill::signal_each(c.cg, sig)?;
            }
            (_, _, None) => {
                let me = std::process::id() as i32;
                for pid in self.scope.tree_members(me) {
                    if Some(pid) != self.guardian_pid {
                        let _ = crate::process::pidfd::signal_pid(pid, sig);
                    }
                }
            }
        }
        Ok(())
    }

    /// Record every process of the job as it is now, and with `sig`, ask them all to leave —
    /// at once. The processes are described while they run (no freeze: freezing wakes every
    /// task, ~20 ms for 1000 here); then, for the signal only, the cgroup is frozen, what was
    /// born meanwhile is recorded too, everything gets `sig` (and SIGCONT if stopped, as
    /// systemd does), and the thaw delivers it to all together. Signalled one by one while
    /// running, a parent would see its child die of the signal and act on it first (a
    /// `(sleep; echo late)` printing "late") — the job would not be asked to leave as a whole.
    /// Without a cgroup there is no freezer: a second look catches forks under way.
    fn record_all(&mut self, sig: Option<i32>) -> Result<(), RunError> {
        let mut total = {
            let found = self.tracker.snapshot_in(&self.scope, true)?;
            self.tracker.describe(found)
        };
        if let Some(sig) = sig {
            let frozen = match &self.cgroup {
                Some(c) if c.cg.has_file("cgroup.freeze") => {
                    kill::freeze(c.cg, c.events, Instant::now() + FREEZE_WAIT)?;
                    Some(c.cg)
                }
                _ => None,
            };
            // Born since the look above (the fork under way), before anyone is signalled.
            let late = self
                .tracker
                .snapshot_in(&self.scope, false)
                .map(|found| self.tracker.describe(found));
            self.tracker.signal_all(sig, true);
            self.tracker.continue_stopped();
            if let Some(cg) = frozen {
                kill::thaw(cg)?;
            }
            total += late?;
        }
        tracing::info!(
            new = total,
            signal = sig.map(signals::name),
            "leftovers recorded"
        );
        Ok(())
    }

    fn kill_pass(&mut self) -> Result<(), RunError> {
        self.kill_passes += 1;
        let Some(c) = &self.cgroup else {
            return self.tree_kill_pass();
        };
        let (cg, events, method) = (c.cg, c.events, c.method);
        let populated = events.read().map(|e| e.populated).unwrap_or(false);
        let freezable = populated && cg.has_file("cgroup.freeze");
        if freezable {
            kill::freeze(cg, events, Instant::now() + FREEZE_WAIT)?;
        }
        let scanned = self.tracker.scan(cg);
        self.tracker.mark_at_kill();
        let res = kill::kill_pass(cg, events, method, Instant::now() + FREEZE_WAIT);
        if freezable {
            kill::thaw(cg)?;
        }
        self.tracker.kill_escaped();
        if let Some(m) = &self.main {
            // Usually inside and killed with the cgroup; not if it moved itself out.
            let _ = m.send(libc::SIGKILL);
        }
        scanned?;
        res?;
        tracing::info!(pass = self.kill_passes, method = %method, "kill pass");
        Ok(())
    }

    /// A kill pass without a cgroup, hence without a freezer: the main process first (so
    /// that it starts nothing more), then rounds of "find what is new, record it, SIGKILL
    /// everything recorded and alive" until a round finds nothing new. A SIGKILL makes the
    /// kernel fail any fork the process has not finished, so each round leaves only the
    /// children of forks that were already completing; the next round finds those.
    fn tree_kill_pass(&mut self) -> Result<(), RunError> {
        if let Some(m) = &self.main {
            let _ = m.send(libc::SIGKILL);
        }
        let mut rounds = 0;
        for _ in 0..TREE_KILL_ROUNDS {
            rounds += 1;
            // Through `reap`, which keeps the main process's status should it be among them
            // (a Killing phase ignores the event itself).
            self.reap(Instant::now())?;
            let found = self.tracker.scan_in(&self.scope)?;
            self.tracker.mark_at_kill();
            self.tracker.kill_escaped();
            if found == 0 {
                break;
            }
        }
        tracing::info!(pass = self.kill_passes, rounds, scope = ?self.scope, "kill pass");
        Ok(())
    }
}
