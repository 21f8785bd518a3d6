//! POLICY: where a job's resource limits go. On a pure v2 host, into the job cgroup, with the
//! controllers enabled in the job parent's `cgroup.subtree_control` — cgjob's own part of the
//! tree, never above it: a controller the parent does not have in `cgroup.controllers` is
//! missing, not something to enable higher up. On a hybrid host, where the controllers are
//! bound to v1 hierarchies, into one v1 cgroup per controller beside the v2 job cgroup, which
//! stays the one that contains and kills the job. Everything is in place before the command
//! is started.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::limits::{self, Controller, Limits, Usage};
use crate::cgroup::v1::{self, V1Cgroup, V1Mount};
use crate::cgroup::{Cgroup, CgroupFsError};

/// Which cgroup version may carry the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitsVia {
    /// v2 when the job parent has every needed controller, else v1.
    #[default]
    Auto,
    CgroupV2,
    CgroupV1,
}

/// Where the limits were applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppliedVia {
    CgroupV2,
    CgroupV1,
}

impl std::fmt::Display for AppliedVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppliedVia::CgroupV2 => "cgroup-v2",
            AppliedVia::CgroupV1 => "cgroup-v1",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("the {controller} controller is not available for the job's limits: {why}")]
    Missing { controller: Controller, why: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot apply the job's limits")]
    Fs(#[source] CgroupFsError),
}

/// A job's limits, in place.
#[derive(Debug)]
pub struct JobLimits {
    pub via: AppliedVia,
    pub limits: Limits,
    /// The job's v1 cgroups (`cgroup-v1` only).
    pub v1: Vec<V1Cgroup>,
}

/// The `limits` field of the result record.
#[derive(Debug, Serialize)]
pub struct LimitsRecord {
    pub applied_via: AppliedVia,
    #[serde(flatten)]
    pub limits: Limits,
    /// The job's v1 cgroups, for `cgroup-v1`.
    pub v1_cgroups: Vec<PathBuf>,
    /// They were all removed after the job.
    pub v1_removed: Option<bool>,
}

/// Put `limits` in place for the job cgroup `job`, which lies `rel` below the cgroup2 mount.
/// `Ok(None)` when there are none. On error nothing made here is left.
pub fn setup(
    job: &Cgroup,
    rel: &Path,
    want: &Limits,
    via: LimitsVia,
    mounts_v1: &[V1Mount],
) -> Result<Option<JobLimits>, LimitsError> {
    let needed = want.controllers();
    if needed.is_empty() {
        return Ok(None);
    }
    let parent = Cgroup::at(job.path().parent().unwrap_or(job.path()));
    let available = parent.controllers().unwrap_or_default();
    let missing_v2 = needed
        .iter()
        .copied()
        .find(|c| !available.iter().any(|a| a == c.name()));
    let why_v2 = format!(
        "it is not in {} (the cgroup above the job parent does not delegate it; cgjob enables controllers only inside its own part of the tree)",
        parent.file("cgroup.controllers").display()
    );
    match (via, missing_v2) {
        (LimitsVia::Auto | LimitsVia::CgroupV2, None) => {
            let enabled = parent.subtree_control().unwrap_or_default();
            let to_enable: Vec<&str> = needed
                .iter()
                .map(|c| c.name())
                .filter(|n| !enabled.iter().any(|e| e == n))
                .collect();
            parent
                .enable_controllers(&to_enable)
                .map_err(LimitsError::Fs)?;
            limits::apply_v2(job, want).map_err(LimitsError::Fs)?;
            return Ok(Some(JobLimits {
                via: AppliedVia::CgroupV2,
                limits: want.clone(),
                v1: Vec::new(),
            }));
        }
        (LimitsVia::CgroupV2, Some(c)) => {
            return Err(LimitsError::Missing {
                controller: c,
                why: format!("{why_v2} (--limits-via cgroup-v2)"),
            })
        }
        _ => {}
    }
    // cgroup v1: every needed controller must have a hierarchy, and v1 must express the limits.
    let mut plan = Vec::new();
    for c in needed {
        let Some(m) = v1::mount_for(mounts_v1, c) else {
            let why = match via {
                LimitsVia::CgroupV1 => "no cgroup v1 hierarchy of it is mounted".to_string(),
                _ => format!("{why_v2}, and no cgroup v1 hierarchy of it is mounted"),
            };
            return Err(LimitsError::Missing { controller: c, why });
        };
        v1::files(c, want).map_err(LimitsError::Unsupported)?;
        plan.push((c, m));
    }
    let mut made: Vec<V1Cgroup> = Vec::new();
    let res = plan.into_iter().try_for_each(|(c, m)| {
        let cg = V1Cgroup::create(m, rel, c)?;
        made.push(cg);
        made.last().expect("just pushed").apply(want)
    });
    if let Err(e) = res {
        for cg in &made {
            let _ = cg.remove();
        }
        return Err(LimitsError::Fs(e));
    }
    Ok(Some(JobLimits {
        via: AppliedVia::CgroupV1,
        limits: want.clone(),
        v1: made,
    }))
}

impl JobLimits {
    /// The v1 `cgroup.procs` files the child writes itself into before exec.
    pub fn open_joins(&self) -> Result<Vec<OwnedFd>, CgroupFsError> {
        self.v1.iter().map(|c| c.open_procs_for_join()).collect()
    }

    /// What the job's cgroups counted: the v2 job cgroup's files, completed from the v1 ones.
    pub fn usage(&self, job: &Cgroup) -> Usage {
        let mut u = limits::usage_v2(job);
        for cg in &self.v1 {
            u.merge(cg.usage());
        }
        u
    }

    /// Remove the v1 cgroups (after the job is empty). Whether all are gone.
    pub fn remove_v1(&self) -> bool {
        let mut all = true;
        for cg in &self.v1 {
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "cannot remove the job's cgroup v1 cgroup");
                all = false;
            }
        }
        all
    }

    pub fn record(&self, v1_removed: Option<bool>) -> LimitsRecord {
        LimitsRecord {
            applied_via: self.via,
            limits: self.limits.clone(),
            v1_cgroups: self.v1.iter().map(|c| c.cg.path().to_owned()).collect(),
            v1_removed,
        }
    }
}

