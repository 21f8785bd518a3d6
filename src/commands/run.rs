//! `cgjob run [OPTIONS] -- CMD [ARGS]…`

use std::fs::File;
use std::time::Duration;

use crate::cgroup::limits::Limits;
use crate::cgroup::KillRequest;
use crate::cli::{
    ContainmentArg, KillMethodArg, LeftoversArg, LimitArgs, LimitsViaArg, RunArgs, SpawnArg,
};
use crate::config::RunConfig;
use crate::job::containment::{self, Containment, ContainmentRequest};
use crate::job::limits::LimitsVia;
use crate::job::policy::{exit, LeftoverPolicy};
use crate::job::supervise;
use crate::process::spawn::SpawnMethod;
use crate::report;

/// From flags to validated settings.
pub fn config(a: RunArgs, verbose: bool) -> RunConfig {
    let mut c = RunConfig::new(a.command);
    c.cgroup_root = a.place.cgroup_root;
    c.parent = a.place.parent;
    c.name = a.name;
    c.forward_to = a.forward_to;
    c.containment = match a.containment {
        ContainmentArg::Auto => ContainmentRequest::Auto,
        ContainmentArg::CgroupV2 => ContainmentRequest::CgroupV2,
        ContainmentArg::PidNamespace => ContainmentRequest::PidNamespace,
        ContainmentArg::Subreaper => ContainmentRequest::Subreaper,
    };
    c.require_cgroup = a.require_cgroup;
    c.ladder.grace = a.grace;
    c.ladder.leftovers = match a.leftovers {
        LeftoversArg::Term => LeftoverPolicy::Term,
        LeftoversArg::Wait => LeftoverPolicy::Wait,
    };
    // As GNU timeout: a zero duration disables the timeout.
    c.ladder.timeout = a.timeout.filter(|t| *t > Duration::ZERO);
    c.ladder.timeout_signal = a.timeout_signal;
    c.ladder.kill_after = a.kill_after;
    c.ladder.kill_timeout = a.kill_timeout;
    c.kill = match a.kill_method {
        KillMethodArg::Auto => KillRequest::Auto,
        KillMethodArg::CgroupKill => KillRequest::CgroupKill,
        KillMethodArg::Freeze => KillRequest::Freeze,
    };
    c.spawn = match a.spawn {
        SpawnArg::Clone3 => SpawnMethod::Clone3,
        SpawnArg::ForkJoin => SpawnMethod::ForkJoin,
    };
    c.report = a.report;
    c.json = a.json;
    c.verbose = verbose;
    (c.limits, c.limits_via) = limits(a.limits);
    c
}

/// The limit flags as settings (shared with `job create`).
pub fn limits(a: LimitArgs) -> (Limits, LimitsVia) {
    let l = Limits {
        memory_max: a.memory_max,
        memory_high: a.memory_high,
        memory_swap_max: a.memory_swap_max,
        pids_max: a.pids_max,
        cpu_max: a.cpus.or(a.cpu_max),
        cpuset: a.cpuset,
    };
    let via = match a.limits_via {
        LimitsViaArg::Auto => LimitsVia::Auto,
        LimitsViaArg::CgroupV2 => LimitsVia::CgroupV2,
        LimitsViaArg::CgroupV1 => LimitsVia::CgroupV1,
    };
    (l, via)
}

/// Settings that contradict each other: a usage error.
fn contradiction(c: &RunConfig) -> Option<String> {
    let no_cgroup = matches!(
        c.containment,
        ContainmentRequest::PidNamespace | ContainmentRequest::Subreaper
    );
    if no_cgroup && c.require_cgroup {
        return Some(
            "--require-cgroup cannot be combined with --containment pid-namespace or subreaper"
                .into(),
        );
    }
    if no_cgroup && !c.limits.is_empty() {
        return Some(
            "resource limits need a cgroup; --containment pid-namespace and subreaper make none"
                .into(),
        );
    }
    if no_cgroup && (c.parent.is_some() || c.cgroup_root.is_some()) {
        return Some("--parent and --cgroup-root place a job cgroup; --containment pid-namespace and subreaper make none".into());
    }
    None
}

pub fn run(args: RunArgs, verbose: bool) -> i32 {
    let cfg = config(args, verbose);
    if let Some(msg) = contradiction(&cfg) {
        eprintln!("cgjob: {msg} (see --help)");
        return exit::USAGE;
    }
    // Open the report file before anything starts: a path that cannot be written is bad input,
    // found before the job runs rather than after.
    let report_file = match &cfg.report {
        Some(p) => match File::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("cgjob: cannot write report file {}: {e}", p.display());
                return exit::FAILURE;
            }
        },
        None => None,
    };
    let prep = match containment::prepare(&cfg) {
        Ok(p) => p,
        Err(e) => {
            super::print_error(&e);
            if let Some(p) = &cfg.report {
                let _ = std::fs::remove_file(p);
            }
            return exit::FAILURE;
        }
    };
    // Falling back to the process tree is said loudly, whatever the log level; a PID
    // namespace is the usual state of a container's entrypoint, and the record says it.
    match (&prep.degraded, prep.containment) {
        (Some(why), Containment::Subreaper) => eprintln!("{}", report::degraded_line(why)),
        (Some(why), c) => tracing::info!(containment = %c, reason = %why, "no cgroup for the job"),
        (None, _) => {}
    }
    match supervise::run(&cfg, &prep) {
        Ok(rec) => {
            report::summary(&rec, cfg.verbose);
            if cfg.json {
                report::json_line(&rec);
            }
            if let (Some(f), Some(p)) = (report_file, &cfg.report) {
                if let Err(e) = report::write_file(f, &rec) {
                    eprintln!("cgjob: cannot write report file {}: {e}", p.display());
                    return exit::FAILURE;
                }
            }
            rec.exit_status
        }
        Err(e) => {
            super::print_error(&e);
            if let Some(p) = &cfg.report {
                // Nothing ran: do not leave an empty report behind.
                let _ = std::fs::remove_file(p);
            }
            e.exit_status()
        }
    }
}
