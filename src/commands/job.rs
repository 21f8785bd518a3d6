//! `cgjob job …`: the commands a batch scheduler's prolog, task launcher and epilog call,
//! keyed by the scheduler's job id.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cgroup::kill;
use crate::cli::{
    JobAttachArgs, JobCleanupArgs, JobCommand, JobCreateArgs, JobExecArgs, JobListArgs,
    JobSignalArgs, JobStatusArgs, JobTarget, PlaceArgs,
};
use crate::daemon::client::{self, Client};
use crate::job::batch::{self, JobId, Scheduler};
use crate::job::cleanup::{self, CleanupSpec, CreateSpec, Sweep};
use crate::job::leftovers::Tracker;
use crate::job::limits::LimitsVia;
use crate::job::meta;
use crate::job::place;
use crate::job::policy::exit;

pub fn job(cmd: JobCommand) -> i32 {
    // A pidfd per process of the job: above the usual soft limit of 1024 descriptors for a
    // large job. (Not for `exec`: the job's command keeps the limits it was given.)
    if !matches!(cmd, JobCommand::Exec(_)) {
        crate::process::raise_nofile();
    }
    let res = match cmd {
        JobCommand::Create(a) => create(a),
        JobCommand::Exec(a) => exec(a),
        JobCommand::Attach(a) => attach(a),
        JobCommand::Signal(a) => signal(a),
        JobCommand::Status(a) => status(a),
        JobCommand::List(a) => list(a),
        JobCommand::Cleanup(a) => clean(a),
    };
    res.unwrap_or_else(|f| f.report())
}

/// A failure: printed as one line, with its exit status.
struct Failure(i32, String);

impl Failure {
    fn report(self) -> i32 {
        eprintln!("cgjob: {}", self.1);
        self.0
    }
}

fn fail(e: impl std::error::Error) -> Failure {
    Failure(exit::FAILURE, super::error_line(&e))
}

/// The job's cgroup, which must exist.
fn existing(parent: &std::path::Path, id: &JobId) -> Result<crate::cgroup::Cgroup, Failure> {
    let cg = batch::job_cgroup(parent, id);
    if !cg.path().is_dir() {
        return Err(Failure(
            exit::FAILURE,
            format!(
                "no cgroup for job {id} in {} (was `cgjob job create` run for it?)",
                parent.display()
            ),
        ));
    }
    Ok(cg)
}

