//! Validated settings: what the command line and the environment said, checked and with every
//! default in one place. Behaviour code sees these types, never clap's.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::cgroup::limits::{CpuMax, Limit, Limits};
use crate::cgroup::KillRequest;
use crate::job::containment::ContainmentRequest;
use crate::job::limits::LimitsVia;
use crate::job::policy::{Ladder, LeftoverPolicy};
use crate::process::spawn::SpawnMethod;

/// Every default, in one place.
pub mod defaults {
    use std::time::Duration;
    /// Name of cgjob's parent cgroup under the cgroup2 root.
    pub const PARENT: &str = "cgjob";
    /// Between SIGTERM to leftovers and the kill.
    pub const GRACE: Duration = Duration::from_secs(2);
    /// From `populated 1` after the first kill pass to "unkillable".
    pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Between kill passes while the cgroup stays populated.
    pub const REKILL_INTERVAL: Duration = Duration::from_millis(200);
    /// Longest job name.
    pub const NAME_MAX: usize = 64;
}

/// Where signals received by cgjob go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ForwardTo {
    /// The main process only (as tini).
    #[default]
    Main,
    /// Every process of the job.
    All,
}

/// A job cgroup name: 1–64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
/// That keeps it a single path component, clear of cgroupfs interface files
/// (`cgroup.procs`…) and of option parsing in scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobName(String);

/// Check that `s` is safe as one cgroup path component: 1–`max` characters of
/// `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` (no `..`, no `/`, no NUL, clear of
/// cgroupfs interface files and of option parsing in scripts). `what` names it in errors.
pub fn check_component(s: &str, what: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("a {what} cannot be empty"));
    }
    if s.len() > max {
        return Err(format!(
            "{what} is {} characters long; at most {max}",
            s.len()
        ));
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(format!("{what} {s:?} must not start with '.' or '-'"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "{what} {:?} has {c:?}; use letters, digits, '.', '_' and '-'",
            s.escape_debug().to_string()
        ));
    }
    Ok(())
}

impl JobName {
    pub fn parse(s: &str) -> Result<JobName, String> {
        check_component(s, "job name", defaults::NAME_MAX)?;
        Ok(JobName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse a duration: a plain number of seconds (`10`, `1.5`, as GNU `timeout`), or with units
/// (`500ms`, `10s`, `1m30s`, `2h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| {
            format!("invalid duration {s:?}: must be a non-negative number of seconds")
        });
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("invalid duration {s:?}; use e.g. 30, 1.5, 500ms, 10s, 1m30s"))
}

/// Parse a memory size: bytes, or with a binary suffix (`512K`, `512M`, `2G`, `1T`; `k`/`m`/`g`/`t`
/// and a trailing `B`/`iB` are accepted too), or `max` for no limit.
pub fn parse_size(s: &str) -> Result<Limit, String> {
    let t = s.trim();
    if t == "max" {
        return Ok(Limit::Max);
    }
    let bad = || format!("invalid size {s:?}; use e.g. 512M, 2G, 1048576 or max");
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_end_matches("iB").trim_end_matches('B');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .map(Limit::Value)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parse a process count (`20`) or `max`.
pub fn parse_pids_max(s: &str) -> Result<Limit, String> {
    match s.trim() {
        "max" => Ok(Limit::Max),
        t => match t.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Limit::Value(n)),
            _ => Err(format!(
                "invalid process count {s:?}; use a number of at least 1, or max"
            )),
        },
    }
}

/// The period a `--cpus` quota is expressed over, as the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms and periods outside 1 ms – 1 s.
const CPU_QUOTA_MIN_US: u64 = 1_000;
const CPU_PERIOD_MAX_US: u64 = 1_000_000;

/// Parse `--cpus`: a number of CPUs (`1.5` is 150000 µs per 100000 µs), or `max`.
pub fn parse_cpus(s: &str) -> Result<CpuMax, String> {
    let t = s.trim();
    if t == "max" {
        return Ok(CpuMax {
            quota_us: None,
            period_us: CPU_PERIOD_US,
        });
    }
    let bad = || format!("invalid CPU count {s:?}; use e.g. 0.5, 1.5, 2 or max");
    let n: f64 = t.parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 || n > 65_536.0 {
        return Err(bad());
    }
    let quota = (n * CPU_PERIOD_US as f64).round() as u64;
    if quota < CPU_QUOTA_MIN_US {
        return Err(format!(
            "CPU count {s:?} is below the kernel's minimum of 0.01"
        ));
    }
    Ok(CpuMax {
        quota_us: Some(quota),
        period_us: CPU_PERIOD_US,
    })
}

/// Parse `--cpu-max QUOTA/PERIOD` in microseconds (`50000/100000`; `max/100000`).
pub fn parse_cpu_max(s: &str) -> Result<CpuMax, String> {
    let bad = || {
        format!("invalid CPU quota {s:?}; use QUOTA/PERIOD in microseconds, e.g. 50000/100000 or max/100000 (QUOTA at least 1000, PERIOD 1000 to 1000000)")
    };
    let (q, p) = s.trim().split_once('/').ok_or_else(bad)?;
    let period: u64 = p.trim().parse().map_err(|_| bad())?;
    if !(CPU_QUOTA_MIN_US..=CPU_PERIOD_MAX_US).contains(&period) {
        return Err(bad());
    }
    let quota_us = match q.trim() {
        "max" => None,
        q => match q.parse::<u64>() {
            Ok(n) if n >= CPU_QUOTA_MIN_US => Some(n),
            _ => return Err(bad()),
        },
    };
    Ok(CpuMax {
        quota_us,
        period_us: period,
    })
}

