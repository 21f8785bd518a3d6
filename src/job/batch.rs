//! POLICY: the job model for batch schedulers. A scheduler's job (Slurm, Grid Engine, PBS) is
//! keyed by its job id; its cgroup is `<parent>/job-<id>` (parent as for `cgjob run`, by
//! default `<cgroup2 root>/cgjob`), and who owns it is recorded on the cgroup itself (see
//! `meta`), so that every later command — prolog, task placement, epilog, gc, a restarted
//! daemon — finds it from the job id alone.

use std::path::{Path, PathBuf};

use crate::cgroup::{Cgroup, CgroupFsError};

/// Longest job id accepted (PBS ids carry a server name: `1234.server.example.org`).
pub const JOB_ID_MAX: usize = 128;

/// The environment variables schedulers put the job id in, in the order they are tried.
pub const JOB_ID_VARS: &[(&str, Scheduler)] = &[
    ("SLURM_JOB_ID", Scheduler::Slurm),
    ("PBS_JOBID", Scheduler::Pbs),
    ("JOB_ID", Scheduler::Sge),
];

/// Which scheduler a job belongs to (recorded, and used to find escaped processes by their
/// environment).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Slurm,
    Sge,
    Pbs,
    Other,
}

impl Scheduler {
    /// The variable the scheduler puts in every job process's environment.
    pub fn marker_var(&self) -> Option<&'static str> {
        match self {
            Scheduler::Slurm => Some("SLURM_JOB_ID"),
            Scheduler::Sge => Some("JOB_ID"),
            Scheduler::Pbs => Some("PBS_JOBID"),
            Scheduler::Other => None,
        }
    }
}

/// A validated job id: 1–128 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or
/// `-`: one safe path component whatever the scheduler sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    pub fn parse(s: &str) -> Result<JobId, String> {
        crate::config::check_component(s, "job id", JOB_ID_MAX)?;
        Ok(JobId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The job cgroup's directory name.
    pub fn cgroup_name(&self) -> String {
        format!("job-{}", self.0)
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The job id from the command line, else from the scheduler's variable in `env` (the flag
/// wins). Returns the id and the scheduler it came from, if known.
pub fn job_id_from(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(JobId, Option<Scheduler>), String> {
    if let Some(f) = flag {
        return JobId::parse(f).map(|id| (id, None));
    }
    for (var, sched) in JOB_ID_VARS {
        if let Some(v) = env(var) {
            return JobId::parse(&v)
                .map(|id| (id, Some(*sched)))
                .map_err(|e| format!("{var}: {e}"));
        }
    }
    Err("no job id: pass --job-id, or run under a scheduler that sets SLURM_JOB_ID, PBS_JOBID or JOB_ID".into())
}

/// The job cgroup of `id` under `parent`.
pub fn job_cgroup(parent: &Path, id: &JobId) -> Cgroup {
    Cgroup::at(parent.join(id.cgroup_name()))
}

/// Move the calling process into the job cgroup (write `0` to its `cgroup.procs`), and into
/// the job's v1 limit cgroups if it has any: what a job wrapper does before it execs the job,
/// and what the Slurm plugin does in each task before the task execs. Returns the cgroup's
/// path.
pub fn join(parent: &Path, id: &JobId) -> Result<PathBuf, CgroupFsError> {
    let cg = job_cgroup(parent, id);
    super::limits::add_to_job(&cg, 0)?;
    Ok(cg.path().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        for ok in [
            "1",
            "1234",
            "1234.5",
            "1234.server.example.org",
            "array_12-3",
            &"9".repeat(128),
        ] {
            assert!(JobId::parse(ok).is_ok(), "{ok}");
        }
        let long = "9".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "-1",
            ".hidden",
            "12 34",
            "12\0",
            "1;rm",
            "é",
            long.as_str(),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(JobId::parse("42").unwrap().cgroup_name(), "job-42");
    }

    #[test]
    fn flag_beats_scheduler_variables() {
        let env = |k: &str| match k {
            "SLURM_JOB_ID" => Some("77".to_string()),
            "JOB_ID" => Some("88".to_string()),
            _ => None,
        };
        assert_eq!(job_id_from(Some("5"), env).unwrap().0.as_str(), "5");
        let (id, s) = job_id_from(None, env).unwrap();
        assert_eq!((id.as_str(), s), ("77", Some(Scheduler::Slurm)));
        let sge = |k: &str| (k == "JOB_ID").then(|| "88".to_string());
        assert_eq!(job_id_from(None, sge).unwrap().1, Some(Scheduler::Sge));
        assert!(job_id_from(None, |_| None)
            .unwrap_err()
            .contains("--job-id"));
        let bad = |k: &str| (k == "PBS_JOBID").then(|| "../x".to_string());
        assert!(job_id_from(None, bad).unwrap_err().starts_with("PBS_JOBID"));
    }
}
