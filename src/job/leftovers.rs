//! POLICY: the processes of a job that outlived its main process — found in the job cgroup, or
//! among cgjob's descendants that left it — recorded with what /proc says of them, and followed
//! through pidfds until they are gone. The Grid Engine "rogue process" report, as data.
//!
//! Without a cgroup the job is what the containment mode makes it (a [`Scope`]): cgjob's
//! descendants (subreaper), or every process of cgjob's PID namespace (cgjob is its PID 1).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::{Cgroup, CgroupFsError};
use crate::process::procinfo;
use crate::process::PidFd;

/// How a leftover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndedBy {
    /// Exited by itself while cgjob let it run (`--leftovers wait`).
    Exited,
    /// Exited after SIGTERM, within the grace period.
    ExitedDuringGrace,
    /// Killed with SIGKILL.
    Killed,
    /// Still there after every kill (uninterruptible sleep).
    Unkillable,
}

/// One leftover process. (Deserialized from the daemon's replies: without the pidfd.)
#[derive(Debug, Serialize, Deserialize)]
pub struct Leftover {
    pub pid: i32,
    pub ppid: i32,
    pub uid: Option<u32>,
    /// The state letter from /proc (`S`, `R`, `D`, `T`, …) when it was found.
    pub state: String,
    /// Start time, RFC 3339.
    pub start_time: Option<String>,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// `false` when the process had left the job cgroup (found as cgjob's descendant).
    pub in_cgroup: bool,
    pub ended_by: Option<EndedBy>,
    /// For unkillable processes: the kernel function it sleeps in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wchan: Option<String>,
    #[serde(skip)]
    start_ticks: u64,
    #[serde(skip)]
    pidfd: Option<PidFd>,
    #[serde(skip)]
    termed: bool,
    /// Seen exited once (a pidfd stays readable): no need to ask again.
    #[serde(skip)]
    gone: std::cell::Cell<bool>,
}

impl Leftover {
    /// Describe a live process from its `stat` (as /proc names it) and a few more reads.
    fn read(
        stat: &procinfo::Stat,
        in_cgroup: bool,
        boot: Option<u64>,
        ticks: u64,
        pidfd: Option<PidFd>,
        info: Option<crate::process::pidfd::PidInfo>,
    ) -> Leftover {
        let pid = stat.pid;
        let uid = info.map(|i| i.ruid).or_else(|| procinfo::read_uid(pid));
        let start_time = boot.map(|b| {
            let secs = b + stat.start_ticks / ticks;
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()
        });
        Leftover {
            pid,
            ppid: stat.ppid,
            uid,
            state: stat.state.to_string(),
            start_time,
            comm: stat.comm.clone(),
            cmdline: procinfo::read_cmdline(pid),
            in_cgroup,
            ended_by: None,
            wchan: None,
            start_ticks: stat.start_ticks,
            pidfd,
            termed: false,
            gone: Default::default(),
        }
    }

    pub fn pidfd(&self) -> Option<&PidFd> {
        self.pidfd.as_ref()
    }

    /// Gone for good: exited and handed its children on (its pidfd is readable), or never
    /// openable.
    pub fn is_gone(&self) -> bool {
        if !self.gone.get() && self.pidfd.as_ref().is_none_or(|p| p.has_exited()) {
            self.gone.set(true);
        }
        self.gone.get()
    }

    /// A compact human form: `pid 123 (uid 1000) sleep 1000`.
    pub fn describe(&self) -> String {
        let cmd = if self.cmdline.is_empty() {
            format!("[{}]", self.comm)
        } else {
            self.cmdline.join(" ")
        };
        let uid = self.uid.map(|u| format!(" uid {u}")).unwrap_or_default();
        format!("pid {}{uid} {cmd}", self.pid)
    }
}

/// Which processes make up a job.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everything in the job cgroup's subtree, and every descendant of cgjob that left it.
    Cgroup(&'a Cgroup),
    /// Every descendant of cgjob (subreaper containment: no cgroup).
    Descendants,
    /// Every process of cgjob's PID namespace but cgjob, its PID 1.
    Namespace,
}

