//! `cgjob daemon`: the node daemon (see `crate::daemon`). Thin: flags → config, start, serve.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueHint};

use crate::cgroup::Cgroup;
use crate::cli::PlaceArgs;
use crate::daemon::metrics::MetricsFile;
use crate::daemon::police::{self, Policy};
use crate::daemon::results::{ResultsLog, DEFAULT_MAX_BYTES};
use crate::daemon::server::{Config, Daemon};
use crate::job::place;
use crate::job::policy::exit;

/// Flags of `cgjob daemon` (kept here rather than in `cli`, which only names the type).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub place: PlaceArgs,

    /// The Unix socket to serve on; its directory is made 0755, the socket 0666 (requests
    /// are authorized by the caller's uid).
    #[arg(long, value_name = "PATH", default_value = crate::daemon::client::DEFAULT_SOCKET, env = "CGJOB_SOCKET", value_hint = ValueHint::FilePath)]
    pub socket: PathBuf,

    /// Where the results of finished jobs are appended, one JSON line each (moved to
    /// PATH.1 past 16 MiB).
    #[arg(long, value_name = "PATH", default_value = "/var/lib/cgjob/results.jsonl", value_hint = ValueHint::FilePath)]
    pub results: PathBuf,

    /// Write metrics in Prometheus text format to PATH (for node_exporter's textfile
    /// collector, e.g. /var/lib/prometheus/node-exporter/cgjob.prom), rewritten on change,
    /// at most once a second.
    #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub metrics: Option<PathBuf>,

    /// Most connections one user other than root may hold open at once; more are refused.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients_per_user: u32,

    /// A scheduler's job that has held no process for this long is removed, as its epilog
    /// would (one that never came); `never` keeps empty jobs until their cleanup.
    #[arg(long, value_name = "DUR|never", default_value = "24h", value_parser = duration_or_never)]
    pub remove_empty_after: Never,

    /// Most jobs a user other than root may create for themselves through the daemon.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_jobs_per_user: u32,

    /// Node policing (off unless given): processes of the --police-uids users running
    /// outside every job cgroup are reported (in the log, the results log and to root's
    /// subscribers), and with `kill` also killed. For nodes where users may run only inside
    /// jobs.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub police: Option<police::Action>,

    /// The uids policed, MIN-MAX.
    #[arg(long, value_name = "MIN-MAX", default_value = "1000-60000", value_parser = police::parse_uid_range)]
    pub police_uids: (u32, u32),

    /// Commands (`comm`, as `ps -o comm` shows them) never policed; repeat or separate with
    /// commas (e.g. sshd,systemd,sd-pam).
    #[arg(long, value_name = "COMM", value_delimiter = ',')]
    pub police_allow: Vec<String>,

    /// Cgroups whose processes are never policed, as /proc/PID/cgroup names them (e.g.
    /// /system.slice/sshd.service); repeatable. The job parent is always allowed.
    #[arg(long, value_name = "CGROUP", value_parser = absolute_cgroup)]
    pub police_allow_cgroup: Vec<PathBuf>,

    /// Time between policing sweeps (at least 1s).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = at_least_a_second)]
    pub police_interval: Duration,

    /// Processes younger than this are not policed yet (a prolog may be moving them into
    /// their job).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub police_min_age: Duration,
}

/// A duration, or `never` (`None`). (A type of its own: clap takes an `Option` field for
/// an optional flag.)
#[derive(Debug, Clone, Copy)]
pub struct Never(pub Option<Duration>);

fn duration_or_never(s: &str) -> Result<Never, String> {
    if s.trim() == "never" {
        return Ok(Never(None));
    }
    crate::config::parse_duration(s).map(|d| Never(Some(d)))
}

fn at_least_a_second(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is under 1s"));
    }
    Ok(d)
}

fn absolute_cgroup(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!(
            "{s:?} is not a cgroup path as /proc/PID/cgroup shows it (absolute, no ..)"
        ));
    }
    Ok(p)
}

pub fn daemon(a: DaemonArgs) -> i32 {
    // A descriptor per job watched and per client, a pidfd per process at a cleanup: far
    // above the usual soft limit of 1024.
    crate::process::raise_nofile();
    let (hier, parent) = match place::hierarchy(a.place.cgroup_root.as_deref()).and_then(|h| {
        let p = place::parent_dir(&h, a.place.parent.as_deref())?;
        Ok((h, p))
    }) {
        Ok(p) => p,
        Err(e) => {
            super::print_error(&e);
            return exit::FAILURE;
        }
    };
    let police = a.police.map(|action| {
        let mut allow_cgroups = vec![place::proc_view(&hier, &Cgroup::at(&parent))];
        allow_cgroups.extend(a.police_allow_cgroup);
        Policy {
            action,
            uids: a.police_uids,
            allow_commands: a.police_allow,
            allow_cgroups,
            min_age: a.police_min_age,
            interval: a.police_interval,
        }
    });
    let cfg = Config {
        socket: a.socket,
        parent,
        results: ResultsLog::new(&a.results, DEFAULT_MAX_BYTES),
        metrics: a.metrics.as_deref().map(MetricsFile::new),
        police,
        max_clients_per_user: a.max_clients_per_user as usize,
        max_jobs_per_user: a.max_jobs_per_user as usize,
        remove_empty_after: a.remove_empty_after.0,
    };
    let mut d = match Daemon::start(cfg.clone()) {
        Ok(d) => d,
        Err(e) => {
            super::print_error(&e);
            return exit::FAILURE;
        }
    };
    tracing::info!(socket = %cfg.socket.display(), parent = %cfg.parent.display(), jobs = d.jobs(), "serving");
    let status = format!(
        "READY=1\nSTATUS=serving {} jobs on {}",
        d.jobs(),
        cfg.socket.display()
    );
    if let Err(e) = crate::daemon::sd_notify(&status) {
        tracing::warn!(error = %e, "cannot notify readiness");
    }
    match d.run() {
        Ok(()) => 0,
        Err(e) => {
            super::print_error(&e);
            exit::FAILURE
        }
    }
}
