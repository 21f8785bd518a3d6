//! The job's result for people (one line on stderr) and for programs (JSON). Never through
//! tracing, and never on stdout, which belongs to the job.

use std::io::Write;

use crate::job::containment::{Containment, HostReport};
use crate::job::leftovers::EndedBy;
use crate::job::policy::TimeoutPhase;
use crate::job::record::JobRecord;

/// How the main process ended, in words.
fn main_words(rec: &JobRecord) -> String {
    rec.exit
        .map_or_else(|| "did not finish".into(), |e| e.to_string())
}

/// The one-line summary: printed when leftovers were found, when the timeout fired, when
/// something could not be killed, or with `-v`.
pub fn summary_line(rec: &JobRecord) -> String {
    let mode = match rec.containment {
        Containment::CgroupV2 => String::new(),
        c => format!(" ({c})"),
    };
    let mut s = format!("cgjob: job {}{mode}: command {}", rec.name, main_words(rec));
    if rec.oom_killed {
        s.push_str(" (killed by the OOM killer)");
    }
    match rec.timeout.phase {
        TimeoutPhase::None => {}
        TimeoutPhase::Signalled => s.push_str(" after the timeout signal"),
        TimeoutPhase::Killed => s.push_str(", killed at the timeout"),
    }
    let n = rec.leftovers.len();
    if n == 0 {
        s.push_str("; no leftover processes");
    } else {
        let count = |e: EndedBy| {
            rec.leftovers
                .iter()
                .filter(|l| l.ended_by == Some(e))
                .count()
        };
        let outside = match rec.cgroup {
            Some(_) => rec.leftovers.iter().filter(|l| !l.in_cgroup).count(),
            None => 0,
        };
        s.push_str(&format!(
            "; {n} leftover process{}",
            if n == 1 { "" } else { "es" }
        ));
        if outside > 0 {
            s.push_str(&format!(" ({outside} outside the cgroup)"));
        }
        let mut parts = Vec::new();
        for (e, w) in [
            (EndedBy::Exited, "exited"),
            (EndedBy::ExitedDuringGrace, "exited after SIGTERM"),
            (EndedBy::Killed, "killed"),
            (EndedBy::Unkillable, "UNKILLABLE"),
        ] {
            let c = count(e);
            if c > 0 {
                parts.push(format!("{c} {w}"));
            }
        }
        if !parts.is_empty() {
            s.push_str(&format!(": {}", parts.join(", ")));
        }
        let shown: Vec<String> = rec.leftovers.iter().take(3).map(|l| l.describe()).collect();
        s.push_str(&format!(
            " [{}{}]",
            shown.join("; "),
            if n > 3 { "; …" } else { "" }
        ));
    }
    match (&rec.cgroup, rec.unkillable, rec.cgroup_removed) {
        (Some(cg), true, _) => s.push_str(&format!("; cgroup {} LEFT IN PLACE", cg.display())),
        (None, true, _) => s.push_str("; UNKILLABLE processes are LEFT RUNNING"),
        (Some(cg), false, Some(false)) => s.push_str(&format!(
            "; cgroup {} could not be removed (see `cgjob gc`)",
            cg.display()
        )),
        _ => {}
    }
    s
}

pub fn summary(rec: &JobRecord, verbose: bool) {
    let notable = !rec.leftovers.is_empty()
        || rec.unkillable
        || rec.timeout.phase != TimeoutPhase::None
        || rec.cgroup_removed == Some(false)
        || rec.oom_killed;
    if notable || verbose {
        eprintln!("{}", summary_line(rec));
    }
    if rec.unkillable {
        for l in rec
            .leftovers
            .iter()
            .filter(|l| l.ended_by == Some(EndedBy::Unkillable))
        {
            eprintln!(
                "cgjob: unkillable: pid {} state {} wchan {} {}",
                l.pid,
                l.state,
                l.wchan.as_deref().unwrap_or("?"),
                l.cmdline.join(" ")
            );
        }
    }
}

/// The one line said before a job runs as cgjob's process tree because the host (or this
/// user) has no cgroup to give: loud, whatever the log level.
pub fn degraded_line(why: &str) -> String {
    format!(
        "cgjob: WARNING: weaker containment (subreaper), no cgroup for the job: {why}; {}; --require-cgroup makes this an error",
        crate::job::containment::SUBREAPER_WEAKNESS
    )
}

/// `cgjob doctor` for people: one `what: finding` line each, then the verdict and its reasons.
pub fn doctor_text(r: &HostReport) -> String {
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown (no cgroup to look at)",
    };
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    };
    let mut lines: Vec<(&str, String)> = vec![
        ("user", format!("uid {}", r.uid)),
        (
            "cgroup2 mount",
            match (&r.cgroup2_mount, r.cgroup2_read_only) {
                (Some(m), Some(ro)) => {
                    format!(
                        "{} ({})",
                        m.display(),
                        if ro { "read-only" } else { "read-write" }
                    )
                }
                _ => "none".into(),
            },
        ),
        (
            "v2 controllers",
            if r.controllers.is_empty() {
                "none".into()
            } else {
                r.controllers.join(" ")
            },
        ),
        ("cgjob's cgroup", path(&r.own_cgroup)),
        ("job cgroups under", path(&r.job_parent)),
        (
            "writable",
            if r.cgroup_problem.is_none() {
                "yes".into()
            } else {
                format!("no: {}", r.cgroup_problem.as_deref().unwrap_or_default())
            },
        ),
        (
            "delegated subtree",
            match (&r.delegated_cgroup, r.uid) {
                (_, 0) => "not needed (root)".into(),
                (Some(d), _) => format!(
                    "{}{}",
                    d.display(),
                    if r.needs_leaf {
                        " (cgjob would move itself into a leaf of it)"
                    } else {
                        ""
                    }
                ),
                (None, _) => "none".into(),
            },
        ),
        ("cgroup.kill (5.14)", yes_no(r.cgroup_kill).into()),
        ("cgroup.freeze (5.2)", yes_no(r.cgroup_freeze).into()),
        (
            "clone3 CLONE_INTO_CGROUP (5.7)",
            yes_no(Some(r.clone_into_cgroup)).into(),
        ),
        ("pidfd (5.3)", yes_no(Some(r.pidfd)).into()),
        (
            "PID 1",
            match (r.process.pid, r.process.initial_pid_namespace) {
                (1, Some(false)) => "yes, of a PID namespace".into(),
                (1, _) => "yes, of the host".into(),
                (p, Some(false)) => format!("no (pid {p}, in a PID namespace)"),
                (p, _) => format!("no (pid {p})"),
            },
        ),
        (
            "/proc",
            if r.process.proc_is_own {
                "this PID namespace's".into()
            } else {
                "another PID namespace's".into()
            },
        ),
    ];
    lines.push((
        "containment",
        r.containment
            .map_or_else(|| "NONE: cgjob run would refuse".into(), |c| c.to_string()),
    ));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!(
            "{k:width$}  {v}
"
        ));
    }
    for reason in &r.reasons {
        out.push_str(&format!(
            "{:width$}  because {reason}
",
            ""
        ));
    }
    out
}

pub fn json_line(rec: &JobRecord) {
    let line = serde_json::to_string(rec).expect("records serialize");
    eprintln!("{line}");
}

pub fn write_file(mut f: std::fs::File, rec: &JobRecord) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut f, rec)?;
    f.write_all(b"\n")?;
    f.sync_all()
}
