//! Node policing (off by default): on a node where users may run only inside jobs, the
//! processes of ordinary users (a uid range) that live outside every job cgroup are reported
//! and, if so configured, killed — the cgroup-era version of Grid Engine's `proc_police`.
//!
//! "Outside every job" is read from each process's cgroup v2 path: inside cgjob's parent
//! cgroup (every job's, batch or `cgjob run`) is inside; so is anything under a cgroup the
//! site allows (`--police-allow-cgroup`, e.g. a login service's). Commands on the allow-list
//! (`comm`, as `ps -o comm` shows it) are left alone, and so is every process younger than
//! [`Policy::min_age`]: a prolog may be moving it into its job right now.
//!
//! The sweep is periodic (a timer in the daemon's loop, run on a worker thread): the kernel
//! has no event for "a process appeared outside a cgroup" short of the proc connector, which
//! would wake the daemon on every fork on the node.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::process::pidfd::PidFd;
use crate::process::procinfo;

/// What to do with a process found outside every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Report,
    Kill,
}

/// The policing rules, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    pub action: Action,
    /// Uids policed, inclusive.
    pub uids: (u32, u32),
    pub allow_commands: Vec<String>,
    /// Cgroups (as `/proc/PID/cgroup` names them) whose processes are left alone; the job
    /// parent is always one.
    pub allow_cgroups: Vec<PathBuf>,
    pub min_age: Duration,
    pub interval: Duration,
}

/// A process as policing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub pid: i32,
    pub uid: u32,
    pub comm: String,
    pub state: char,
    pub cgroup: PathBuf,
    pub age: Duration,
}

impl Policy {
    /// Whether `p` runs where it may not.
    pub fn offends(&self, p: &Seen) -> bool {
        (self.uids.0..=self.uids.1).contains(&p.uid)
            && !matches!(p.state, 'Z' | 'X')
            && p.age >= self.min_age
            && !self.allow_commands.contains(&p.comm)
            && !self.allow_cgroups.iter().any(|c| p.cgroup.starts_with(c))
    }
}

/// A process found outside every job, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Offender {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub state: String,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub cgroup: PathBuf,
    /// Seconds since it started.
    pub age_s: u64,
    /// `true` once SIGKILL was sent to it (by pidfd, after checking it is the same process).
    pub killed: bool,
}

/// One pass over /proc: every process that offends, killed when the policy says so.
pub fn sweep(policy: &Policy) -> Vec<Offender> {
    let ticks = procinfo::clock_ticks().max(1);
    let Some(uptime) = procinfo::uptime() else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for st in procinfo::all_stats() {
        if st.pid == me {
            continue;
        }
        let Some(uid) = procinfo::read_uid(st.pid) else {
            continue;
        };
        if !(policy.uids.0..=policy.uids.1).contains(&uid) {
            continue;
        }
        let Some(cgroup) = procinfo::read_cgroup2_path(st.pid) else {
            continue;
        };
        let seen = Seen {
            pid: st.pid,
            uid,
            comm: st.comm.clone(),
            state: st.state,
            cgroup,
            age: uptime.saturating_sub(Duration::from_millis(st.start_ticks * 1000 / ticks)),
        };
        if !policy.offends(&seen) {
            continue;
        }
        let mut o = Offender {
            pid: st.pid,
            ppid: st.ppid,
            uid,
            state: st.state.to_string(),
            comm: st.comm.clone(),
            cmdline: procinfo::read_cmdline(st.pid),
            cgroup: seen.cgroup,
            age_s: seen.age.as_secs(),
            killed: false,
        };
        if policy.action == Action::Kill {
            o.killed = kill(st.pid, st.start_ticks);
        }
        out.push(o);
    }
    out
}

