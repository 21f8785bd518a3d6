//! Resource limits and accounting through cgroup v2 interface files: which file holds which
//! limit, writing them, and reading usage back. The v1 counterparts are in [`super::v1`].

use std::fmt;

use serde::Serialize;

use super::file::{self, CgroupFsError};
use super::tree::Cgroup;

/// A limit value: a number, or `max` (none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Max => f.write_str("max"),
            Limit::Value(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Max => s.serialize_str("max"),
            Limit::Value(v) => s.serialize_u64(*v),
        }
    }
}

/// A CPU bandwidth limit: `quota_us` of CPU time per `period_us` of wall time (`None`: no
/// quota). As `cpu.max` writes it: `"150000 100000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota_us {
            Some(q) => write!(f, "{q} {}", self.period_us),
            None => write!(f, "max {}", self.period_us),
        }
    }
}

impl Serialize for CpuMax {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The limits of one job. Every field is optional; nothing set means no controller needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory_max: Option<Limit>,
    pub memory_high: Option<Limit>,
    pub memory_swap_max: Option<Limit>,
    pub pids_max: Option<Limit>,
    pub cpu_max: Option<CpuMax>,
    /// A CPU list as the kernel takes it (`0-1,3`), already validated.
    pub cpuset: Option<String>,
}

/// A resource controller a limit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
    Cpuset,
}

impl Controller {
    pub const ALL: [Controller; 4] = [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::Cpuset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Cpuset => "cpuset",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The controllers these limits need, each once, in a fixed order.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut c = Vec::new();
        if self.memory_max.is_some() || self.memory_high.is_some() || self.memory_swap_max.is_some()
        {
            c.push(Controller::Memory);
        }
        if self.pids_max.is_some() {
            c.push(Controller::Pids);
        }
        if self.cpu_max.is_some() {
            c.push(Controller::Cpu);
        }
        if self.cpuset.is_some() {
            c.push(Controller::Cpuset);
        }
        c
    }

    /// The v2 interface files to write, in order.
    pub fn v2_files(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        let mut put = |name, v: Option<String>| {
            if let Some(v) = v {
                f.push((name, v));
            }
        };
        put("memory.max", self.memory_max.map(|l| l.to_string()));
        put("memory.high", self.memory_high.map(|l| l.to_string()));
        put(
            "memory.swap.max",
            self.memory_swap_max.map(|l| l.to_string()),
        );
        put("pids.max", self.pids_max.map(|l| l.to_string()));
        put("cpu.max", self.cpu_max.map(|c| c.to_string()));
        put("cpuset.cpus", self.cpuset.clone());
        f
    }
}

/// Write `limits` into a v2 cgroup whose parent has the controllers enabled.
pub fn apply_v2(cg: &Cgroup, limits: &Limits) -> Result<(), CgroupFsError> {
    for (name, value) in limits.v2_files() {
        cg.write(name, &value)?;
    }
    Ok(())
}

/// What a job's cgroup(s) counted. `None` where the kernel does not keep the figure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// Highest memory use (`memory.peak`, 5.19; v1 `memory.max_usage_in_bytes`).
    pub memory_peak_bytes: Option<u64>,
    /// Times the limit was hit and reclaim failed (`memory.events` `oom`; v1 `under_oom` is a
    /// state, not a count, so `None` there).
    pub oom_events: Option<u64>,
    /// Processes killed by the OOM killer (`memory.events` `oom_kill`, 4.19; v1
    /// `memory.oom_control` `oom_kill`, 4.13).
    pub oom_kills: Option<u64>,
    /// Highest number of tasks (`pids.peak`, 6.1 in v2; also in v1 on recent kernels).
    pub pids_peak: Option<u64>,
    /// Forks refused at `pids.max` (`pids.events` `max`).
    pub pids_max_hits: Option<u64>,
    /// Enforcement periods in which the CPU quota throttled the job (`cpu.stat`
    /// `nr_throttled`, with the cpu controller; v1 `cpu.stat` too).
    pub cpu_nr_throttled: Option<u64>,
    /// Time the job spent throttled (`cpu.stat` `throttled_usec`; v1 `throttled_time` in ns).
    pub cpu_throttled_usec: Option<u64>,
}

impl Usage {
    /// Fill in what the other source knows and this one does not.
    pub fn merge(&mut self, o: Usage) {
        self.memory_peak_bytes = self.memory_peak_bytes.or(o.memory_peak_bytes);
        self.oom_events = self.oom_events.or(o.oom_events);
        self.oom_kills = self.oom_kills.or(o.oom_kills);
        self.pids_peak = self.pids_peak.or(o.pids_peak);
        self.pids_max_hits = self.pids_max_hits.or(o.pids_max_hits);
        self.cpu_nr_throttled = self.cpu_nr_throttled.or(o.cpu_nr_throttled);
        self.cpu_throttled_usec = self.cpu_throttled_usec.or(o.cpu_throttled_usec);
    }
}

