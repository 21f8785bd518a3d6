//! cgroup v1 hierarchies, for limits on hybrid hosts: there the memory, pids, cpu and cpuset
//! controllers are bound to v1 hierarchies (one mount per controller, or per group of them)
//! and cgroup2 holds none. A job gets one v1 cgroup per controller it needs, beside its v2
//! cgroup, which stays the one that contains and kills it.
//!
//! v1 has no clone3 `CLONE_INTO_CGROUP`: the child writes itself ("0") into each v1
//! `cgroup.procs` before it execs, through descriptors opened here beforehand.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::file::CgroupFsError;
use super::limits::{read_key, read_u64, Controller, Limit, Limits, Usage};
use super::tree::Cgroup;

/// A v1 hierarchy seen in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    pub mount_point: PathBuf,
    /// The controllers bound to it (`cpu,cpuacct` mounts carry both).
    pub controllers: Vec<String>,
}

/// Every v1 hierarchy (fstype `cgroup`) in a mountinfo text; the controllers are the super
/// options that are not mount flags.
pub fn parse_mountinfo(text: &str) -> Vec<V1Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split_whitespace();
            if post.next()? != "cgroup" {
                return None;
            }
            let opts = post.nth(1)?;
            let mount_point = PathBuf::from(super::mount::unescape(pre.split_whitespace().nth(4)?));
            let controllers = opts
                .split(',')
                .filter(|o| {
                    !matches!(
                        *o,
                        "rw" | "ro" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode"
                    ) && !o.contains('=')
                })
                .map(str::to_owned)
                .collect();
            Some(V1Mount {
                mount_point,
                controllers,
            })
        })
        .collect()
}

/// The v1 hierarchies of this host (empty on pure v2 hosts).
pub fn find() -> Vec<V1Mount> {
    parse_mountinfo(super::mount::mountinfo())
}

/// The hierarchy holding controller `c`.
pub fn mount_for(mounts: &[V1Mount], c: Controller) -> Option<&V1Mount> {
    mounts
        .iter()
        .find(|m| m.controllers.iter().any(|x| x == c.name()))
}

/// The v1 files that carry `limits` for controller `c`, in the order they must be written;
/// `Err` with the reason when v1 cannot express one of them.
pub fn files(c: Controller, limits: &Limits) -> Result<Vec<(&'static str, String)>, String> {
    // v1 writes "-1" for "no limit" in the memory and cpu files.
    let v1 = |l: Limit| match l {
        Limit::Max => "-1".to_string(),
        Limit::Value(v) => v.to_string(),
    };
    let mut f = Vec::new();
    match c {
        Controller::Memory => {
            if limits.memory_high.is_some() {
                return Err(
                    "--memory-high has no cgroup v1 counterpart (memory.high is v2 only)".into(),
                );
            }
            if let Some(m) = limits.memory_max {
                f.push(("memory.limit_in_bytes", v1(m)));
            }
            if let Some(s) = limits.memory_swap_max {
                // memory.memsw.limit_in_bytes counts memory and swap together and must not
                // be below memory.limit_in_bytes.
                let total = match (limits.memory_max, s) {
                    (_, Limit::Max) => Limit::Max,
                    (Some(Limit::Value(m)), Limit::Value(s)) => Limit::Value(m.saturating_add(s)),
                    _ => {
                        return Err("--memory-swap-max needs a --memory-max on cgroup v1 (memory.memsw.limit_in_bytes counts memory and swap together)".into())
                    }
                };
                f.push(("memory.memsw.limit_in_bytes", v1(total)));
            }
        }
        Controller::Pids => {
            if let Some(p) = limits.pids_max {
                f.push(("pids.max", p.to_string()));
            }
        }
        Controller::Cpu => {
            if let Some(c) = limits.cpu_max {
                f.push(("cpu.cfs_period_us", c.period_us.to_string()));
                f.push((
                    "cpu.cfs_quota_us",
                    c.quota_us.map_or("-1".into(), |q| q.to_string()),
                ));
            }
        }
        Controller::Cpuset => {
            if let Some(s) = &limits.cpuset {
                f.push(("cpuset.cpus", s.clone()));
            }
        }
    }
    Ok(f)
}

/// One job's cgroup in one v1 hierarchy.
#[derive(Debug)]
pub struct V1Cgroup {
    pub controller: Controller,
    pub cg: Cgroup,
}

impl V1Cgroup {
    /// Create `mount/rel` (missing parents too; the last component must be new: another job's
    /// processes could be in an existing one). A new cpuset cgroup starts with no CPUs and no
    /// memory nodes, and a task cannot join it so: each one made gets its parent's.
    pub fn create(mount: &V1Mount, rel: &Path, c: Controller) -> Result<V1Cgroup, CgroupFsError> {
        let mut dir = mount.mount_point.clone();
        let n = rel.components().count();
        for (i, comp) in rel.components().enumerate() {
            let parent = dir.clone();
            dir.push(comp);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && i + 1 < n => continue,
                Err(e) => return Err(CgroupFsError::new("create cgroup", &dir, e)),
            }
            if c == Controller::Cpuset {
                let (p, d) = (Cgroup::at(&parent), Cgroup::at(&dir));
                let copied = ["cpuset.cpus", "cpuset.mems"]
                    .into_iter()
                    .try_for_each(|f| d.write(f, p.read(f)?.trim()));
                if let Err(e) = copied {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            }
        }
        Ok(V1Cgroup {
            controller: c,
            cg: Cgroup::at(dir),
        })
    }