/// The v1 cgroups of job cgroup `job` (made for its limits on a hybrid host): the
/// directories at the same path below each v1 hierarchy of a limit controller as `job` is
/// below the cgroup2 mount. Empty on pure v2 hosts and for jobs without v1 limits.
pub fn v1_beside(job: &Cgroup) -> Vec<V1Cgroup> {
    let Some(rel) = crate::cgroup::mount::relative(job.path()) else {
        return Vec::new();
    };
    let v1_mounts = v1::find();
    Controller::ALL
        .iter()
        .filter_map(|c| {
            let m = v1::mount_for(&v1_mounts, *c)?;
            let dir = m.mount_point.join(&rel);
            dir.is_dir().then(|| V1Cgroup {
                controller: *c,
                cg: Cgroup::at(dir),
            })
        })
        .collect()
}

/// Move `pid` (0: the caller) into job cgroup `job` and into its v1 limit cgroups, if it has
/// any: what joining a job means when its limits are on v1.
pub fn add_to_job(job: &Cgroup, pid: i32) -> Result<(), CgroupFsError> {
    job.add_process(pid)?;
    for v in v1_beside(job) {
        v.cg.add_process(pid)?;
    }
    Ok(())
}

/// Remove the v1 limit cgroups of a job cgroup that is gone (empty, then). Whether all went.
pub fn remove_v1_beside(job: &Cgroup) -> bool {
    let mut all = true;
    for v in v1_beside(job) {
        match v.remove() {
            Ok(()) => {
                tracing::info!(cgroup = %v.cg.path().display(), "removed the job's cgroup v1 cgroup")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove the job's cgroup v1 cgroup");
                all = false;
            }
        }
    }
    all
}

/// What a job's cgroups count now: `usage` (peaks, OOM kills, throttling) and the current
/// memory, process count and CPU time (`memory.current`, `pids.current`, `cpu.stat`; v1
/// `memory.usage_in_bytes`, `pids.current`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CurrentUsage {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    #[serde(flatten)]
    pub usage: Usage,
}

