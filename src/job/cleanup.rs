//! POLICY: creating a scheduler job's cgroup (prolog) and cleaning it up (epilog): SIGTERM,
//! a grace period, then kill passes until empty; optionally a sweep for the job's processes
//! that live outside the cgroup (same uid, the scheduler's job id in their environment).
//! Everything found is reported as data.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::batch::{self, JobId, Scheduler};
use super::leftovers::{Leftover, Tracker};
use super::limits::{self, LimitsError, LimitsVia};
use super::meta::{self, JobMeta};
use super::place::PlaceError;
use crate::cgroup::kill::{self, KillError, KillMethod, KillRequest};
use crate::cgroup::limits::Limits;
use crate::cgroup::{mount, v1, Cgroup, CgroupFsError, EventsFile};
use crate::process::procinfo;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error(transparent)]
    Fs(#[from] CgroupFsError),
    #[error(transparent)]
    Kill(#[from] KillError),
    #[error("no cgroup for job {0} (was `cgjob job create` run for it?)")]
    NoSuchJob(JobId),
    #[error(transparent)]
    Limits(#[from] LimitsError),
}

/// What `create` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Created {
    pub job_id: String,
    pub cgroup: PathBuf,
    /// False when the cgroup was there already, empty (a repeated prolog).
    pub created: bool,
    /// Processes of an earlier job with the same id, found in the cgroup and killed.
    pub stale: Vec<Leftover>,
    /// The job's resource limits, and where they were applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
}

/// What `create` makes.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub scheduler: Scheduler,
    /// The job's user.
    pub uid: u32,
    pub timeout: Option<meta::TimeLimit>,
    pub limits: Limits,
    pub limits_via: LimitsVia,
}

impl CreateSpec {
    /// A job of `uid`, without a time limit or resource limits.
    pub fn plain(scheduler: Scheduler, uid: u32) -> CreateSpec {
        CreateSpec {
            scheduler,
            uid,
            timeout: None,
            limits: Limits::default(),
            limits_via: LimitsVia::Auto,
        }
    }
}

/// Make the cgroup of job `id` (idempotent). A cgroup that already holds processes belongs
/// to an earlier job with the same id — the prolog runs before any process of this job
/// exists — so they are killed and reported, and the cgroup is reused.
pub fn create(parent: &Path, id: &JobId, spec: &CreateSpec) -> Result<Created, JobError> {
    if !parent.is_dir() {
        Cgroup::ensure(parent).map_err(PlaceError::from)?;
    }
    let cg = batch::job_cgroup(parent, id);
    let (created, stale) = match std::fs::create_dir(cg.path()) {
        Ok(()) => (true, Vec::new()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let events = EventsFile::open(cg.path())?;
            let stale = if events.read()?.populated {
                let mut t = Tracker::cgroup_only();
                t.scan(&cg)?;
                if !kill_until_empty(&cg, &events, &mut t, KILL_TIMEOUT)? {
                    tracing::warn!(cgroup = %cg.path().display(), "processes of an earlier job could not be killed");
                }
                t.mark_at_end();
                t.leftovers
            } else {
                Vec::new()
            };
            (false, stale)
        }
        Err(e) => {
            return Err(PlaceError::from(CgroupFsError::new("create cgroup", cg.path(), e)).into())
        }
    };
    let limits = match apply_limits(&cg, created, spec) {
        Ok(l) => l,
        Err(e) => {
            if created {
                // Nothing of a job whose limits cannot be had is left.
                let _ = cg.remove();
            }
            return Err(e);
        }
    };
    let record = JobMeta {
        timeout: spec.timeout,
        ..JobMeta::for_batch(id.as_str(), spec.scheduler, spec.uid)
    };
    if let Err(e) = meta::write(&cg, &record) {
        tracing::warn!(error = %e, "cannot record the job's owner on its cgroup");
    }
    Ok(Created {
        job_id: id.to_string(),
        cgroup: cg.path().to_owned(),
        created,
        stale,
        limits,
    })
}