impl Scope<'_> {
    /// The pids of the job's processes now, seen from cgjob (`supervisor`), excluded ones
    /// included; for the scopes without a cgroup, which need a /proc of cgjob's own PID
    /// namespace (checked when the containment was chosen).
    pub fn tree_members(&self, supervisor: i32) -> Vec<i32> {
        match self {
            Scope::Cgroup(_) => Vec::new(),
            Scope::Namespace => procinfo::all_pids()
                .into_iter()
                .filter(|p| *p != supervisor)
                .collect(),
            Scope::Descendants => procinfo::descendants(supervisor)
                .unwrap_or_else(|| procinfo::descendants_in(supervisor, &procinfo::all_stats())),
        }
    }
}

/// A process found by [`Tracker::snapshot`], not yet described.
#[derive(Debug)]
pub struct Found {
    /// The pid as cgjob (and the job) see it.
    pid: i32,
    /// The pid as /proc names it (differs when /proc is another PID namespace's).
    proc_pid: Option<i32>,
    /// `stat` read during the snapshot, when the descendant walk needed it anyway.
    stat: Option<procinfo::Stat>,
    pidfd: Option<PidFd>,
    in_cgroup: bool,
}

/// The leftovers of one job.
#[derive(Debug)]
pub struct Tracker {
    /// Processes never reported: cgjob itself, its guardian, the main process.
    exclude: HashSet<i32>,
    /// The supervisor's pid, root of the descendant walk (none for a cgroup-only sweep).
    supervisor: Option<i32>,
    /// The job cgroup as /proc/PID/cgroup shows it, to tell a new child from an escapee.
    cgroup_in_proc: PathBuf,
    /// Index into `leftovers` by pid, to know a pid already recorded (while its process
    /// lives, a pid names it alone).
    by_pid: HashMap<i32, usize>,
    pub leftovers: Vec<Leftover>,
    boot_time: Option<u64>,
    ticks: u64,
    warned_foreign_proc: bool,
    /// Said once: pidfds could not be opened for want of descriptors.
    warned_no_fds: bool,
    /// Pidfds held, and how many may be: the descriptor limit less [`FD_RESERVE`].
    pidfds: usize,
    pidfd_budget: usize,
}

/// Descriptors never spent on pidfds: cgroupfs and /proc I/O, epoll, the report need them.
const FD_RESERVE: usize = 64;

fn pidfd_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return usize::MAX;
    }
    (lim.rlim_cur as usize).saturating_sub(FD_RESERVE)
}

impl Tracker {
    pub fn new(supervisor: i32, exclude: &[i32], cgroup_in_proc: PathBuf) -> Self {
        Tracker {
            exclude: exclude.iter().copied().collect(),
            supervisor: Some(supervisor),
            cgroup_in_proc,
            by_pid: HashMap::new(),
            leftovers: Vec::new(),
            boot_time: None,
            ticks: procinfo::clock_ticks(),
            warned_foreign_proc: false,
            warned_no_fds: false,
            pidfds: 0,
            pidfd_budget: pidfd_budget(),
        }
    }

    /// A tracker of what is in a cgroup only, for a job whose supervisor is gone.
    pub fn cgroup_only() -> Self {
        let mut t = Tracker::new(0, &[], PathBuf::new());
        t.supervisor = None;
        t
    }

    /// Whether cgjob has any descendant other than the excluded ones (its guardian). Cheap:
    /// one read of its own `children` file in the common case.
    pub fn has_other_descendants(&self) -> bool {
        let Some(sup) = self.supervisor else {
            return false;
        };
        match procinfo::children(sup) {
            // A child already recorded and still alive is followed through its pidfd; a new
            // child (an orphan just handed to us, or one whose pid was reused) is not.
            Some(c) => c
                .iter()
                .any(|p| !self.exclude.contains(p) && !self.known(*p)),
            // No `children` file on this kernel: assume there may be some.
            None => true,
        }
    }

    fn known(&self, pid: i32) -> bool {
        // One recorded without a pidfd (out of descriptors) cannot be told from a successor
        // under its pid: counted as known, rather than recorded again at every pass.
        self.by_pid.get(&pid).is_some_and(|i| {
            let l = &self.leftovers[*i];
            l.pidfd().is_none() || !l.is_gone()
        })
    }