/// SIGKILL `pid` if it is still the process that started at `start_ticks`: the pidfd pins
/// it, and the check after opening it rules out a recycled pid.
fn kill(pid: i32, start_ticks: u64) -> bool {
    let Ok(Some(fd)) = PidFd::open(pid) else {
        return false;
    };
    if procinfo::read_stat(pid).map(|s| s.start_ticks) != Some(start_ticks) {
        return false;
    }
    fd.send(libc::SIGKILL).unwrap_or(false)
}

/// A uid range `MIN-MAX` (or one uid).
pub fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid uid range {s:?} (expected MIN-MAX, e.g. 1000-60000)");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u32 = a.trim().parse().map_err(|_| bad())?;
    let b: u32 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            action: Action::Report,
            uids: (1000, 60000),
            allow_commands: vec!["sshd".into()],
            allow_cgroups: vec!["/cgjob".into(), "/system.slice/sshd.service".into()],
            min_age: Duration::from_secs(10),
            interval: Duration::from_secs(30),
        }
    }

    fn seen(uid: u32, comm: &str, cgroup: &str, age: u64) -> Seen {
        Seen {
            pid: 100,
            uid,
            comm: comm.into(),
            state: 'S',
            cgroup: cgroup.into(),
            age: Duration::from_secs(age),
        }
    }

    #[test]
    fn a_user_process_outside_every_job_offends() {
        let p = policy();
        assert!(p.offends(&seen(1000, "python3", "/user.slice/user-1000.slice", 60)));
        assert!(p.offends(&seen(60000, "a.out", "/", 11)));
    }

    #[test]
    fn jobs_allowed_cgroups_commands_system_uids_and_the_young_do_not() {
        let p = policy();
        for s in [
            seen(1000, "python3", "/cgjob/job-42", 60),
            seen(1000, "python3", "/cgjob/run-1-2/sub", 60),
            seen(1000, "bash", "/system.slice/sshd.service", 60),
            seen(1000, "sshd", "/user.slice", 60),
            seen(999, "python3", "/user.slice", 60),
            seen(0, "cron", "/system.slice/cron.service", 60),
            seen(60001, "nobody", "/", 60),
            seen(1000, "python3", "/user.slice", 3),
            Seen {
                state: 'Z',
                ..seen(1000, "python3", "/user.slice", 60)
            },
        ] {
            assert!(!p.offends(&s), "{s:?}");
        }
        // A prefix by path components, not by string: /cgjobx is outside /cgjob.
        assert!(p.offends(&seen(1000, "x", "/cgjobx/job-1", 60)));
    }

    #[test]
    fn uid_ranges() {
        assert_eq!(parse_uid_range("1000-60000"), Ok((1000, 60000)));
        assert_eq!(parse_uid_range("1234"), Ok((1234, 1234)));
        for bad in ["", "a-b", "10-5", "-5", "1000-", "1-2-3"] {
            assert!(parse_uid_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sweep_reports_an_offender_and_kills_it_when_told() {
        // A child of this test, as a uid in the range; in a cgroup outside the allowed ones
        // (the test runs wherever it runs: allow nothing but a cgroup it is not in).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let uid = procinfo::read_uid(pid).unwrap();
        let p = Policy {
            action: Action::Report,
            uids: (uid, uid),
            allow_commands: Vec::new(),
            allow_cgroups: vec!["/no/such/cgroup".into()],
            min_age: Duration::ZERO,
            interval: Duration::from_secs(30),
        };
        let found = sweep(&p);
        let o = found.iter().find(|o| o.pid == pid).expect("found");
        assert!(!o.killed);
        assert_eq!(o.cmdline, ["sleep", "30"]);
        assert!(child.try_wait().unwrap().is_none(), "report only");
        // Killing goes by pidfd after checking the start time: a recycled pid is spared.
        // (Only the child is ours to kill, so `kill` is called on it alone.)
        let start = procinfo::read_stat(pid).unwrap().start_ticks;
        assert!(!kill(pid, start + 1), "another process under the same pid");
        assert!(child.try_wait().unwrap().is_none());
        assert!(kill(pid, start));
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }
}
