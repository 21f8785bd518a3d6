//! The result record of one job: what ran, where, how it ended, what was left and how it was
//! dealt with. Written as JSON by `--report`/`--json`, summarised for humans by `report`.

use std::path::PathBuf;

use serde::Serialize;

use super::containment::Containment;
use super::leftovers::Leftover;
use super::limits::LimitsRecord;
use super::policy::{LeftoverPolicy, MainExit, TimeoutPhase};
use crate::cgroup::limits::Usage;
use crate::cgroup::KillMethod;
use crate::process::spawn::SpawnMethod;

#[derive(Debug, Serialize)]
pub struct JobRecord {
    /// Version of this record's shape.
    pub version: u32,
    pub name: String,
    /// How the job was contained: `cgroup-v2`, `pid-namespace` or `subreaper`.
    pub containment: Containment,
    /// The job cgroup (`None` without one).
    pub cgroup: Option<PathBuf>,
    pub command: Vec<String>,
    pub supervisor_pid: i32,
    pub main_pid: Option<i32>,
    pub spawn_method: Option<SpawnMethod>,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: String,
    pub duration_ms: f64,
    /// How the main process ended.
    pub exit: Option<MainExit>,
    /// The status cgjob exits with.
    pub exit_status: i32,
    pub timeout: TimeoutRecord,
    pub leftover_policy: LeftoverPolicy,
    pub leftovers: Vec<Leftover>,
    /// How the cgroup was killed; `None` without a cgroup (each process is SIGKILLed through
    /// a pidfd, in rounds until none is left).
    pub kill_method: Option<KillMethod>,
    /// Kill passes made (0 when nothing had to be killed).
    pub kill_passes: u32,
    /// From the main process's exit to nothing of the job left.
    pub main_exit_to_empty_ms: Option<f64>,
    pub cpu: Option<CpuUsage>,
    /// The main process was killed by the OOM killer (SIGKILL, and the job's memory cgroup
    /// counted an OOM kill).
    pub oom_killed: bool,
    /// The job's resource limits and where they were set; `None` without limits.
    pub limits: Option<LimitsRecord>,
    /// What the job's cgroups counted (memory peak, OOM kills, pids peak), where the kernel
    /// keeps it; `None` without a cgroup.
    pub usage: Option<Usage>,
    /// Processes survived every kill; the cgroup was left in place.
    pub unkillable: bool,
    /// `None` without a cgroup.
    pub cgroup_removed: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct TimeoutRecord {
    pub limit_ms: Option<u64>,
    pub phase: TimeoutPhase,
}

/// From `cpu.stat`.
#[derive(Debug, Serialize, Default)]
pub struct CpuUsage {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
}

impl CpuUsage {
    /// Without a cgroup: what the kernel added up for cgjob's reaped descendants
    /// (`RUSAGE_CHILDREN`, which counts each process once it is waited for, by cgjob or by a
    /// parent that was waited for in turn).
    pub fn of_children() -> Option<Self> {
        // SAFETY: getrusage fills the struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
            return None;
        }
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        let (user, system) = (us(ru.ru_utime), us(ru.ru_stime));
        Some(CpuUsage {
            usage_usec: user + system,
            user_usec: user,
            system_usec: system,
        })
    }

    pub fn from_stat(stat: &[(String, u64)]) -> Self {
        let get = |k: &str| {
            stat.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        };
        CpuUsage {
            usage_usec: get("usage_usec"),
            user_usec: get("user_usec"),
            system_usec: get("system_usec"),
        }
    }
}
