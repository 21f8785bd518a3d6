//! POLICY: which containment a job gets, and why.
//!
//! | mode | the job is | made of | weaker where |
//! |---|---|---|---|
//! | `cgroup-v2` | a cgroup of its own | every process born in it | — |
//! | `pid-namespace` | cgjob's PID namespace (cgjob is its PID 1) | every process but cgjob | a process handed to a supervisor outside the namespace |
//! | `subreaper` | cgjob's process tree | cgjob's descendants | a process started by another supervisor (systemd --user, at, a container daemon), or orphaned after cgjob itself is killed |
//!
//! `auto` takes the strongest the host allows: a cgroup (as root under `<root>/cgjob`, as
//! another user in the delegated cgroup cgjob runs in); without one, the PID namespace when
//! cgjob is its PID 1; else the process tree, with a warning. Asking for a place (`--parent`,
//! `--cgroup-root`), for `cgroup-v2`, or `--require-cgroup` makes a missing cgroup an error.
//! Without a cgroup cgjob finds the job through /proc, which must then be its own PID
//! namespace's; and it never takes the host's PID 1 role (killing "every other process").

use std::path::PathBuf;

use serde::Serialize;

use super::limits::{self, JobLimits, LimitsError};
use super::place::{self, JobParent, PlaceError, SupervisorLeaf};
use crate::cgroup::{kill, mount, Cgroup, Cgroup2Mount};
use crate::config::{JobName, RunConfig};
use crate::process::{procinfo, spawn, PidFd};

/// How a job is contained (the result record's `containment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Containment {
    /// A cgroup v2 cgroup of its own.
    CgroupV2,
    /// cgjob's PID namespace, of which cgjob is PID 1.
    PidNamespace,
    /// cgjob's descendants, cgjob being their subreaper.
    Subreaper,
}

impl Containment {
    pub fn as_str(&self) -> &'static str {
        match self {
            Containment::CgroupV2 => "cgroup-v2",
            Containment::PidNamespace => "pid-namespace",
            Containment::Subreaper => "subreaper",
        }
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainmentRequest {
    /// The strongest the host allows.
    #[default]
    Auto,
    CgroupV2,
    PidNamespace,
    Subreaper,
}

/// What decides the modes without a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessFacts {
    /// cgjob's pid, in its own PID namespace.
    pub pid: i32,
    /// Whether that namespace is the host's initial one (`None`: cannot tell).
    pub initial_pid_namespace: Option<bool>,
    /// Whether /proc shows cgjob's own PID namespace.
    pub proc_is_own: bool,
}