/// A single number from a file; `None` when the file is absent or not a number.
pub(crate) fn read_u64(cg: &Cgroup, name: &str) -> Option<u64> {
    cg.read(name).ok()?.trim().parse().ok()
}

/// One key of a flat-keyed file.
pub(crate) fn read_key(cg: &Cgroup, name: &str, key: &str) -> Option<u64> {
    let text = cg.read(name).ok()?;
    file::parse_flat_keyed(&text)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Usage as a v2 cgroup shows it. The memory and pids files exist only where the controller
/// is enabled, so `cgroup.controllers` is read first rather than opening files that are not
/// there (this runs at the end of every job); each file is read once.
pub fn usage_v2(cg: &Cgroup) -> Usage {
    let enabled = cg.read("cgroup.controllers").unwrap_or_default();
    let has = |c: &str| enabled.split_whitespace().any(|x| x == c);
    let keyed = |name: &str| -> Vec<(String, u64)> {
        cg.read(name)
            .map(|t| {
                file::parse_flat_keyed(&t)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect()
            })
            .unwrap_or_default()
    };
    let key = |kv: &[(String, u64)], k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    let mut u = Usage::default();
    if has("memory") {
        let ev = keyed("memory.events");
        u.memory_peak_bytes = read_u64(cg, "memory.peak");
        u.oom_events = key(&ev, "oom");
        u.oom_kills = key(&ev, "oom_kill");
    }
    if has("pids") {
        u.pids_peak = read_u64(cg, "pids.peak");
        u.pids_max_hits = key(&keyed("pids.events"), "max");
    }
    if has("cpu") {
        let st = keyed("cpu.stat");
        u.cpu_nr_throttled = key(&st, "nr_throttled");
        u.cpu_throttled_usec = key(&st, "throttled_usec");
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_files_and_controllers() {
        let l = Limits {
            memory_max: Some(Limit::Value(32 << 20)),
            memory_swap_max: Some(Limit::Max),
            pids_max: Some(Limit::Value(20)),
            cpu_max: Some(CpuMax {
                quota_us: Some(150_000),
                period_us: 100_000,
            }),
            cpuset: Some("0-1".into()),
            ..Default::default()
        };
        assert_eq!(
            l.v2_files(),
            vec![
                ("memory.max", "33554432".to_string()),
                ("memory.swap.max", "max".into()),
                ("pids.max", "20".into()),
                ("cpu.max", "150000 100000".into()),
                ("cpuset.cpus", "0-1".into()),
            ]
        );
        assert_eq!(
            l.controllers(),
            vec![
                Controller::Memory,
                Controller::Pids,
                Controller::Cpu,
                Controller::Cpuset
            ]
        );
        assert!(Limits::default().controllers().is_empty());
        assert!(Limits::default().is_empty());
    }

    #[test]
    fn apply_and_read_on_a_fake_cgroupfs() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroup::at(d.path());
        for f in ["memory.max", "pids.max", "cpu.max"] {
            std::fs::write(cg.file(f), "").unwrap();
        }
        let l = Limits {
            memory_max: Some(Limit::Max),
            pids_max: Some(Limit::Value(5)),
            cpu_max: Some(CpuMax {
                quota_us: None,
                period_us: 100_000,
            }),
            ..Default::default()
        };
        apply_v2(&cg, &l).unwrap();
        assert_eq!(cg.read("cpu.max").unwrap(), "max 100000");
        assert_eq!(cg.read("pids.max").unwrap(), "5");
        // A file the controller lacks: the error names it.
        let e = apply_v2(
            &cg,
            &Limits {
                memory_high: Some(Limit::Value(1)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("memory.high"), "{e}");
        // Without the controllers enabled, their files are not even looked for.
        assert_eq!(usage_v2(&cg), Usage::default());

        std::fs::write(cg.file("memory.peak"), "33554432\n").unwrap();
        std::fs::write(
            cg.file("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        std::fs::write(cg.file("pids.events"), "max 3\n").unwrap();
        // As the kernel shows it: the controllers enabled for this cgroup.
        std::fs::write(cg.file("cgroup.controllers"), "memory pids\n").unwrap();
        let u = usage_v2(&cg);
        assert_eq!(
            u,
            Usage {
                memory_peak_bytes: Some(33554432),
                oom_events: Some(1),
                oom_kills: Some(1),
                pids_peak: None,
                pids_max_hits: Some(3),
                cpu_nr_throttled: None,
                cpu_throttled_usec: None,
            }
        );
    }
}
