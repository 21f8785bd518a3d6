//! POLICY: finding and removing stale job cgroups — those whose owner record names a
//! supervisor that is gone (killed, crashed, or its guardian could not finish). Cgroups
//! without cgjob's owner record are never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::leftovers::{Leftover, Tracker};
use super::meta;
use crate::cgroup::kill::{self, KillError, KillRequest};
use crate::cgroup::{Cgroup, CgroupFsError, EventsFile};

/// An empty scheduler job cgroup younger than this is left alone: its tasks may not have
/// started yet, or an allocation may be between steps (a Slurm `salloc` left idle for hours
/// has nothing on the node, and its next `srun` task must still find its cgroup).
const BATCH_MIN_AGE_SECS: u64 = 24 * 3600;

/// How long `gc` keeps killing one stale cgroup before giving up on it.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GcOutcome {
    Removed,
    WouldRemove,
    /// Processes survived every kill; the cgroup stays.
    NotEmptied,
}

#[derive(Debug, Serialize)]
pub struct StaleJob {
    pub name: String,
    pub cgroup: PathBuf,
    pub supervisor_pid: i32,
    pub outcome: GcOutcome,
    /// The processes found in it.
    pub processes: Vec<Leftover>,
}

impl StaleJob {
    pub fn describe(&self) -> String {
        let what = match self.outcome {
            GcOutcome::Removed => "removed",
            GcOutcome::WouldRemove => "would remove",
            GcOutcome::NotEmptied => "could NOT empty",
        };
        let procs: Vec<String> = self.processes.iter().map(|p| p.describe()).collect();
        format!(
            "{what} stale job cgroup {} (supervisor pid {} gone; {} process{}{}{})",
            self.cgroup.display(),
            self.supervisor_pid,
            procs.len(),
            if procs.len() == 1 { "" } else { "es" },
            if procs.is_empty() { "" } else { ": " },
            procs.join("; ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Fs(#[from] CgroupFsError),
    #[error(transparent)]
    Kill(#[from] KillError),
    #[error("cannot list {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sweep `parent` for stale job cgroups.
pub fn sweep(parent: &Path, dry_run: bool) -> Result<Vec<StaleJob>, GcError> {
    let rd = match std::fs::read_dir(parent) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(GcError::List {
                path: parent.to_owned(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        if !ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if let Some(s) = collect(&Cgroup::at(ent.path()), dry_run)? {
            out.push(s);
        }
    }
    Ok(out)
}

/// The job cgroup `cg`, if it is stale: emptied (kill passes, bounded), removed with the v1
/// cgroups made beside it for limits, and what was in it. `None` when it is not a job
/// cgroup of cgjob's, or not stale, or gone meanwhile.
pub fn collect(cg: &Cgroup, dry_run: bool) -> Result<Option<StaleJob>, GcError> {
    let m = match meta::read(cg) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(e) if e.is_gone() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if m.is_batch() {
        // A scheduler's job has no supervisor to check: its cgroup is stale when it holds
        // no process and is older than any prolog-to-first-task gap.
        let populated = EventsFile::open(cg.path())
            .and_then(|e| e.read())
            .map(|e| e.populated)
            .unwrap_or(true);
        if populated || m.age() < BATCH_MIN_AGE_SECS {
            return Ok(None);
        }
    } else if m.job_alive(cg) {
        return Ok(None);
    }
    let name = cg
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tracker = Tracker::cgroup_only();
    match tracker.scan(cg) {
        Err(e) if e.is_gone() => return Ok(None),
        r => r?,
    };
    let outcome = if dry_run {
        GcOutcome::WouldRemove
    } else if empty_it(cg, &mut tracker)? {
        match cg.remove() {
            Err(e) if !e.is_gone() => return Err(e.into()),
            _ => {
                // A job with limits on a hybrid host had v1 cgroups beside: its supervisor
                // could not remove them.
                super::limits::remove_v1_beside(cg);
                GcOutcome::Removed
            }
        }
    } else {
        GcOutcome::NotEmptied
    };
    if !dry_run {
        tracker.mark_at_end();
    }
    Ok(Some(StaleJob {
        name,
        cgroup: cg.path().to_owned(),
        supervisor_pid: m.supervisor_pid,
        outcome,
        processes: std::mem::take(&mut tracker.leftovers),
    }))
}

/// Kill passes until `populated 0`, bounded. Returns whether it emptied.
fn empty_it(cg: &Cgroup, tracker: &mut Tracker) -> Result<bool, GcError> {
    // The cgroup may vanish under us (its guardian finishing the same work): that is done.
    match try_empty(cg, tracker) {
        Err(GcError::Fs(e)) if e.is_gone() => Ok(true),
        Err(GcError::Kill(KillError::Fs(e))) if e.is_gone() => Ok(true),
        r => r,
    }
}

fn try_empty(cg: &Cgroup, tracker: &mut Tracker) -> Result<bool, GcError> {
    let events = EventsFile::open(cg.path())?;
    if !events.read()?.populated {
        return Ok(true);
    }
    let method = kill::resolve(cg, KillRequest::Auto)?;
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        tracker.scan(cg)?;
        tracker.mark_at_kill();
        let freeze_by = Instant::now() + Duration::from_millis(500);
        kill::kill_pass(cg, &events, method, freeze_by)?;
        let step = (Instant::now() + Duration::from_millis(200)).min(deadline);
        let (_, empty) = events.wait_until(step, |e| !e.populated)?;
        if empty {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}