    /// Find processes not recorded yet: everything in the cgroup's subtree and every live
    /// descendant of cgjob outside it. Cheap enough to run while the job is frozen: a pidfd
    /// per process (which also pins its identity for later), and `stat` only when the
    /// descendant walk needs the parent links anyway.
    ///
    /// Escapees are found by walking cgjob's descendants (as a subreaper, every orphan of the
    /// job is one), with one pass over /proc/*/stat.
    pub fn snapshot(&mut self, cg: &Cgroup) -> Result<Vec<Found>, CgroupFsError> {
        self.snapshot_with(cg, true)
    }

    /// [`Tracker::snapshot`]; `walk: false` looks in the cgroup only (a second look for
    /// forks that were under way during the first).
    pub fn snapshot_with(&mut self, cg: &Cgroup, walk: bool) -> Result<Vec<Found>, CgroupFsError> {
        self.snapshot_in(&Scope::Cgroup(cg), walk)
    }

    /// [`Tracker::snapshot_with`] for any scope. Without a cgroup, the tree is walked every
    /// time (it is the only way to find the job's processes) and `walk` is ignored; what is
    /// found is reported with `in_cgroup: false` and killed through pidfds.
    pub fn snapshot_in(
        &mut self,
        scope: &Scope<'_>,
        walk: bool,
    ) -> Result<Vec<Found>, CgroupFsError> {
        let cg = match scope {
            Scope::Cgroup(cg) => *cg,
            Scope::Descendants | Scope::Namespace => return Ok(self.snapshot_tree(scope)),
        };
        let in_cg: HashSet<i32> = match cg.procs_recursive() {
            Ok(p) => p.into_iter().collect(),
            Err(e) if e.is_gone() => HashSet::new(),
            Err(e) => return Err(e),
        };
        let foreign = !procinfo::proc_is_ours();
        if foreign && !self.warned_foreign_proc {
            self.warned_foreign_proc = true;
            tracing::warn!("/proc belongs to another PID namespace (mount a fresh one, e.g. `unshare --pid --fork --mount-proc`): processes that left the job cgroup cannot be found");
        }
        let mut found: Vec<(i32, bool, Option<procinfo::Stat>)> = in_cg
            .iter()
            .filter(|p| !self.exclude.contains(p) && !self.known(**p))
            .map(|p| (*p, true, None))
            .collect();
        // The walk needs a /proc of our own PID namespace.
        if let (Some(sup), true, false) = (
            self.supervisor,
            walk && self.has_other_descendants(),
            foreign,
        ) {
            let all = procinfo::all_stats();
            let escapees: HashSet<i32> = procinfo::descendants_in(sup, &all)
                .into_iter()
                .filter(|p| !self.exclude.contains(p) && !in_cg.contains(p) && !self.known(*p))
                .collect();
            let mut stats: HashMap<i32, procinfo::Stat> =
                all.into_iter().map(|s| (s.pid, s)).collect();
            for f in found.iter_mut() {
                f.2 = stats.remove(&f.0);
            }
            for pid in escapees {
                // A child forked after the cgroup was read is inside: ask /proc.
                let inside = procinfo::read_cgroup2_path(pid)
                    .is_some_and(|p| p.starts_with(&self.cgroup_in_proc));
                found.push((pid, inside, stats.remove(&pid)));
            }
        }
        Ok(found
            .into_iter()
            .filter(|(_, _, st)| !matches!(st.as_ref().map(|s| s.state), Some('Z' | 'X')))
            .filter_map(|(pid, in_cgroup, stat)| {
                // Past the budget of descriptors, or out of them: still recorded (and killed
                // with its cgroup), not signalled one by one. Never left out of the record.
                let no_fds = |e: &dyn std::fmt::Display, warned: &mut bool| {
                    if !*warned {
                        *warned = true;
                        tracing::warn!(error = %e, "out of file descriptors for pidfds: the rest of the job's processes are recorded without one (raise RLIMIT_NOFILE)");
                    }
                };
                let pidfd = if self.pidfds >= self.pidfd_budget {
                    if !in_cgroup {
                        return None;
                    }
                    no_fds(&"descriptor limit reached", &mut self.warned_no_fds);
                    None
                } else {
                    match PidFd::open(pid) {
                        Ok(Some(fd)) => {
                            self.pidfds += 1;
                            Some(fd)
                        }
                        Ok(None) => return None,
                        Err(e)
                            if in_cgroup
                                && matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
                        {
                            no_fds(&e, &mut self.warned_no_fds);
                            None
                        }
                        Err(_) => return None,
                    }
                };
                let proc_pid = match &pidfd {
                    Some(fd) if foreign => procinfo::pid_in_proc(fd.as_fd().as_raw_fd()),
                    None if foreign => None,
                    _ => Some(pid),
                };
                Some(Found {
                    pid,
                    proc_pid,
                    stat,
                    pidfd,
                    in_cgroup,
                })
            })
            .collect())
    }

