//! Validated settings: what the command line and the environment said, checked and with every
//! default in one place. Behaviour code sees these types, never clap's.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::cgroup::KillRequest;
use crate::job::containment::ContainmentRequest;
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
