//! POLICY: the processes of a job that outlived its main process — found in the job cgroup, or
//! among cgjob's descendants that left it — recorded with what /proc says of them, and followed
//! through pidfds until they are gone. The Grid Engine "rogue process" report, as data.

use std::collections::HashSet;
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
        }
    }

    /// A tracker of what is in a cgroup only, for a job whose supervisor is gone.
    pub fn cgroup_only() -> Self {
        let mut t = Tracker::new(0, &[], PathBuf::new());
        t.supervisor = None;
        t
    }

    /// Descendants of the supervisor that are neither excluded nor listed in the cgroup.
    fn escaped_candidates(&self, in_cg: &HashSet<i32>) -> Vec<i32> {
        let Some(sup) = self.supervisor else {
            return Vec::new();
        };
        procinfo::descendants(sup)
            .into_iter()
            .filter(|p| !self.exclude.contains(p) && !in_cg.contains(p))
            .collect()
    }

    /// Whether cgjob has any descendant other than the excluded ones (its guardian). Cheap:
    /// one read of its own `children` file in the common case.
    pub fn has_other_descendants(&self) -> bool {
        let Some(sup) = self.supervisor else {
            return false;
        };
        match procinfo::children(sup) {
            Some(c) => c.iter().any(|p| !self.exclude.contains(p)),
            None => !procinfo::descendants(sup)
                .iter()
                .all(|p| self.exclude.contains(p)),
        }
    }

    /// Find processes not seen before: everything in the cgroup's subtree and every live
    /// descendant of cgjob outside it. Returns how many were new.
    pub fn scan(&mut self, cg: &Cgroup) -> Result<usize, CgroupFsError> {
        let in_cg: HashSet<i32> = match cg.procs_recursive() {
            Ok(p) => p.into_iter().collect(),
            Err(e) if e.is_gone() => HashSet::new(),
            Err(e) => return Err(e),
        };
        let mut new = 0;
        for pid in &in_cg {
            if !self.exclude.contains(pid) && self.record(*pid, true) {
                new += 1;
            }
        }
        if self.has_other_descendants() {
            for pid in self.escaped_candidates(&in_cg) {
                // A child forked after the cgroup was read is still inside: ask /proc.
                let inside = procinfo::read_cgroup2_path(pid)
                    .is_some_and(|p| p.starts_with(&self.cgroup_in_proc));
                if self.record(pid, inside) {
                    new += 1;
                }
            }
        }
        Ok(new)
    }

    /// Record one pid if it is new, alive and not a zombie. Returns whether it was added.
    fn record(&mut self, pid: i32, in_cgroup: bool) -> bool {
        let Some(stat) = procinfo::read_stat(pid) else {
            return false;
        };
        if matches!(stat.state, 'Z' | 'X') || !self.seen.insert((pid, stat.start_ticks)) {
            return false;
        }
        let pidfd = PidFd::open(pid).ok().flatten();
        if self.boot_time.is_none() {
            self.boot_time = procinfo::boot_time();
        }
        let start_time = self.boot_time.map(|b| {
            let secs = b + stat.start_ticks / self.ticks;
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()
        });
        self.leftovers.push(Leftover {
            pid,
            ppid: stat.ppid,
            uid: procinfo::read_uid(pid),
            state: stat.state.to_string(),
            start_time,
            comm: stat.comm,
            cmdline: procinfo::read_cmdline(pid),
            in_cgroup,
            ended_by: None,
            wchan: None,
            start_ticks: stat.start_ticks,
            pidfd,
            termed: false,
        });
        true
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
