//! POLICY: the processes of a job that outlived its main process — found in the job cgroup, or
//! among cgjob's descendants that left it — recorded with what /proc says of them, and followed
//! through pidfds until they are gone. The Grid Engine "rogue process" report, as data.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use serde::Serialize;

use crate::cgroup::{Cgroup, CgroupFsError};
use crate::process::procinfo;
use crate::process::PidFd;

/// How a leftover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// One leftover process.
#[derive(Debug, Serialize)]
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
}

impl Leftover {
    /// Describe a live process from its `stat` (as /proc names it) and a few more reads.
    fn read(
        stat: &procinfo::Stat,
        in_cgroup: bool,
        boot: Option<u64>,
        ticks: u64,
        pidfd: Option<PidFd>,
    ) -> Leftover {
        let pid = stat.pid;
        let uid = pidfd
            .as_ref()
            .and_then(|p| p.info())
            .map(|i| i.ruid)
            .or_else(|| procinfo::read_uid(pid));
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
        }
    }

    pub fn pidfd(&self) -> Option<&PidFd> {
        self.pidfd.as_ref()
    }

    /// Gone for good: exited and handed its children on (its pidfd is readable), or never
    /// openable.
    pub fn is_gone(&self) -> bool {
        self.pidfd.as_ref().map_or(true, |p| p.has_exited())
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

/// The leftovers of one job.
#[derive(Debug)]
pub struct Tracker {
    /// Processes never reported: cgjob itself, its guardian, the main process.
    exclude: HashSet<i32>,
    /// The supervisor's pid, root of the descendant walk (none for a cgroup-only sweep).
    supervisor: Option<i32>,
    /// The job cgroup as /proc/PID/cgroup shows it, to tell a new child from an escapee.
    cgroup_in_proc: PathBuf,
    seen: HashSet<(i32, u64)>,
    pub leftovers: Vec<Leftover>,
    boot_time: Option<u64>,
    ticks: u64,
    warned_foreign_proc: bool,
}

impl Tracker {
    pub fn new(supervisor: i32, exclude: &[i32], cgroup_in_proc: PathBuf) -> Self {
        Tracker {
            exclude: exclude.iter().copied().collect(),
            supervisor: Some(supervisor),
            cgroup_in_proc,
            seen: HashSet::new(),
            leftovers: Vec::new(),
            boot_time: None,
            ticks: procinfo::clock_ticks(),
            warned_foreign_proc: false,
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
            Some(c) => c.iter().any(|p| !self.exclude.contains(p)),
            // No `children` file on this kernel: assume there may be some.
            None => true,
        }
    }

    /// Find processes not seen before: everything in the cgroup's subtree and every live
    /// descendant of cgjob outside it. Returns how many were new.
    ///
    /// Escapees are found by walking cgjob's descendants (as a subreaper, every orphan of the
    /// job is one). The walk uses one pass over /proc/*/stat, whose results also serve the
    /// records, so a job with thousands of leftovers costs a few reads per process.
    pub fn scan(&mut self, cg: &Cgroup) -> Result<usize, CgroupFsError> {
        let in_cg: HashSet<i32> = match cg.procs_recursive() {
            Ok(p) => p.into_iter().collect(),
            Err(e) if e.is_gone() => HashSet::new(),
            Err(e) => return Err(e),
        };
        if !procinfo::proc_is_ours() {
            return Ok(self.record_bare(&in_cg));
        }
        let mut stats: HashMap<i32, procinfo::Stat> = HashMap::new();
        let mut found: Vec<(i32, bool)> = in_cg
            .iter()
            .filter(|p| !self.exclude.contains(p))
            .map(|p| (*p, true))
            .collect();
        if let (Some(sup), true) = (self.supervisor, self.has_other_descendants()) {
            let all = procinfo::all_stats();
            for pid in procinfo::descendants_in(sup, &all) {
                if self.exclude.contains(&pid) || in_cg.contains(&pid) {
                    continue;
                }
                // A child forked after the cgroup was read is inside: ask /proc.
                let inside = procinfo::read_cgroup2_path(pid)
                    .is_some_and(|p| p.starts_with(&self.cgroup_in_proc));
                found.push((pid, inside));
            }
            stats = all.into_iter().map(|s| (s.pid, s)).collect();
        }
        // New ones only (a pid is the same process only with the same start time).
        let todo: Vec<(procinfo::Stat, bool)> = found
            .into_iter()
            .filter_map(|(pid, inside)| {
                let stat = stats.remove(&pid).or_else(|| procinfo::read_stat(pid))?;
                let new =
                    !matches!(stat.state, 'Z' | 'X') && self.seen.insert((pid, stat.start_ticks));
                new.then_some((stat, inside))
            })
            .collect();
        if self.boot_time.is_none() && !todo.is_empty() {
            self.boot_time = procinfo::boot_time();
        }
        let (boot, ticks) = (self.boot_time, self.ticks);
        let describe = |part: &[(procinfo::Stat, bool)]| -> Vec<Leftover> {
            part.iter()
                .map(|(s, inside)| {
                    Leftover::read(s, *inside, boot, ticks, PidFd::open(s.pid).ok().flatten())
                })
                .collect()
        };
        // A few /proc reads and a pidfd per process, all CPU: with many, use two CPUs (the
        // job is frozen meanwhile; nothing else competes).
        let mut recs = if todo.len() >= 256 {
            std::thread::scope(|sc| {
                let (a, b) = todo.split_at(todo.len() / 2);
                let other = sc.spawn(|| describe(a));
                let mut mine = describe(b);
                let mut all = other.join().unwrap_or_default();
                all.append(&mut mine);
                all
            })
        } else {
            describe(&todo)
        };
        let new = recs.len();
        self.leftovers.append(&mut recs);
        Ok(new)
    }

    /// With a /proc of another PID namespace: the cgroup's pids are translated to that
    /// /proc's through each pidfd's fdinfo, so the records still carry state, start time and
    /// command line; pid and ppid are reported as the job sees them. (No descendant walk:
    /// the tree in that /proc is not ours to follow.)
    fn record_bare(&mut self, in_cg: &HashSet<i32>) -> usize {
        if !self.warned_foreign_proc {
            self.warned_foreign_proc = true;
            tracing::warn!("/proc belongs to another PID namespace (mount a fresh one, e.g. `unshare --pid --fork --mount-proc`): processes that left the job cgroup cannot be found");
        }
        if self.boot_time.is_none() {
            self.boot_time = procinfo::boot_time();
        }
        let mut new = 0;
        for pid in in_cg.iter().filter(|p| !self.exclude.contains(p)) {
            let Some(pidfd) = PidFd::open(*pid).ok().flatten() else {
                continue;
            };
            let info = pidfd.info();
            let outer = procinfo::pid_in_proc(pidfd.as_fd().as_raw_fd());
            let stat = outer.and_then(procinfo::read_stat);
            let start = stat.as_ref().map_or(0, |s| s.start_ticks);
            if matches!(stat.as_ref().map(|s| s.state), Some('Z' | 'X'))
                || !self.seen.insert((*pid, start))
            {
                continue;
            }
            let mut l = match &stat {
                Some(st) => Leftover::read(st, true, self.boot_time, self.ticks, Some(pidfd)),
                None => Leftover {
                    pid: *pid,
                    ppid: 0,
                    uid: None,
                    state: "?".into(),
                    start_time: None,
                    comm: String::new(),
                    cmdline: Vec::new(),
                    in_cgroup: true,
                    ended_by: None,
                    wchan: None,
                    start_ticks: 0,
                    pidfd: Some(pidfd),
                    termed: false,
                },
            };
            // As the job sees them.
            l.pid = *pid;
            l.ppid = info.map_or(0, |i| i.ppid as i32);
            self.leftovers.push(l);
            new += 1;
        }
        new
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
        for l in self.leftovers.iter_mut().filter(|l| l.ended_by.is_none()) {
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
