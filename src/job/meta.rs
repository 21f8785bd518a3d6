//! Who owns a job cgroup, kept *with* the cgroup as an extended attribute, so that any later
//! cgjob (`gc`, a restarted daemon) can tell a live job from a stale one without a state file.

use serde::{Deserialize, Serialize};

use crate::cgroup::{file, Cgroup, CgroupFsError};
use crate::process::procinfo;

/// `trusted.*` needs CAP_SYS_ADMIN (root); `user.*` works on cgroupfs for the owner since 5.7.
const ATTR_TRUSTED: &str = "trusted.cgjob.job";
const ATTR_USER: &str = "user.cgjob.job";

/// The owner record of a job cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    pub version: u32,
    /// `run` for `cgjob run`.
    pub kind: String,
    pub supervisor_pid: i32,
    /// The supervisor's start time in clock ticks after boot, so that a recycled pid is not
    /// mistaken for it.
    pub supervisor_start: u64,
    pub uid: u32,
    /// Seconds since the epoch.
    pub created: u64,
    /// For a scheduler's job (`kind` = `job`): its id and scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<crate::job::batch::Scheduler>,
    /// A scheduler's job's wall-clock limit, counted from `created`: the daemon ends the job
    /// (SIGTERM, then SIGKILL after `kill_after_ms`) when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeLimit>,
}

/// A job's time limit and the grace between its SIGTERM and the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeLimit {
    pub after_ms: u64,
    pub kill_after_ms: u64,
    /// When it passes, in milliseconds since the epoch (`created` has whole seconds only).
    pub ends_at_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

impl TimeLimit {
    /// A limit `after` from now.
    pub fn new(after: std::time::Duration, kill_after: std::time::Duration) -> TimeLimit {
        let ms = |d: std::time::Duration| d.as_millis().min(u64::MAX as u128) as u64;
        TimeLimit {
            after_ms: ms(after),
            kill_after_ms: ms(kill_after),
            ends_at_ms: now_ms().saturating_add(ms(after)),
        }
    }

    pub fn kill_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.kill_after_ms)
    }

    /// How long from now until it passes (zero once it has).
    pub fn left(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ends_at_ms.saturating_sub(now_ms()))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JobMeta {
    /// A record for the calling process as supervisor.
    pub fn for_self(kind: &str) -> JobMeta {
        let pid = std::process::id() as i32;
        JobMeta {
            version: 1,
            kind: kind.to_owned(),
            supervisor_pid: pid,
            supervisor_start: procinfo::read_stat(pid).map(|s| s.start_ticks).unwrap_or(0),
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            created: now_secs(),
            job_id: None,
            scheduler: None,
            timeout: None,
        }
    }

    /// The record of a scheduler's job: no supervisor process (the scheduler's prolog and
    /// epilog bracket it), owned by the job's user.
    pub fn for_batch(id: &str, scheduler: crate::job::batch::Scheduler, uid: u32) -> JobMeta {
        JobMeta {
            version: 1,
            kind: "job".into(),
            supervisor_pid: 0,
            supervisor_start: 0,
            uid,
            created: now_secs(),
            job_id: Some(id.to_owned()),
            scheduler: Some(scheduler),
            timeout: None,
        }
    }

    /// A scheduler's job rather than a `cgjob run`.
    pub fn is_batch(&self) -> bool {
        self.kind == "job"
    }

    /// Seconds since the record was made.
    pub fn age(&self) -> u64 {
        now_secs().saturating_sub(self.created)
    }

    /// Whether the job of `cg` still has its supervisor: the supervisor holds the cgroup
    /// directory's lock for the life of the job. Where the lock cannot be checked, whether the
    /// recorded supervisor pid still runs (which is wrong across PID namespaces).
    pub fn job_alive(&self, cg: &Cgroup) -> bool {
        cg.is_locked().unwrap_or_else(|| self.supervisor_alive())
    }

    /// Whether the supervisor that wrote this record still runs, by pid and start time.
    pub fn supervisor_alive(&self) -> bool {
        procinfo::read_stat(self.supervisor_pid).is_some_and(|s| {
            s.start_ticks == self.supervisor_start && !matches!(s.state, 'Z' | 'X')
        })
    }
}

fn attr_name() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        ATTR_TRUSTED
    } else {
        ATTR_USER
    }
}

pub fn write(cg: &Cgroup, meta: &JobMeta) -> Result<(), CgroupFsError> {
    let json = serde_json::to_vec(meta).expect("JobMeta serializes");
    file::set_xattr(cg.path(), attr_name(), &json)
}

/// The record of a cgroup, if it has one (cgroups not made by cgjob have none).
pub fn read(cg: &Cgroup) -> Result<Option<JobMeta>, CgroupFsError> {
    for name in [ATTR_TRUSTED, ATTR_USER] {
        match file::get_xattr(cg.path(), name) {
            Ok(Some(v)) => return Ok(serde_json::from_slice(&v).ok()),
            Ok(None) => {}
            // Not root: trusted.* cannot be read; try user.*.
            Err(e) if matches!(e.errno(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_a_stranger_is_not() {
        let me = JobMeta::for_self("run");
        assert!(me.supervisor_alive());
        let other = JobMeta {
            supervisor_start: me.supervisor_start + 1,
            ..me.clone()
        };
        assert!(
            !other.supervisor_alive(),
            "a recycled pid must not count as the supervisor"
        );
        let gone = JobMeta {
            supervisor_pid: i32::MAX,
            ..me
        };
        assert!(!gone.supervisor_alive());
    }
}