impl ProcessFacts {
    pub fn of_self() -> Self {
        ProcessFacts {
            pid: std::process::id() as i32,
            initial_pid_namespace: procinfo::in_initial_pid_namespace(),
            proc_is_own: procinfo::proc_is_ours(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainmentError {
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// `--require-cgroup` (or `--containment cgroup-v2`) and no cgroup to be had.
    #[error("a cgroup is required ({flag}) and none is usable")]
    Required {
        flag: &'static str,
        #[source]
        cause: PlaceError,
    },
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("--containment pid-namespace needs cgjob to be PID 1 of a PID namespace (e.g. `unshare --pid --fork --mount-proc cgjob run …`); it runs as pid {0}")]
    NotPid1(i32),
    #[error("cgjob is PID 1 of the host's own PID namespace: without a cgroup its job would be every process of the machine; give it a cgroup")]
    HostInit,
    #[error("/proc shows another PID namespace than cgjob's, so without a cgroup cgjob cannot find the job's processes; mount a /proc for its namespace (e.g. `unshare --pid --fork --mount-proc …`)")]
    ForeignProc,
    /// `auto`: no cgroup, and no mode without one either.
    #[error("cannot contain the job here: no usable cgroup ({cgroup}), and {without}")]
    Nothing {
        cgroup: String,
        without: Box<ContainmentError>,
    },
}

/// The mode without a cgroup for a request (`auto` falls back here), from the facts alone.
pub fn without_cgroup(
    req: ContainmentRequest,
    f: &ProcessFacts,
) -> Result<Containment, ContainmentError> {
    if f.pid == 1 && f.initial_pid_namespace != Some(false) {
        return Err(ContainmentError::HostInit);
    }
    if !f.proc_is_own {
        return Err(ContainmentError::ForeignProc);
    }
    match req {
        ContainmentRequest::PidNamespace if f.pid != 1 => Err(ContainmentError::NotPid1(f.pid)),
        ContainmentRequest::PidNamespace => Ok(Containment::PidNamespace),
        ContainmentRequest::Subreaper => Ok(Containment::Subreaper),
        ContainmentRequest::Auto | ContainmentRequest::CgroupV2 if f.pid == 1 => {
            Ok(Containment::PidNamespace)
        }
        ContainmentRequest::Auto | ContainmentRequest::CgroupV2 => Ok(Containment::Subreaper),
    }
}

/// Whether a missing cgroup must be an error rather than a fallback, and which flag says so.
fn cgroup_demanded(cfg: &RunConfig) -> Option<&'static str> {
    if cfg.require_cgroup {
        Some("--require-cgroup")
    } else if cfg.containment == ContainmentRequest::CgroupV2 {
        Some("--containment cgroup-v2")
    } else if !cfg.limits.is_empty() {
        Some("resource limits")
    } else {
        None
    }
}

/// The job cgroup of a `cgroup-v2` job.
#[derive(Debug)]
pub struct JobCgroup {
    pub cg: Cgroup,
    pub hier: Cgroup2Mount,
}

/// A job's containment, decided and set up (the job cgroup made), before anything starts.
#[derive(Debug)]
pub struct Prepared {
    pub containment: Containment,
    pub name: JobName,
    /// The job cgroup, for `cgroup-v2`.
    pub cgroup: Option<JobCgroup>,
    /// Why there is no cgroup, when `auto` fell back to a weaker mode.
    pub degraded: Option<String>,
    /// The job's resource limits, in place (`cgroup-v2` only).
    pub limits: Option<JobLimits>,
    /// cgjob's own leaf in a delegated cgroup, left (and removed) when this is dropped.
    _leaf: Option<SupervisorLeaf>,
}

/// Decide the job's containment and set it up: for `cgroup-v2`, make the job cgroup (and,
/// in a delegated cgroup with controllers enabled, move cgjob into a leaf first).
pub fn prepare(cfg: &RunConfig) -> Result<Prepared, ContainmentError> {
    let fallback = |req| {
        let c = without_cgroup(req, &ProcessFacts::of_self())?;
        Ok(Prepared {
            containment: c,
            name: cfg.name.clone().unwrap_or_else(place::generate_name),
            cgroup: None,
            degraded: None,
            limits: None,
            _leaf: None,
        })
    };
    let req = cfg.containment;
    if matches!(
        req,
        ContainmentRequest::PidNamespace | ContainmentRequest::Subreaper
    ) {
        return fallback(req);
    }
    let err = match make_cgroup(cfg) {
        Ok((jc, name, leaf)) => {
            // Limits go in before anything runs; if they cannot, nothing is started and the
            // job cgroup goes again.
            let rel = jc
                .cg
                .path()
                .strip_prefix(&jc.hier.mount_point)
                .unwrap_or(jc.cg.path())
                .to_owned();
            // mountinfo is read again only when there are limits: start-up stays as it was.
            let v1_mounts = match cfg.limits.is_empty() {
                true => Vec::new(),
                false => crate::cgroup::v1::find(),
            };
            let lim = limits::setup(&jc.cg, &rel, &cfg.limits, cfg.limits_via, &v1_mounts);
            let lim = match lim {
                Ok(l) => l,
                Err(e) => {
                    let _ = jc.cg.remove();
                    return Err(e.into());
                }
            };
            return Ok(Prepared {
                containment: Containment::CgroupV2,
                name,
                cgroup: Some(jc),
                degraded: None,
                limits: lim,
                _leaf: leaf,
            });
        }
        Err(e) => e,
    };
    // Naming a place asks for a cgroup there: its errors stand as they are.
    let placed = cfg.parent.is_some() || cfg.cgroup_root.is_some();
    if !err.no_usable_cgroup() || placed {
        return Err(err.into());
    }
    if let Some(flag) = cgroup_demanded(cfg) {
        return Err(ContainmentError::Required { flag, cause: err });
    }
    let why = chain(&err);
    match fallback(ContainmentRequest::Auto) {
        Ok(mut p) => {
            p.degraded = Some(why);
            Ok(p)
        }
        Err(ContainmentError::Place(_)) => unreachable!("no cgroup is made in the fallback"),
        Err(without) => Err(ContainmentError::Nothing {
            cgroup: why,
            without: Box::new(without),
        }),
    }
}

fn make_cgroup(
    cfg: &RunConfig,
) -> Result<(JobCgroup, JobName, Option<SupervisorLeaf>), PlaceError> {
    let hier = place::hierarchy(cfg.cgroup_root.as_deref())?;
    let parent = place::job_parent(&hier, cfg.parent.as_deref())?;
    let leaf = match &parent.delegated {
        Some(d) => place::enter_leaf(d)?,
        None => None,
    };
    let (cg, name) = match place::create(&parent.dir, cfg.name.as_ref()) {
        Ok(made) => made,
        // Say which mount, not which of the directories cgjob tried to make.
        Err(PlaceError::ReadOnly(_)) => return Err(PlaceError::ReadOnly(hier.mount_point)),
        Err(e) => return Err(e),
    };
    Ok((JobCgroup { cg, hier }, name, leaf))
}

/// What this host offers and what `cgjob run` would use there (`cgjob doctor`). Found
/// without changing anything: no cgroup is made, no process started.
#[derive(Debug, Serialize)]
pub struct HostReport {
    pub uid: u32,
    /// The cgroup2 mount cgjob would use.
    pub cgroup2_mount: Option<PathBuf>,
    pub cgroup2_read_only: Option<bool>,
    /// The v2 controllers the hierarchy offers (`cgroup.controllers` of its root).
    pub controllers: Vec<String>,
    /// The cgroup cgjob runs in.
    pub own_cgroup: Option<PathBuf>,
    /// Where job cgroups would go.
    pub job_parent: Option<PathBuf>,
    /// For a user other than root: the delegated cgroup (cgjob's own) that jobs would go in.
    pub delegated_cgroup: Option<PathBuf>,
    /// cgjob would first move itself into a leaf of it.
    pub needs_leaf: bool,
    /// Why no cgroup can be used, if so.
    pub cgroup_problem: Option<String>,
    /// `cgroup.kill` (5.14) and `cgroup.freeze` (5.2) — `None` when no cgroup to look at.
    pub cgroup_kill: Option<bool>,
    pub cgroup_freeze: Option<bool>,
    /// clone3 `CLONE_INTO_CGROUP` (5.7): born in the cgroup, rather than joining it.
    pub clone_into_cgroup: bool,
    pub pidfd: bool,
    pub process: ProcessFacts,
    /// What `cgjob run` would use (`None`: it would refuse).
    pub containment: Option<Containment>,
    /// Why, in words.
    pub reasons: Vec<String>,
}

/// Look at the host as `cgjob run` with these place options would (`auto`).
pub fn doctor(
    cgroup_root: Option<&std::path::Path>,
    parent: Option<&std::path::Path>,
) -> HostReport {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let facts = ProcessFacts::of_self();
    let mut r = HostReport {
        uid,
        cgroup2_mount: None,
        cgroup2_read_only: None,
        controllers: Vec::new(),
        own_cgroup: None,
        job_parent: None,
        delegated_cgroup: None,
        needs_leaf: false,
        cgroup_problem: None,
        cgroup_kill: None,
        cgroup_freeze: None,
        clone_into_cgroup: spawn::probe_clone_into_cgroup().is_ok(),
        pidfd: PidFd::open(facts.pid).is_ok_and(|p| p.is_some()),
        process: facts,
        containment: None,
        reasons: Vec::new(),
    };
    let placed = match place::hierarchy(cgroup_root) {
        Ok(m) => {
            r.cgroup2_mount = Some(m.mount_point.clone());
            r.cgroup2_read_only = Some(m.read_only);
            r.controllers = Cgroup::at(&m.mount_point).controllers().unwrap_or_default();
            r.own_cgroup = mount::own_dir(&m);
            let jp = place::job_parent(&m, parent);
            if let Ok(p) = &jp {
                r.job_parent = Some(p.dir.clone());
                if let Some(d) = &p.delegated {
                    r.delegated_cgroup = Some(d.own.clone());
                    r.needs_leaf = d.leaf.is_some();
                }
            }
            probe_kill_files(&mut r, &m);
            jp.and_then(|p: JobParent| place::check_usable(&m, &p).map(|()| p))
        }
        Err(e) => Err(e),
    };
    match placed {
        Ok(p) => {
            r.containment = Some(Containment::CgroupV2);
            r.reasons.push(format!(
                "job cgroups can be made under {}{}",
                p.dir.display(),
                if p.delegated.is_some() {
                    " (the delegated cgroup cgjob runs in)"
                } else {
                    ""
                }
            ));
        }
        Err(e) => {
            let why = chain(&e);
            r.reasons.push(format!("no usable cgroup: {why}"));
            r.cgroup_problem = Some(why);
            if !e.no_usable_cgroup() || parent.is_some() || cgroup_root.is_some() {
                r.reasons
                    .push("cgjob run would fail: a cgroup was asked for with --parent or --cgroup-root, or the error is not about a missing cgroup".into());
            } else {
                match without_cgroup(ContainmentRequest::Auto, &facts) {
                    Ok(c) => {
                        r.containment = Some(c);
                        r.reasons.push(match c {
                            Containment::PidNamespace => "cgjob is PID 1 of a PID namespace with its own /proc: the namespace is the container; at the end every other process in it is killed".into(),
                            _ => format!("not PID 1 of a PID namespace: {}", SUBREAPER_WEAKNESS),
                        });
                    }
                    Err(e) => r.reasons.push(format!("cgjob run would fail: {e}")),
                }
            }
        }
    }
    r
}

/// The limits of subreaper containment, in words (the warning and `doctor` say it).
pub const SUBREAPER_WEAKNESS: &str = "containment is cgjob's process tree (subreaper): processes started through another supervisor (systemd --user, at, a container daemon) are out of reach, and the job's descendants are not killed should cgjob itself be killed";

/// An error and its causes on one line (as the commands print errors).
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let msg = s.to_string();
        if !line.contains(&msg) {
            line = format!("{line}: {msg}");
        }
        src = s.source();
    }
    line
}