fn parent_of(place: &PlaceArgs) -> Result<PathBuf, Failure> {
    let h = place::hierarchy(place.cgroup_root.as_deref()).map_err(fail)?;
    place::parent_dir(&h, place.parent.as_deref()).map_err(fail)
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The job, from the flag or the scheduler's variables; a bad id is bad usage.
fn target(t: &JobTarget) -> Result<(PathBuf, JobId, Option<Scheduler>), Failure> {
    let (id, sched) =
        batch::job_id_from(t.job_id.as_deref(), env).map_err(|e| Failure(exit::USAGE, e))?;
    Ok((parent_of(&t.place)?, id, sched))
}

/// The daemon, when one answers on its socket and serves `parent`: then every command but
/// `cleanup --sweep`/`--spare-ancestors` goes through it (same results; a user gets what the
/// daemon allows them). Otherwise the command acts directly.
fn daemon(parent: &Path) -> Option<Client> {
    Client::serving(&client::socket_path(), parent)
}

/// A request to the daemon whose reply is `T`; a refusal is a failure (125) with its message.
fn ask<T: serde::de::DeserializeOwned>(
    d: &mut Client,
    req: Value,
    wait: Duration,
) -> Result<T, Failure> {
    let v = d
        .request(req, wait)
        .map_err(|e| Failure(exit::FAILURE, e))?;
    serde_json::from_value(v).map_err(|e| {
        Failure(
            exit::FAILURE,
            format!("unexpected reply from the daemon: {e}"),
        )
    })
}

fn print_json<T: serde::Serialize>(v: &T) -> i32 {
    super::write_stdout(format!("{}\n", serde_json::to_string(v).expect("serializes")).as_bytes())
}

fn create(a: JobCreateArgs) -> Result<i32, Failure> {
    let (parent, id, from_env) = target(&a.target)?;
    let scheduler = a.scheduler.or(from_env).unwrap_or(Scheduler::Other);
    // SAFETY: getuid has no preconditions.
    let uid = a
        .uid
        .or_else(|| env("SLURM_JOB_UID")?.parse().ok())
        .unwrap_or(unsafe { libc::getuid() });
    let timeout = match a.timeout {
        None => None,
        Some(t) if t.is_zero() || t > crate::daemon::protocol::MAX_TIMEOUT => {
            return Err(Failure(
                exit::USAGE,
                format!(
                    "invalid --timeout {}: must be more than 0 and at most a year",
                    humantime::format_duration(t)
                ),
            ))
        }
        Some(t) => Some(meta::TimeLimit::new(t, a.kill_after)),
    };
    let (limits, limits_via) = super::run::limits(a.limits);
    let c: cleanup::Created = match daemon(&parent) {
        Some(mut d) => {
            let mut req = json!({"v": 1, "op": "create", "job_id": id.as_str(), "uid": uid, "scheduler": scheduler});
            if let Some(t) = timeout {
                req["timeout_ms"] = t.after_ms.into();
                req["kill_after_ms"] = t.kill_after_ms.into();
            }
            if !limits.is_empty() {
                req["limits"] = serde_json::to_value(&limits).expect("limits serialize");
                req["limits_via"] = match limits_via {
                    LimitsVia::Auto => "auto",
                    LimitsVia::CgroupV2 => "cgroup-v2",
                    LimitsVia::CgroupV1 => "cgroup-v1",
                }
                .into();
            }
            ask(&mut d, req, Duration::ZERO)?
        }
        None => {
            if timeout.is_some() {
                eprintln!("cgjob: no daemon answers on {}: the job's --timeout is recorded on its cgroup, and enforced once `cgjob daemon` runs", client::socket_path().display());
            }
            let spec = CreateSpec {
                scheduler,
                uid,
                timeout,
                limits,
                limits_via,
            };
            cleanup::create(&parent, &id, &spec).map_err(fail)?
        }
    };
    if !c.stale.is_empty() {
        eprintln!(
            "cgjob: job {id}: killed {} stale process(es) of an earlier job with the same id in {}",
            c.stale.len(),
            c.cgroup.display()
        );
        for l in &c.stale {
            eprintln!("cgjob: stale: {}", l.describe());
        }
    }
    Ok(if a.json { print_json(&c) } else { 0 })
}

fn exec(a: JobExecArgs) -> Result<i32, Failure> {
    let (parent, id, from_env) = target(&a.target)?;
    if let Some(mut d) = daemon(&parent) {
        // Through the daemon: it moves this process in (a user cannot write cgroupfs).
        if a.create && !batch::job_cgroup(&parent, &id).path().is_dir() {
            let sched = from_env.unwrap_or(Scheduler::Other);
            let _: Value = ask(
                &mut d,
                json!({"v": 1, "op": "create", "job_id": id.as_str(), "scheduler": sched}),
                Duration::ZERO,
            )?;
        }
        let pid = std::process::id();
        let _: Value = ask(
            &mut d,
            json!({"v": 1, "op": "attach", "job_id": id.as_str(), "pids": [pid]}),
            Duration::ZERO,
        )?;
        return exec_command(&a.command);
    }
    if a.create && !batch::job_cgroup(&parent, &id).path().is_dir() {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let spec = CreateSpec::plain(from_env.unwrap_or(Scheduler::Other), uid);
        cleanup::create(&parent, &id, &spec).map_err(fail)?;
    }
    match batch::join(&parent, &id) {
        Ok(_) => {}
        Err(e) if e.is_gone() => {
            return Err(Failure(
                exit::FAILURE,
                format!(
                    "no cgroup for job {id} in {} (run `cgjob job create` first, or pass --create)",
                    parent.display()
                ),
            ))
        }
        Err(e) => return Err(fail(e)),
    }
    exec_command(&a.command)
}

/// Joined: now become the command (nothing of cgjob stays around).
fn exec_command(command: &[std::ffi::OsString]) -> Result<i32, Failure> {
    use crate::process::spawn::{exec_in_place, SpawnError};
    let e = exec_in_place(command);
    let status = match e {
        SpawnError::NotFound(_) => exit::NOT_FOUND,
        SpawnError::NotExecutable { .. } => exit::NOT_EXECUTABLE,
        SpawnError::Invalid(_) => exit::USAGE,
        _ => exit::FAILURE,
    };
    Err(Failure(status, super::error_line(&e)))
}

fn attach(a: JobAttachArgs) -> Result<i32, Failure> {
    let (parent, id, _) = target(&a.target)?;
    if let Some(mut d) = daemon(&parent) {
        let req = json!({"v": 1, "op": "attach", "job_id": id.as_str(), "pids": a.pids});
        let _: Value = ask(&mut d, req, Duration::ZERO)?;
        return Ok(0);
    }
    let cg = existing(&parent, &id)?;
    let mut failed = false;
    for pid in a.pids {
        if let Err(e) = crate::job::limits::add_to_job(&cg, pid) {
            let why = match e.errno() {
                Some(libc::ESRCH) => "no such process".to_string(),
                _ => e.source.to_string(),
            };
            eprintln!(
                "cgjob: cannot move pid {pid} into {}: {why}",
                cg.path().display()
            );
            failed = true;
        }
    }
    Ok(if failed { exit::FAILURE } else { 0 })
}

fn signal(a: JobSignalArgs) -> Result<i32, Failure> {
    let (parent, id, _) = target(&a.target)?;
    if let Some(mut d) = daemon(&parent) {
        let req = json!({"v": 1, "op": "signal", "job_id": id.as_str(), "signal": a.signal});
        let _: Value = ask(&mut d, req, Duration::ZERO)?;
        return Ok(0);
    }
    let cg = existing(&parent, &id)?;
    let sent = kill::signal_each(&cg, a.signal).map_err(fail)?;
    tracing::info!(count = sent.len(), "signalled");
    Ok(0)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Status {
    job_id: String,
    cgroup: PathBuf,
    owner: Option<meta::JobMeta>,
    processes: Vec<crate::job::leftovers::Leftover>,
    /// What the job's cgroups count now.
    #[serde(default)]
    usage: Option<crate::job::limits::CurrentUsage>,
}

fn status(a: JobStatusArgs) -> Result<i32, Failure> {
    let (parent, id, _) = target(&a.target)?;
    let st: Status = match daemon(&parent) {
        Some(mut d) => ask(
            &mut d,
            json!({"v": 1, "op": "status", "job_id": id.as_str()}),
            Duration::ZERO,
        )?,
        None => {
            let cg = existing(&parent, &id)?;
            let mut t = Tracker::cgroup_only();
            t.scan(&cg).map_err(fail)?;
            Status {
                job_id: id.to_string(),
                cgroup: cg.path().to_owned(),
                owner: meta::read(&cg).ok().flatten(),
                processes: t.leftovers,
                usage: Some(crate::job::limits::current_usage(&cg)),
            }
        }
    };
    if a.json {
        return Ok(print_json(&st));
    }
    let mut out = format!(
        "job {} cgroup {} processes {}\n",
        st.job_id,
        st.cgroup.display(),
        st.processes.len()
    );
    if let Some(u) = &st.usage {
        out.push_str(&format!("usage {}\n", describe_usage(u)));
    }
    out.push_str("PID\tPPID\tUID\tSTATE\tCOMMAND\n");
    for p in &st.processes {
        let cmd = if p.cmdline.is_empty() {
            format!("[{}]", p.comm)
        } else {
            p.cmdline.join(" ")
        };
        let uid = p.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            p.pid, p.ppid, uid, p.state, cmd
        ));
    }
    Ok(super::write_stdout(out.as_bytes()))
}