    fn snapshot_tree(&mut self, scope: &Scope<'_>) -> Vec<Found> {
        match self.supervisor {
            Some(sup) => self.found_outside(&scope.tree_members(sup)),
            None => Vec::new(),
        }
    }

    /// Processes of the job found by pid rather than in its cgroup — by their environment
    /// (the sweep), or by walking cgjob's tree when there is no cgroup — for
    /// [`Tracker::describe`]. Known and excluded ones are left out.
    pub fn found_outside(&self, pids: &[i32]) -> Vec<Found> {
        pids.iter()
            .filter(|p| !self.exclude.contains(p) && !self.known(**p))
            .filter_map(|&pid| {
                let pidfd = PidFd::open(pid).ok().flatten()?;
                Some(Found {
                    pid,
                    proc_pid: Some(pid),
                    stat: None,
                    pidfd: Some(pidfd),
                    in_cgroup: false,
                })
            })
            .collect()
    }

    /// Describe what a snapshot found (state, start time, uid, command line) and record it.
    /// Returns how many were recorded.
    pub fn describe(&mut self, found: Vec<Found>) -> usize {
        if found.is_empty() {
            return 0;
        }
        if self.boot_time.is_none() {
            self.boot_time = procinfo::boot_time();
        }
        let (boot, ticks) = (self.boot_time, self.ticks);
        let one = |f: Found| -> Option<Leftover> {
            let stat = f.stat.or_else(|| f.proc_pid.and_then(procinfo::read_stat));
            let stat = match stat {
                Some(st) => st,
                // Out of descriptors even to read /proc: a process of the cgroup that is still
                // there is recorded with what is known of it.
                None if f.in_cgroup
                    && match &f.pidfd {
                        Some(p) => !p.has_exited(),
                        None => std::fs::metadata(format!("/proc/{}", f.pid)).is_ok(),
                    } =>
                {
                    procinfo::Stat {
                        pid: f.pid,
                        comm: "?".into(),
                        state: '?',
                        ppid: 0,
                        start_ticks: 0,
                    }
                }
                None => return None,
            };
            let stat = Some(stat).filter(|s| !matches!(s.state, 'Z' | 'X'))?;
            let info = f.pidfd.as_ref().and_then(|p| p.info());
            let mut l = Leftover::read(&stat, f.in_cgroup, boot, ticks, f.pidfd, info);
            // As the job sees them (they differ when /proc is another namespace's).
            l.pid = f.pid;
            if f.proc_pid != Some(f.pid) {
                l.ppid = info.map_or(0, |i| i.ppid as i32);
            }
            Some(l)
        };
        // A few /proc reads and syscalls per process, all CPU: with many, use two CPUs.
        let mut recs: Vec<Leftover> = if found.len() >= 256 {
            let mut found = found;
            let rest = found.split_off(found.len() / 2);
            std::thread::scope(|sc| {
                let other = sc.spawn(|| rest.into_iter().filter_map(one).collect::<Vec<_>>());
                let mut mine: Vec<Leftover> = found.into_iter().filter_map(one).collect();
                mine.append(&mut other.join().unwrap_or_default());
                mine
            })
        } else {
            found.into_iter().filter_map(one).collect()
        };
        let n = recs.len();
        let base = self.leftovers.len();
        for (i, l) in recs.iter().enumerate() {
            self.by_pid.insert(l.pid, base + i);
        }
        self.leftovers.append(&mut recs);
        n
    }