pub fn current_usage(job: &Cgroup) -> CurrentUsage {
    let v1 = v1_beside(job);
    let mut usage = limits::usage_v2(job);
    for v in &v1 {
        usage.merge(v.usage());
    }
    let v1_file = |c: Controller, f: &str| {
        v1.iter()
            .find(|v| v.controller == c)
            .and_then(|v| limits::read_u64(&v.cg, f))
    };
    CurrentUsage {
        memory_bytes: limits::read_u64(job, "memory.current")
            .or_else(|| v1_file(Controller::Memory, "memory.usage_in_bytes")),
        pids: limits::read_u64(job, "pids.current")
            .or_else(|| v1_file(Controller::Pids, "pids.current")),
        cpu_usage_usec: limits::read_key(job, "cpu.stat", "usage_usec"),
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::limits::Limit;
    use std::error::Error;

    fn fake(dir: &Path, controllers: &str) {
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }

    fn mem() -> Limits {
        Limits {
            memory_max: Some(Limit::Value(1 << 20)),
            ..Default::default()
        }
    }

    #[test]
    fn v2_when_the_parent_has_the_controller() {
        let d = tempfile::tempdir().unwrap();
        fake(d.path(), "cpu memory pids\n");
        let job = Cgroup::create_new(d.path(), "job").unwrap();
        std::fs::write(job.file("memory.max"), "").unwrap();
        let l = setup(&job, Path::new("job"), &mem(), LimitsVia::Auto, &[])
            .unwrap()
            .unwrap();
        assert_eq!(l.via, AppliedVia::CgroupV2);
        assert_eq!(job.read("memory.max").unwrap(), "1048576");
        // Enabled in the parent only (a plain file here keeps the last write).
        assert_eq!(
            Cgroup::at(d.path()).read("cgroup.subtree_control").unwrap(),
            "+memory"
        );
        assert!(setup(
            &job,
            Path::new("job"),
            &Limits::default(),
            LimitsVia::Auto,
            &[]
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn missing_everywhere_names_the_controller() {
        let d = tempfile::tempdir().unwrap();
        fake(d.path(), "hugetlb\n");
        let job = Cgroup::create_new(d.path(), "job").unwrap();
        for via in [LimitsVia::Auto, LimitsVia::CgroupV2, LimitsVia::CgroupV1] {
            let e = setup(&job, Path::new("job"), &mem(), via, &[]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("memory controller is not available"), "{msg}");
        }
    }

    #[test]
    fn v1_beside_the_v2_cgroup() {
        let d = tempfile::tempdir().unwrap();
        let v2 = d.path().join("v2");
        let v1m = d.path().join("memory");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::create_dir_all(&v1m).unwrap();
        fake(&v2, "");
        let job = Cgroup::create_new(&v2, "job").unwrap();
        let mounts = [V1Mount {
            mount_point: v1m.clone(),
            controllers: vec!["memory".into()],
        }];
        // cgroup-v2 asked for, and v2 lacks it: an error even though v1 has it.
        let e = setup(
            &job,
            Path::new("cgjob/job"),
            &mem(),
            LimitsVia::CgroupV2,
            &mounts,
        );
        assert!(matches!(e, Err(LimitsError::Missing { .. })));
        // v1 cannot express memory.high.
        let high = Limits {
            memory_high: Some(Limit::Value(1)),
            ..Default::default()
        };
        let e = setup(
            &job,
            Path::new("cgjob/job"),
            &high,
            LimitsVia::Auto,
            &mounts,
        );
        assert!(matches!(e, Err(LimitsError::Unsupported(_))));
        assert!(!v1m.join("cgjob").exists(), "nothing made before the check");
        // A v1 cgroup whose limit file cannot be written (a plain directory here): the error
        // names the file, and the v1 cgroup made for the job is removed again.
        let e = setup(
            &job,
            Path::new("cgjob/job"),
            &mem(),
            LimitsVia::Auto,
            &mounts,
        )
        .unwrap_err();
        assert!(
            e.source()
                .unwrap()
                .to_string()
                .contains("memory.limit_in_bytes"),
            "{e}"
        );
        assert!(v1m.join("cgjob").is_dir() && !v1m.join("cgjob/job").exists());
    }
}
