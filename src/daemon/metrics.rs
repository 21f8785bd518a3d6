//! The daemon's metrics in Prometheus text format, written to a file for node_exporter's
//! textfile collector: rewritten (to a temporary file, then renamed, so a scrape never reads
//! half a file) when something changed, at most once a second (so the first change after a
//! quiet spell shows at once, and a busy daemon does not rewrite it for every request); never
//! on a timer while nothing changes.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    /// Job cgroups watched now, and how many of them hold processes.
    pub jobs: u64,
    pub jobs_populated: u64,
    pub jobs_created: u64,
    pub cleanups_clean: u64,
    pub cleanups_unkillable: u64,
    pub cleanups_failed: u64,
    pub cleanup_seconds_sum: f64,
    pub leftovers_found: u64,
    pub leftovers_killed: u64,
    pub stale_jobs_removed: u64,
    /// Jobs ended by the daemon because their time limit passed.
    pub jobs_timed_out: u64,
    /// Node policing: processes found outside every job, and how many were killed.
    pub police_found: u64,
    pub police_killed: u64,
    pub requests_ok: u64,
    pub requests_refused: u64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let cleanups = self.cleanups_clean + self.cleanups_unkillable;
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            s.push_str(&format!(
                "# HELP cgjob_{name} {help}\n# TYPE cgjob_{name} {kind}\n"
            ));
            for (labels, v) in samples {
                s.push_str(&format!("cgjob_{name}{labels} {v}\n"));
            }
        };
        metric(
            "jobs",
            "gauge",
            "Job cgroups the daemon watches.",
            &[("", self.jobs.to_string())],
        );
        metric(
            "jobs_populated",
            "gauge",
            "Watched job cgroups that hold processes.",
            &[("", self.jobs_populated.to_string())],
        );
        metric(
            "jobs_created_total",
            "counter",
            "Job cgroups created through the daemon.",
            &[("", self.jobs_created.to_string())],
        );
        metric(
            "cleanups_total",
            "counter",
            "Job cleanups, by outcome.",
            &[
                ("{outcome=\"clean\"}", self.cleanups_clean.to_string()),
                (
                    "{outcome=\"unkillable\"}",
                    self.cleanups_unkillable.to_string(),
                ),
                ("{outcome=\"failed\"}", self.cleanups_failed.to_string()),
            ],
        );
        metric(
            "cleanup_duration_seconds",
            "summary",
            "Time from the start of a cleanup to its end.",
            &[
                ("_sum", format!("{:.6}", self.cleanup_seconds_sum)),
                ("_count", cleanups.to_string()),
            ],
        );
        metric(
            "leftovers_found_total",
            "counter",
            "Processes found in job cgroups at cleanup.",
            &[("", self.leftovers_found.to_string())],
        );
        metric(
            "leftovers_killed_total",
            "counter",
            "Leftover processes that had to be killed (SIGKILL).",
            &[("", self.leftovers_killed.to_string())],
        );
        metric(
            "stale_jobs_removed_total",
            "counter",
            "Stale job cgroups removed (their supervisor gone, empty for --remove-empty-after, or left over from before a restart).",
            &[("", self.stale_jobs_removed.to_string())],
        );
        metric(
            "jobs_timed_out_total",
            "counter",
            "Jobs ended because their time limit passed.",
            &[("", self.jobs_timed_out.to_string())],
        );
        metric(
            "police_processes_total",
            "counter",
            "Processes of policed users found running outside every job, by what was done.",
            &[
                (
                    "{action=\"reported\"}",
                    (self.police_found - self.police_killed.min(self.police_found)).to_string(),
                ),
                ("{action=\"killed\"}", self.police_killed.to_string()),
            ],
        );
        metric(
            "requests_total",
            "counter",
            "Requests answered, by result.",
            &[
                ("{result=\"ok\"}", self.requests_ok.to_string()),
                ("{result=\"error\"}", self.requests_refused.to_string()),
            ],
        );
        s
    }
}

/// Where the metrics go.
#[derive(Debug, Clone)]
pub struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    pub fn new(path: &Path) -> MetricsFile {
        MetricsFile {
            path: path.to_owned(),
        }
    }

    pub fn write(&self, m: &Metrics) -> std::io::Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(m.render().as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics {
            jobs: 3,
            cleanups_clean: 2,
            cleanups_unkillable: 1,
            cleanup_seconds_sum: 1.5,
            leftovers_killed: 4,
            ..Default::default()
        };
        let text = m.render();
        for want in [
            "# TYPE cgjob_jobs gauge\ncgjob_jobs 3\n",
            "cgjob_cleanups_total{outcome=\"unkillable\"} 1\n",
            "cgjob_cleanup_duration_seconds_sum 1.500000\ncgjob_cleanup_duration_seconds_count 3\n",
            "cgjob_leftovers_killed_total 4\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // Every sample line is `name{labels} value`, each metric has HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("cgjob_"), "{l}");
            v.parse::<f64>().unwrap();
        }
        assert_eq!(
            text.matches("# HELP").count(),
            text.matches("# TYPE").count()
        );
        let dir = tempfile::tempdir().unwrap();
        let f = MetricsFile::new(&dir.path().join("cgjob.prom"));
        f.write(&m).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgjob.prom")).unwrap(),
            text
        );
    }
}