    /// [`Tracker::snapshot`] then [`Tracker::describe`], signalling nothing.
    pub fn scan(&mut self, cg: &Cgroup) -> Result<usize, CgroupFsError> {
        self.scan_in(&Scope::Cgroup(cg))
    }

    /// [`Tracker::scan`] for any scope.
    pub fn scan_in(&mut self, scope: &Scope<'_>) -> Result<usize, CgroupFsError> {
        let found = self.snapshot_in(scope, true)?;
        Ok(self.describe(found))
    }

    /// Whether a recorded leftover (not given up on as unkillable) may still be alive. Stops
    /// at the first: called on every wake-up while a job without a cgroup ends.
    pub fn any_alive(&self) -> bool {
        self.leftovers
            .iter()
            .any(|l| l.ended_by != Some(EndedBy::Unkillable) && !l.is_gone())
    }

    /// Leftovers not gone yet, whatever was done to them.
    pub fn alive(&self) -> impl Iterator<Item = &Leftover> {
        self.leftovers.iter().filter(|l| !l.is_gone())
    }

    /// Leftovers outside the cgroup that are still alive: the cgroup cannot kill these.
    pub fn escaped_alive(&self) -> impl Iterator<Item = &Leftover> {
        self.alive().filter(|l| !l.in_cgroup)
    }

    /// Signal every recorded leftover still alive (through its pidfd). With `polite`, they
    /// are marked as asked to leave, so that those gone by the kill count as having exited
    /// during the grace period.
    pub fn signal_all(&mut self, sig: i32, polite: bool) {
        let skip_termed = polite;
        for l in self
            .leftovers
            .iter_mut()
            .filter(|l| l.ended_by.is_none() && !(skip_termed && l.termed))
        {
            if let Some(p) = &l.pidfd {
                if let Err(e) = p.send(sig) {
                    tracing::warn!(pid = l.pid, signal = sig, error = %e, "cannot signal leftover");
                }
            }
            if polite {
                l.termed = true;
            }
        }
    }

    /// SIGCONT the leftovers that were stopped when recorded, so that they act on a SIGTERM.
    pub fn continue_stopped(&self) {
        for l in self.leftovers.iter().filter(|l| l.ended_by.is_none()) {
            if matches!(l.state.as_str(), "T" | "t") {
                if let Some(p) = &l.pidfd {
                    let _ = p.send(libc::SIGCONT);
                }
            }
        }
    }

    /// SIGKILL the escaped ones (the cgroup kill does not reach them).
    pub fn kill_escaped(&self) {
        for l in self.escaped_alive() {
            if let Some(p) = &l.pidfd {
                let _ = p.send(libc::SIGKILL);
            }
        }
    }

    /// At a kill: everything recorded and gone by now left on its own; the rest is killed.
    pub fn mark_at_kill(&mut self) {
        for l in self.leftovers.iter_mut().filter(|l| l.ended_by.is_none()) {
            l.ended_by = Some(if !l.is_gone() {
                EndedBy::Killed
            } else if l.termed {
                EndedBy::ExitedDuringGrace
            } else {
                EndedBy::Exited
            });
        }
    }

    /// At the end: settle every leftover's fate; those still alive are unkillable, with
    /// their current state and wait channel.
    pub fn mark_at_end(&mut self) {
        for l in self.leftovers.iter_mut() {
            if !l.is_gone() {
                l.ended_by = Some(EndedBy::Unkillable);
                if let Some(s) =
                    procinfo::read_stat(l.pid).filter(|s| s.start_ticks == l.start_ticks)
                {
                    l.state = s.state.to_string();
                }
                l.wchan = procinfo::read_wchan(l.pid);
            } else if l.ended_by.is_none() {
                l.ended_by = Some(if l.termed {
                    EndedBy::ExitedDuringGrace
                } else {
                    EndedBy::Exited
                });
            }
        }
    }
}