/// `memory 12.0 MiB (peak 20.0 MiB), processes 3 (peak 5), cpu 1.23 s, OOM kills 1`: what is
/// known.
fn describe_usage(u: &crate::job::limits::CurrentUsage) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let mut parts = Vec::new();
    if let Some(m) = u.memory_bytes {
        let peak = u
            .usage
            .memory_peak_bytes
            .map(|p| format!(" (peak {})", mib(p)))
            .unwrap_or_default();
        parts.push(format!("memory {}{peak}", mib(m)));
    }
    if let Some(p) = u.pids {
        let peak = u
            .usage
            .pids_peak
            .map(|p| format!(" (peak {p})"))
            .unwrap_or_default();
        parts.push(format!("processes {p}{peak}"));
    }
    if let Some(c) = u.cpu_usage_usec {
        parts.push(format!("cpu {:.2} s", c as f64 / 1e6));
    }
    if let Some(k) = u.usage.oom_kills {
        parts.push(format!("OOM kills {k}"));
    }
    if parts.is_empty() {
        "unknown".into()
    } else {
        parts.join(", ")
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Listed {
    job_id: String,
    cgroup: PathBuf,
    scheduler: Option<Scheduler>,
    uid: u32,
    created: u64,
    processes: usize,
}

fn list(a: JobListArgs) -> Result<i32, Failure> {
    let parent = parent_of(&a.place)?;
    let mut jobs = Vec::new();
    if let Some(mut d) = daemon(&parent) {
        #[derive(serde::Deserialize)]
        struct Jobs {
            jobs: Vec<Listed>,
        }
        let r: Jobs = ask(&mut d, json!({"v": 1, "op": "list"}), Duration::ZERO)?;
        jobs = r.jobs;
    } else if let Ok(rd) = std::fs::read_dir(&parent) {
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            let cg = crate::cgroup::Cgroup::at(e.path());
            let Some(m) = meta::read(&cg).ok().flatten().filter(|m| m.is_batch()) else {
                continue;
            };
            jobs.push(Listed {
                job_id: m.job_id.clone().unwrap_or_default(),
                cgroup: cg.path().to_owned(),
                scheduler: m.scheduler,
                uid: m.uid,
                created: m.created,
                processes: cg.procs_recursive().map(|p| p.len()).unwrap_or(0),
            });
        }
    }
    jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    if a.json {
        return Ok(print_json(&jobs));
    }
    let mut out = String::from("JOB\tUID\tPROCESSES\tCGROUP\n");
    for j in &jobs {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            j.job_id,
            j.uid,
            j.processes,
            j.cgroup.display()
        ));
    }
    Ok(super::write_stdout(out.as_bytes()))
}