    /// Write this controller's part of `limits`.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupFsError> {
        // Callers check `files` first; a refusal here is a bug, reported as EINVAL.
        let files = files(self.controller, limits).map_err(|_| {
            CgroupFsError::new(
                "apply limits to",
                self.cg.path(),
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        for (name, value) in files {
            self.cg.write(name, &value)?;
        }
        Ok(())
    }

    /// `cgroup.procs`, opened for the child to join before exec.
    pub fn open_procs_for_join(&self) -> Result<OwnedFd, CgroupFsError> {
        self.cg.open_procs_for_join()
    }

    /// What this cgroup counted.
    pub fn usage(&self) -> Usage {
        let cg = &self.cg;
        match self.controller {
            Controller::Memory => Usage {
                memory_peak_bytes: read_u64(cg, "memory.max_usage_in_bytes"),
                oom_kills: read_key(cg, "memory.oom_control", "oom_kill"),
                ..Default::default()
            },
            Controller::Pids => Usage {
                pids_peak: read_u64(cg, "pids.peak"),
                pids_max_hits: read_key(cg, "pids.events", "max"),
                ..Default::default()
            },
            Controller::Cpu => Usage {
                cpu_nr_throttled: read_key(cg, "cpu.stat", "nr_throttled"),
                cpu_throttled_usec: read_key(cg, "cpu.stat", "throttled_time").map(|ns| ns / 1000),
                ..Default::default()
            },
            Controller::Cpuset => Usage::default(),
        }
    }

    /// Remove it (EBUSY retried, ENOENT is done). Parents stay: other jobs share them.
    pub fn remove(&self) -> Result<(), CgroupFsError> {
        self.cg.remove()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::limits::CpuMax;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_hierarchies() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 4);
        let cpu = mount_for(&m, Controller::Cpu).unwrap();
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            mount_for(&m, Controller::Memory).unwrap().mount_point,
            Path::new("/sys/fs/cgroup/memory")
        );
        assert!(mount_for(&m, Controller::Cpuset).is_none());
        // name=systemd is no controller, and xattr is an option.
        assert_eq!(m[3].controllers, Vec::<String>::new());
        assert!(parse_mountinfo("").is_empty());
    }

    #[test]
    fn v1_files_per_controller() {
        let l = Limits {
            memory_max: Some(Limit::Value(100)),
            memory_swap_max: Some(Limit::Value(50)),
            pids_max: Some(Limit::Max),
            cpu_max: Some(CpuMax {
                quota_us: Some(50_000),
                period_us: 100_000,
            }),
            cpuset: Some("0".into()),
            ..Default::default()
        };
        assert_eq!(
            files(Controller::Memory, &l).unwrap(),
            vec![
                ("memory.limit_in_bytes", "100".to_string()),
                ("memory.memsw.limit_in_bytes", "150".into())
            ]
        );
        assert_eq!(
            files(Controller::Pids, &l).unwrap(),
            vec![("pids.max", "max".to_string())]
        );
        assert_eq!(
            files(Controller::Cpu, &l).unwrap(),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "50000".into())
            ]
        );
        assert_eq!(
            files(Controller::Cpuset, &l).unwrap(),
            vec![("cpuset.cpus", "0".to_string())]
        );
        let high = Limits {
            memory_high: Some(Limit::Value(1)),
            ..Default::default()
        };
        assert!(files(Controller::Memory, &high)
            .unwrap_err()
            .contains("memory.high"));
        let swap_only = Limits {
            memory_swap_max: Some(Limit::Value(1)),
            ..Default::default()
        };
        assert!(files(Controller::Memory, &swap_only)
            .unwrap_err()
            .contains("--memory-max"));
    }

    #[test]
    fn create_refuses_an_existing_leaf_and_shares_parents() {
        let d = tempfile::tempdir().unwrap();
        let m = V1Mount {
            mount_point: d.path().to_owned(),
            controllers: vec!["pids".into(), "cpuset".into()],
        };
        let cg = V1Cgroup::create(&m, Path::new("cgjob/job"), Controller::Pids).unwrap();
        assert_eq!(cg.cg.path(), d.path().join("cgjob/job"));
        let e = V1Cgroup::create(&m, Path::new("cgjob/job"), Controller::Pids).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST));
        // A second job beside it shares the parent.
        V1Cgroup::create(&m, Path::new("cgjob/job2"), Controller::Pids).unwrap();
        // A cpuset cgroup whose CPUs cannot be copied from its parent (none here) is not
        // left behind half made.
        let e = V1Cgroup::create(&m, Path::new("other"), Controller::Cpuset).unwrap_err();
        assert!(e.to_string().contains("cpuset.cpus"), "{e}");
        assert!(!d.path().join("other").exists());
    }
}
