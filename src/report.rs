//! The job's result for people (one line on stderr) and for programs (JSON). Never through
//! tracing, and never on stdout, which belongs to the job.

use std::io::Write;

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
    let mut s = format!("cgjob: job {}: command {}", rec.name, main_words(rec));
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
        let outside = rec.leftovers.iter().filter(|l| !l.in_cgroup).count();
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
    if rec.unkillable {
        s.push_str(&format!("; cgroup {} LEFT IN PLACE", rec.cgroup.display()));
    } else if !rec.cgroup_removed {
        s.push_str(&format!(
            "; cgroup {} could not be removed (see `cgjob gc`)",
            rec.cgroup.display()
        ));
    }
    s
}

pub fn summary(rec: &JobRecord, verbose: bool) {
    let notable = !rec.leftovers.is_empty()
        || rec.unkillable
        || rec.timeout.phase != TimeoutPhase::None
        || !rec.cgroup_removed;
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

pub fn json_line(rec: &JobRecord) {
    let line = serde_json::to_string(rec).expect("records serialize");
    eprintln!("{line}");
}

pub fn write_file(mut f: std::fs::File, rec: &JobRecord) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut f, rec)?;
    f.write_all(b"\n")?;
    f.sync_all()
}
