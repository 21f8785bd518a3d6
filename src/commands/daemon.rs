//! `cgjob daemon`: the node daemon (see `crate::daemon`). Thin: flags → config, start, serve.

use std::path::PathBuf;

use clap::{Args, ValueHint};

use crate::cli::PlaceArgs;
use crate::daemon::metrics::MetricsFile;
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
    #[arg(long, value_name = "PATH", default_value = "/run/cgjob/cgjob.sock", env = "CGJOB_SOCKET", value_hint = ValueHint::FilePath)]
    pub socket: PathBuf,

    /// Where the results of finished jobs are appended, one JSON line each (moved to
    /// PATH.1 past 16 MiB).
    #[arg(long, value_name = "PATH", default_value = "/var/lib/cgjob/results.jsonl", value_hint = ValueHint::FilePath)]
    pub results: PathBuf,

    /// Write metrics in Prometheus text format to PATH (for node_exporter's textfile
    /// collector, e.g. /var/lib/prometheus/node-exporter/cgjob.prom), rewritten on change.
    #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub metrics: Option<PathBuf>,
}

pub fn daemon(a: DaemonArgs) -> i32 {
    let parent = match place::hierarchy(a.place.cgroup_root.as_deref())
        .and_then(|h| place::parent_dir(&h, a.place.parent.as_deref()))
    {
        Ok(p) => p,
        Err(e) => {
            super::print_error(&e);
            return exit::FAILURE;
        }
    };
    let cfg = Config {
        socket: a.socket,
        parent,
        results: ResultsLog::new(&a.results, DEFAULT_MAX_BYTES),
        metrics: a.metrics.as_deref().map(MetricsFile::new),
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