/// Put the job's resource limits in place on its cgroup (v2), or on v1 cgroups beside it
/// (hybrid hosts), which the processes that join the job join too. Those of an earlier job of
/// the same id go first. The record of what was applied, `None` without limits.
fn apply_limits(
    cg: &Cgroup,
    created: bool,
    spec: &CreateSpec,
) -> Result<Option<serde_json::Value>, JobError> {
    if !created || !spec.limits.is_empty() {
        // (A fresh job without limits skips the look at the mount table: the common case.)
        limits::remove_v1_beside(cg);
    }
    if spec.limits.is_empty() {
        return Ok(None);
    }
    let rel = mount::relative(cg.path())
        .unwrap_or_else(|| cg.path().strip_prefix("/").unwrap_or(cg.path()).to_owned());
    let l = limits::setup(cg, &rel, &spec.limits, spec.limits_via, &v1::find())?
        .expect("limits were asked for");
    tracing::info!(applied_via = %l.via, "resource limits set");
    Ok(Some(
        serde_json::to_value(l.record(None)).expect("limits serialize"),
    ))
}

/// How long kill passes go on before what is left is declared unkillable.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const REKILL: Duration = Duration::from_millis(200);

/// Settings of a cleanup.
#[derive(Debug, Clone)]
pub struct CleanupSpec {
    pub grace: Duration,
    pub kill_timeout: Duration,
    /// Also look for the job's processes outside its cgroup: same uid, and this
    /// `VAR=value` in their environment.
    pub sweep: Option<Sweep>,
    /// Move cgjob and those of its ancestors that are in the job cgroup out of it (to this
    /// cgroup) before anything is killed: for an epilog run by a process of the job's
    /// cgroup (Grid Engine's shepherd, moved in by the prolog so that the job is born inside).
    pub spare_ancestors_to: Option<Cgroup>,
}

#[derive(Debug, Clone)]
pub struct Sweep {
    pub uid: u32,
    pub var: String,
    pub value: String,
}

/// The result of a cleanup.
#[derive(Debug, Serialize, Deserialize)]
pub struct Cleaned {
    pub job_id: String,
    pub cgroup: PathBuf,
    /// Every process found, with how it ended; `in_cgroup: false` for those found by the sweep.
    pub leftovers: Vec<Leftover>,
    pub kill_method: Option<KillMethod>,
    pub duration_ms: f64,
    pub cgroup_removed: bool,
    /// Something survived every kill: the node is not clean.
    pub unkillable: bool,
    /// cgjob and its ancestors moved out of the cgroup before the kill (`--spare-ancestors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<i32>,
    /// What the job's cgroups counted (memory peak, OOM kills, CPU time, …), read at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<limits::CurrentUsage>,
}

/// Empty and remove the cgroup of job `id`: SIGTERM everything (and SIGCONT the stopped),
/// wait the grace period for it to leave (event-driven), then kill passes until empty.
pub fn cleanup(parent: &Path, id: &JobId, spec: &CleanupSpec) -> Result<Cleaned, JobError> {
    let started = Instant::now();
    let cg = batch::job_cgroup(parent, id);
    let exists = cg.path().is_dir();
    let mut t = Tracker::cgroup_only();
    let events = if exists {
        Some(EventsFile::open(cg.path())?)
    } else {
        None
    };
    let spared = match (&spec.spare_ancestors_to, exists) {
        (Some(to), true) => spare_ancestors(&cg, to)?,
        _ => Vec::new(),
    };

    // Record the cgroup's processes and the sweep's, then SIGTERM them all at once: frozen
    // while the signals go out (and what was born meanwhile is recorded), so that the thaw
    // delivers them together and no process acts on another's death first.
    if exists {
        let found = t.snapshot(&cg)?;
        t.describe(found);
    }
    if let Some(sw) = &spec.sweep {
        let outside = find_outside(sw, &cg);
        let found = t.found_outside(&outside);
        t.describe(found);
    }
    let frozen = match &events {
        Some(ev) if cg.has_file("cgroup.freeze") => {
            kill::freeze(&cg, ev, Instant::now() + Duration::from_millis(500))?;
            let late = t.snapshot(&cg);
            if let Ok(found) = late {
                t.describe(found);
            }
            true
        }
        _ => false,
    };
    t.signal_all(libc::SIGTERM, true);
    t.continue_stopped();
    if frozen {
        kill::thaw(&cg)?;
    }
    let mut method = None;
    let mut clean = wait_gone(events.as_ref(), &t, Instant::now() + spec.grace)?;
    if !clean {
        if let Some(ev) = &events {
            let m = kill::resolve(&cg, KillRequest::Auto)?;
            method = Some(m);
            // Newcomers since the SIGTERM are recorded as they are killed.
            t.scan(&cg)?;
            t.mark_at_kill();
            clean = kill_until_empty(&cg, ev, &mut t, spec.kill_timeout)?;
        } else {
            t.mark_at_kill();
        }
        t.kill_escaped();
        clean = clean && wait_gone(None, &t, Instant::now() + spec.kill_timeout)?;
    }
    t.mark_at_end();
    let usage = exists.then(|| limits::current_usage(&cg));
    let removed = if exists && clean {
        match cg.remove() {
            Ok(()) => {
                limits::remove_v1_beside(&cg);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove the job cgroup");
                false
            }
        }
    } else {
        !exists
    };
    Ok(Cleaned {
        job_id: id.to_string(),
        cgroup: cg.path().to_owned(),
        unkillable: !clean,
        leftovers: t.leftovers,
        kill_method: method,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        cgroup_removed: removed,
        spared,
        usage,
    })
}