fn clean(a: JobCleanupArgs) -> Result<i32, Failure> {
    let (parent, id, from_env) = target(&a.target)?;
    let report_file = match &a.report {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| {
            Failure(
                exit::FAILURE,
                format!("cannot write report file {}: {e}", p.display()),
            )
        })?),
        None => None,
    };
    let cg = batch::job_cgroup(&parent, &id);
    let recorded = meta::read(&cg).ok().flatten();
    let sweep = if a.sweep {
        let sched = recorded.as_ref().and_then(|m| m.scheduler).or(from_env);
        let var = a
            .marker_var
            .clone()
            .or_else(|| sched.and_then(|s| s.marker_var()).map(str::to_owned));
        let uid = a
            .uid
            .or(recorded.as_ref().map(|m| m.uid))
            .or_else(|| env("SLURM_JOB_UID")?.parse().ok());
        match (var, uid) {
            (Some(var), Some(uid)) => Some(Sweep { uid, var, value: id.to_string() }),
            _ => {
                return Err(Failure(
                    exit::USAGE,
                    "--sweep needs the job's uid and its marker variable: pass --uid and --marker-var (or --scheduler at create)".into(),
                ))
            }
        }
    } else {
        None
    };
    let spare_ancestors_to = if a.spare_ancestors {
        let h = place::hierarchy(a.target.place.cgroup_root.as_deref()).map_err(fail)?;
        Some(crate::cgroup::Cgroup::at(h.mount_point))
    } else {
        None
    };
    let spec = CleanupSpec {
        grace: a.grace,
        kill_timeout: a.kill_timeout,
        sweep,
        spare_ancestors_to,
    };
    let via = if spec.sweep.is_none() && spec.spare_ancestors_to.is_none() {
        daemon(&parent)
    } else {
        // The sweep and the sparing need the caller's own view (its ancestors, the job's
        // environment marker): done here.
        None
    };
    let res: cleanup::Cleaned = match via {
        Some(mut d) => {
            let req = json!({
                "v": 1,
                "op": "cleanup",
                "job_id": id.as_str(),
                "grace_ms": spec.grace.as_millis() as u64,
                "kill_timeout_ms": spec.kill_timeout.as_millis() as u64,
            });
            ask(&mut d, req, spec.grace + spec.kill_timeout)?
        }
        None => cleanup::cleanup(&parent, &id, &spec).map_err(fail)?,
    };
    if !res.leftovers.is_empty() {
        // The Grid Engine way, so that existing log scrapers keep working.
        eprintln!("cgjob: rogue process(es) found for job {id}");
        for l in &res.leftovers {
            let cmd = if l.cmdline.is_empty() {
                format!("[{}]", l.comm)
            } else {
                l.cmdline.join(" ")
            };
            let where_ = if l.in_cgroup {
                ""
            } else {
                ", outside the job cgroup"
            };
            eprintln!("cgjob: rogue: {cmd} (pid {}{where_})", l.pid);
        }
    }
    if res.unkillable {
        eprintln!(
            "cgjob: job {id}: processes could not be killed; cgroup {} left in place",
            res.cgroup.display()
        );
    }
    if let Some(f) = report_file {
        let write = serde_json::to_writer_pretty(&f, &res)
            .map_err(std::io::Error::from)
            .and_then(|_| f.sync_all());
        if let Err(e) = write {
            return Err(Failure(
                exit::FAILURE,
                format!("cannot write report file: {e}"),
            ));
        }
    }
    if a.json {
        print_json(&res);
    }
    Ok(if res.unkillable { exit::UNKILLABLE } else { 0 })
}