/// `cgroup.kill` and `cgroup.freeze` exist in every cgroup but the root: look in the first
/// non-root cgroup at hand.
fn probe_kill_files(r: &mut HostReport, m: &Cgroup2Mount) {
    let mut candidates: Vec<PathBuf> = r.job_parent.iter().chain(&r.own_cgroup).cloned().collect();
    if let Ok(rd) = std::fs::read_dir(&m.mount_point) {
        candidates.extend(
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    if let Some(dir) = candidates
        .into_iter()
        .find(|d| *d != m.mount_point && d.join("cgroup.procs").exists())
    {
        let cg = Cgroup::at(dir);
        r.cgroup_kill = Some(kill::resolve(&cg, kill::KillRequest::CgroupKill).is_ok());
        r.cgroup_freeze = Some(kill::resolve(&cg, kill::KillRequest::Freeze).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainmentRequest::*;

    fn facts(pid: i32, initial: Option<bool>, own: bool) -> ProcessFacts {
        ProcessFacts {
            pid,
            initial_pid_namespace: initial,
            proc_is_own: own,
        }
    }

    #[test]
    fn modes_without_a_cgroup() {
        type Want = Result<Containment, &'static str>;
        let cases: &[(ContainmentRequest, ProcessFacts, Want)] = &[
            (
                Auto,
                facts(4242, Some(true), true),
                Ok(Containment::Subreaper),
            ),
            (
                Auto,
                facts(4242, Some(false), true),
                Ok(Containment::Subreaper),
            ),
            (
                Auto,
                facts(1, Some(false), true),
                Ok(Containment::PidNamespace),
            ),
            (
                Auto,
                facts(1, Some(false), false),
                Err("another PID namespace"),
            ),
            (
                Auto,
                facts(4242, Some(true), false),
                Err("another PID namespace"),
            ),
            // The host's init: never "kill every other process".
            (
                Auto,
                facts(1, Some(true), true),
                Err("host's own PID namespace"),
            ),
            (Auto, facts(1, None, true), Err("host's own PID namespace")),
            (
                Subreaper,
                facts(1, Some(true), true),
                Err("host's own PID namespace"),
            ),
            (
                PidNamespace,
                facts(1, Some(false), true),
                Ok(Containment::PidNamespace),
            ),
            (
                PidNamespace,
                facts(77, Some(false), true),
                Err("needs cgjob to be PID 1"),
            ),
            (
                Subreaper,
                facts(77, Some(true), true),
                Ok(Containment::Subreaper),
            ),
            (
                Subreaper,
                facts(1, Some(false), true),
                Ok(Containment::Subreaper),
            ),
        ];
        for (req, f, want) in cases {
            let got = without_cgroup(*req, f);
            match (got, want) {
                (Ok(c), Ok(w)) => assert_eq!(c, *w, "{req:?} {f:?}"),
                (Err(e), Err(needle)) => {
                    assert!(e.to_string().contains(needle), "{req:?} {f:?}: {e}")
                }
                (got, want) => panic!("{req:?} {f:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn names_serialize_as_documented() {
        for (c, s) in [
            (Containment::CgroupV2, "cgroup-v2"),
            (Containment::PidNamespace, "pid-namespace"),
            (Containment::Subreaper, "subreaper"),
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), s);
            assert_eq!(c.to_string(), s);
        }
    }
}
