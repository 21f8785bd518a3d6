//! Killing every process of a cgroup: `cgroup.kill` where the kernel has it (since 5.14; it
//! SIGKILLs the whole subtree and is safe against concurrent forks), else freeze → SIGKILL each
//! pid through a pidfd → thaw. The fallback is chosen *only* when `cgroup.kill` does not exist
//! (as runc does), or when asked for.
//!
//! Policy — when to kill, how long to wait, how many passes — lives in `job`; this module only
//! does one pass at a time.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::events::EventsFile;
use super::file::CgroupFsError;
use super::tree::Cgroup;
use crate::process::pidfd;

/// How the job's processes are killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillMethod {
    /// Write `1` to `cgroup.kill`.
    CgroupKill,
    /// Freeze the cgroup, SIGKILL every pid, thaw.
    Freeze,
}

impl KillMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            KillMethod::CgroupKill => "cgroup-kill",
            KillMethod::Freeze => "freeze",
        }
    }
}

impl std::fmt::Display for KillMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillRequest {
    #[default]
    Auto,
    CgroupKill,
    Freeze,
}

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("this kernel has no cgroup.kill in {0} (needs Linux 5.14); use --kill-method freeze or auto")]
    NoCgroupKill(std::path::PathBuf),
    #[error("this kernel has no cgroup.freeze in {0} (needs Linux 5.2), and no cgroup.kill")]
    NoFreezer(std::path::PathBuf),
    #[error(transparent)]
    Fs(#[from] CgroupFsError),
    #[error("cannot signal pid {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Decide the method for a cgroup from what its directory offers.
pub fn resolve(cg: &Cgroup, req: KillRequest) -> Result<KillMethod, KillError> {
    let has_kill = cg.has_file("cgroup.kill");
    let has_freeze = cg.has_file("cgroup.freeze");
    match req {
        KillRequest::CgroupKill if !has_kill => Err(KillError::NoCgroupKill(cg.path().into())),
        KillRequest::CgroupKill => Ok(KillMethod::CgroupKill),
        KillRequest::Freeze if !has_freeze => Err(KillError::NoFreezer(cg.path().into())),
        KillRequest::Freeze => Ok(KillMethod::Freeze),
        KillRequest::Auto if has_kill => Ok(KillMethod::CgroupKill),
        KillRequest::Auto if has_freeze => Ok(KillMethod::Freeze),
        KillRequest::Auto => Err(KillError::NoFreezer(cg.path().into())),
    }
}

/// Freeze the cgroup's subtree and wait, bounded by `deadline`, for the kernel to confirm it
/// with `frozen 1`. Returns whether it was confirmed: a task in uninterruptible sleep (D state)
/// delays freezing until it wakes, so callers must cope with `false`.
pub fn freeze(cg: &Cgroup, events: &EventsFile, deadline: Instant) -> Result<bool, CgroupFsError> {
    cg.write("cgroup.freeze", "1")?;
    let (_, frozen) = events.wait_until(deadline, |e| e.frozen == Some(true) || !e.populated)?;
    Ok(frozen)
}

pub fn thaw(cg: &Cgroup) -> Result<(), CgroupFsError> {
    match cg.write("cgroup.freeze", "0") {
        Err(e) if e.is_gone() => Ok(()),
        r => r,
    }
}

/// Send `sig` to every process in the cgroup's subtree, each through a pidfd. Returns the pids
/// that were signalled (those that exited first are left out). Not atomic against forks: use
/// it for polite signals, and [`kill_pass`] for the kill.
pub fn signal_each(cg: &Cgroup, sig: i32) -> Result<Vec<i32>, KillError> {
    let mut sent = Vec::new();
    for pid in cg.procs_recursive()? {
        match pidfd::signal_pid(pid, sig) {
            Ok(true) => sent.push(pid),
            Ok(false) => {}
            Err(source) => return Err(KillError::Signal { pid, source }),
        }
    }
    Ok(sent)
}

/// One kill pass over the cgroup's subtree. With `cgroup.kill` the kernel does it all; with the
/// fallback, a freeze stops every task (and every fork: a child of a freezing cgroup is born
/// frozen), so the list read while frozen is complete; SIGKILL is delivered even to frozen
/// tasks, and they die on thaw. Callers repeat the pass until `populated 0`.
pub fn kill_pass(
    cg: &Cgroup,
    events: &EventsFile,
    method: KillMethod,
    freeze_deadline: Instant,
) -> Result<(), KillError> {
    match method {
        KillMethod::CgroupKill => match cg.write("cgroup.kill", "1") {
            Err(e) if e.is_gone() => Ok(()),
            r => Ok(r?),
        },
        KillMethod::Freeze => {
            match freeze(cg, events, freeze_deadline) {
                Err(e) if e.is_gone() => return Ok(()),
                r => {
                    r?;
                }
            }
            let res = signal_each(cg, libc::SIGKILL);
            thaw(cg)?;
            res.map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup directory with the given interface files.
    fn fake(files: &[&str]) -> (tempfile::TempDir, Cgroup) {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        std::fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let cg = Cgroup::at(d.path());
        (d, cg)
    }

    #[test]
    fn method_follows_what_the_kernel_offers() {
        use KillRequest::*;
        let cases: &[(&[&str], KillRequest, Option<KillMethod>)] = &[
            (
                &["cgroup.kill", "cgroup.freeze"],
                Auto,
                Some(KillMethod::CgroupKill),
            ),
            (&["cgroup.freeze"], Auto, Some(KillMethod::Freeze)),
            (&[], Auto, None),
            (
                &["cgroup.kill", "cgroup.freeze"],
                Freeze,
                Some(KillMethod::Freeze),
            ),
            (&["cgroup.freeze"], CgroupKill, None),
            (&["cgroup.kill"], CgroupKill, Some(KillMethod::CgroupKill)),
            (&["cgroup.kill"], Freeze, None),
        ];
        for (files, req, want) in cases {
            let (_d, cg) = fake(files);
            assert_eq!(resolve(&cg, *req).ok(), *want, "{files:?} {req:?}");
        }
        let (_d, cg) = fake(&["cgroup.freeze"]);
        let e = resolve(&cg, CgroupKill).unwrap_err().to_string();
        assert!(e.contains("5.14") && e.contains("--kill-method"), "{e}");
    }

    #[test]
    fn cgroup_kill_pass_writes_one() {
        let (_d, cg) = fake(&["cgroup.kill", "cgroup.freeze"]);
        let ev = EventsFile::open(cg.path()).unwrap();
        kill_pass(&cg, &ev, KillMethod::CgroupKill, Instant::now()).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.file("cgroup.kill")).unwrap(),
            "1"
        );
    }

    #[test]
    fn freeze_pass_freezes_signals_and_thaws() {
        // The fake kernel confirms the freeze; the process list is empty, so nothing is
        // signalled; the pass must leave the cgroup thawed.
        let (_d, cg) = fake(&["cgroup.freeze", "cgroup.procs"]);
        std::fs::write(cg.file("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        let ev = EventsFile::open(cg.path()).unwrap();
        kill_pass(&cg, &ev, KillMethod::Freeze, Instant::now()).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.file("cgroup.freeze")).unwrap(),
            "0"
        );
    }

    #[test]
    fn a_vanished_cgroup_is_not_an_error() {
        let (d, cg) = fake(&["cgroup.kill"]);
        let ev = EventsFile::open(cg.path()).unwrap();
        std::fs::remove_file(d.path().join("cgroup.kill")).unwrap();
        kill_pass(&cg, &ev, KillMethod::CgroupKill, Instant::now()).unwrap();
        thaw(&Cgroup::at(d.path().join("gone"))).unwrap();
    }
}