/// Move the calling process, then its parent, grandparent… out of `cg` into `to`, for as long
/// as they are in `cg`. Returns the pids moved.
fn spare_ancestors(cg: &Cgroup, to: &Cgroup) -> Result<Vec<i32>, JobError> {
    let inside: std::collections::HashSet<i32> = cg.procs_recursive()?.into_iter().collect();
    let mut moved = Vec::new();
    let mut pid = std::process::id() as i32;
    while pid > 1 && inside.contains(&pid) {
        to.add_process(pid)?;
        moved.push(pid);
        match procinfo::read_stat(pid) {
            Some(st) => pid = st.ppid,
            None => break,
        }
    }
    Ok(moved)
}

/// Kill passes (SIGKILL to the sweep's processes too) until the cgroup is empty, bounded.
fn kill_until_empty(
    cg: &Cgroup,
    events: &EventsFile,
    t: &mut Tracker,
    timeout: Duration,
) -> Result<bool, JobError> {
    let method = kill::resolve(cg, KillRequest::Auto)?;
    let deadline = Instant::now() + timeout;
    loop {
        match kill::kill_pass(
            cg,
            events,
            method,
            Instant::now() + Duration::from_millis(500),
        ) {
            Err(KillError::Fs(e)) if e.is_gone() => return Ok(true),
            r => r?,
        }
        t.kill_escaped();
        let step = (Instant::now() + REKILL).min(deadline);
        let (_, empty) = match events.wait_until(step, |e| !e.populated) {
            Err(e) if e.is_gone() => return Ok(true),
            r => r?,
        };
        if empty {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        // Record what was born since the last pass, before it is killed.
        t.scan(cg)?;
        t.mark_at_kill();
    }
}

/// Wait until the cgroup is empty and every recorded process is gone, or `deadline`:
/// one `poll` over `cgroup.events` (POLLPRI) and the processes' pidfds, no sleeping.
fn wait_gone(
    events: Option<&EventsFile>,
    t: &Tracker,
    deadline: Instant,
) -> Result<bool, JobError> {
    loop {
        let populated = match events {
            Some(e) => match e.read() {
                Ok(ev) => ev.populated,
                Err(err) if err.is_gone() => false,
                Err(err) => return Err(err.into()),
            },
            None => false,
        };
        let alive: Vec<_> = t
            .alive()
            .filter_map(|l| l.pidfd().map(|p| p.as_fd().as_raw_fd()))
            .collect();
        if !populated && alive.is_empty() {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let mut fds: Vec<libc::pollfd> = alive
            .iter()
            .map(|fd| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let (Some(e), true) = (events, populated) {
            fds.push(libc::pollfd {
                fd: e.raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            });
        }
        let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll over a local array of valid descriptors.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }
}

/// Processes outside the job cgroup that belong to the job: owned by `uid` and carrying
/// `VAR=value` in their environment (a scheduler puts its job id there; survivors keep it
/// unless they scrub it).
pub fn find_outside(sw: &Sweep, cg: &Cgroup) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let inside: std::collections::HashSet<i32> = cg
        .procs_recursive()
        .unwrap_or_default()
        .into_iter()
        .collect();
    // Never cgjob itself or its callers (an epilog and the scheduler process that runs it may
    // carry the job's variable too).
    let mut callers = std::collections::HashSet::new();
    let mut p = std::process::id() as i32;
    while p > 1 && callers.insert(p) {
        match procinfo::read_stat(p) {
            Some(st) => p = st.ppid,
            None => break,
        }
    }
    let needle = format!("{}={}", sw.var, sw.value);
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !callers.contains(pid) && !inside.contains(pid))
        // Cheap first: the owner of /proc/PID is the process's effective uid.
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == sw.uid))
        .filter(|pid| procinfo::read_uid(*pid) == Some(sw.uid))
        .filter(|pid| {
            procinfo::read_pseudo(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}