/// Parse a CPU list (`0`, `0-3`, `0,2-3`): kept as written once checked.
pub fn parse_cpuset(s: &str) -> Result<String, String> {
    let bad = || format!("invalid CPU list {s:?}; use e.g. 0, 0-3 or 0,2-3");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    for part in t.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(bad()),
        };
        if a > b {
            return Err(bad());
        }
    }
    Ok(t.to_owned())
}

/// Settings of `cgjob run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub command: Vec<OsString>,
    /// Use this cgroup2 directory as the root instead of the mount found in mountinfo.
    pub cgroup_root: Option<PathBuf>,
    /// Parent of the job cgroup: absolute, or relative to the cgroup2 root.
    pub parent: Option<PathBuf>,
    pub name: Option<JobName>,
    /// How to contain the job (`auto`: the strongest the host allows).
    pub containment: ContainmentRequest,
    /// A job without a cgroup of its own is an error, not a fallback.
    pub require_cgroup: bool,
    pub forward_to: ForwardTo,
    pub ladder: Ladder,
    pub kill: KillRequest,
    pub spawn: SpawnMethod,
    pub report: Option<PathBuf>,
    pub json: bool,
    pub verbose: bool,
    /// Resource limits (none by default).
    pub limits: Limits,
    /// Which cgroup version may carry them.
    pub limits_via: LimitsVia,
}

impl RunConfig {
    /// A configuration with every default, for `command`.
    pub fn new(command: Vec<OsString>) -> Self {
        RunConfig {
            command,
            cgroup_root: None,
            parent: None,
            name: None,
            containment: ContainmentRequest::Auto,
            require_cgroup: false,
            forward_to: ForwardTo::Main,
            ladder: Ladder {
                grace: defaults::GRACE,
                leftovers: LeftoverPolicy::Term,
                timeout: None,
                timeout_signal: libc::SIGTERM,
                kill_after: defaults::GRACE,
                kill_timeout: defaults::KILL_TIMEOUT,
                rekill_interval: defaults::REKILL_INTERVAL,
            },
            kill: KillRequest::Auto,
            spawn: SpawnMethod::Clone3,
            report: None,
            json: false,
            verbose: false,
            limits: Limits::default(),
            limits_via: LimitsVia::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok: &[(&str, Duration)] = &[
            ("10", Duration::from_secs(10)),
            ("1.5", Duration::from_millis(1500)),
            ("0", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        for bad in ["", "-1", "abc", "10x", "NaN", "inf", "1e400", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_counts_cpus_and_cpusets() {
        let sizes: &[(&str, Limit)] = &[
            ("max", Limit::Max),
            ("1024", Limit::Value(1024)),
            ("512K", Limit::Value(512 << 10)),
            ("512M", Limit::Value(512 << 20)),
            ("32m", Limit::Value(32 << 20)),
            ("2G", Limit::Value(2 << 30)),
            ("2GiB", Limit::Value(2 << 30)),
            ("1T", Limit::Value(1 << 40)),
            ("0", Limit::Value(0)),
        ];
        for (s, want) in sizes {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        for bad in ["", "-1", "1.5G", "12X", "G", "MAX", "99999999999T", "1 G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(parse_pids_max("20"), Ok(Limit::Value(20)));
        assert_eq!(parse_pids_max("max"), Ok(Limit::Max));
        for bad in ["0", "-3", "x", ""] {
            assert!(parse_pids_max(bad).is_err(), "{bad:?}");
        }
        let cpu = |q: Option<u64>, p: u64| CpuMax {
            quota_us: q,
            period_us: p,
        };
        assert_eq!(parse_cpus("1.5"), Ok(cpu(Some(150_000), 100_000)));
        assert_eq!(parse_cpus("0.5"), Ok(cpu(Some(50_000), 100_000)));
        assert_eq!(parse_cpus("2"), Ok(cpu(Some(200_000), 100_000)));
        assert_eq!(parse_cpus("max"), Ok(cpu(None, 100_000)));
        for bad in ["0", "-1", "0.001", "NaN", "inf", "x", ""] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cpu_max("50000/100000"),
            Ok(cpu(Some(50_000), 100_000))
        );
        assert_eq!(parse_cpu_max("max/20000"), Ok(cpu(None, 20_000)));
        for bad in [
            "50000",
            "500/100000",
            "50000/0",
            "50000/2000000",
            "a/b",
            "/",
        ] {
            assert!(parse_cpu_max(bad).is_err(), "{bad:?}");
        }
        for ok in ["0", "0-1", "0,2-3", "1,0"] {
            assert_eq!(parse_cpuset(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "a", "1-0", "0-", ",", "0;1", "-1"] {
            assert!(parse_cpuset(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn job_names() {
        for ok in ["a", "job-1", "slurm.1234_5", &"x".repeat(64)] {
            assert!(JobName::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../x",
            "a b",
            "a\0b",
            "é",
            "cgroup procs",
            long.as_str(),
        ] {
            assert!(JobName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
