//! POLICY: where a job's cgroup lives — `<cgroup2 root>/cgjob/<name>` for root, `<the
//! delegated cgroup cgjob runs in>/cgjob/<name>` for other users, unless told otherwise — and
//! making it, with errors that say what to do.

use std::path::{Component, Path, PathBuf};

use crate::cgroup::{mount, Cgroup, Cgroup2Mount, CgroupFsError};
use crate::config::{defaults, JobName};

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    #[error("parent cgroup {0} must not contain '..'")]
    ParentDotDot(PathBuf),
    #[error("{0} is not on the cgroup2 filesystem")]
    ParentNotCgroup2(PathBuf),
    // The cause is the message: no `#[source]`, or "permission denied" would print twice.
    #[error("cannot create cgroup {path}: permission denied; run as root, or pass --parent with a cgroup subtree delegated to you")]
    Permission { path: PathBuf },
    #[error(
        "the cgroup2 filesystem at {0} is read-only; cgjob needs a writable cgroup2 hierarchy"
    )]
    ReadOnly(PathBuf),
    #[error("job cgroup {0} already exists (another job of that name?); choose another --name, or remove it with `cgjob gc`")]
    Exists(PathBuf),
    /// Not root, no --parent, and the cgroup cgjob runs in is not the user's to write.
    #[error(
        "no cgroup is delegated to uid {uid}: cgjob runs in {own}, which it may not write; {hint}"
    )]
    NotDelegated { uid: u32, own: String, hint: String },
    #[error(transparent)]
    Fs(CgroupFsError),
}

impl PlaceError {
    /// The host (or this user) has no cgroup for cgjob at all — as opposed to a cgroup
    /// that exists but was asked for wrongly (a name taken, a bad --parent).
    pub fn no_usable_cgroup(&self) -> bool {
        matches!(
            self,
            PlaceError::Mount(mount::MountError::NotMounted)
                | PlaceError::Permission { .. }
                | PlaceError::ReadOnly(_)
                | PlaceError::NotDelegated { .. }
        )
    }
}

impl From<CgroupFsError> for PlaceError {
    fn from(e: CgroupFsError) -> Self {
        match e.errno() {
            Some(libc::EACCES | libc::EPERM) => PlaceError::Permission {
                path: e.path.clone(),
            },
            Some(libc::EROFS) => PlaceError::ReadOnly(e.path.clone()),
            Some(libc::EEXIST) => PlaceError::Exists(e.path.clone()),
            _ => PlaceError::Fs(e),
        }
    }
}

/// The cgroup2 hierarchy to use.
pub fn hierarchy(root_override: Option<&Path>) -> Result<Cgroup2Mount, PlaceError> {
    Ok(match root_override {
        Some(p) => mount::at(p)?,
        None => mount::find()?,
    })
}

/// The directory job cgroups go under.
pub fn parent_dir(m: &Cgroup2Mount, parent: Option<&Path>) -> Result<PathBuf, PlaceError> {
    let Some(p) = parent else {
        return Ok(m.mount_point.join(defaults::PARENT));
    };
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(PlaceError::ParentDotDot(p.to_owned()));
    }
    let full = if p.is_absolute() {
        p.to_owned()
    } else {
        m.mount_point.join(p)
    };
    if !full.starts_with(&m.mount_point) && !mount::is_cgroup2(&full) {
        return Err(PlaceError::ParentNotCgroup2(full));
    }
    Ok(full)
}

/// Where job cgroups go, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobParent {
    pub dir: PathBuf,
    /// Set when `dir` lies in the delegated cgroup cgjob runs in.
    pub delegated: Option<Delegation>,
}

/// A cgroup delegated to the (unprivileged) user, that cgjob runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The cgroup cgjob runs in.
    pub own: PathBuf,
    /// Where cgjob moves itself first, when `own` has controllers enabled for its children:
    /// the no-internal-processes rule keeps processes out of such a cgroup's interior (only
    /// the root and threaded controllers are exempt).
    pub leaf: Option<PathBuf>,
}

/// Where the job cgroups of `cgjob run` (and `gc`) go: `--parent` when given; as root
/// `<root>/cgjob`; otherwise `<own>/cgjob`, where `<own>` is the cgroup cgjob runs in, when
/// the user may write it (a delegated subtree: systemd's `user@UID.service`, a scope with
/// `Delegate=yes`, or one root chowned). Nothing is created here.
pub fn job_parent(m: &Cgroup2Mount, parent: Option<&Path>) -> Result<JobParent, PlaceError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if parent.is_some() || uid == 0 {
        return Ok(JobParent {
            dir: parent_dir(m, parent)?,
            delegated: None,
        });
    }
    let Some(own) = mount::own_dir(m) else {
        return Err(PlaceError::NotDelegated {
            uid,
            own: "a cgroup the cgroup2 mount does not show".into(),
            hint: delegation_hint(m, uid),
        });
    };
    delegated_parent(m, &Cgroup::at(own), uid)
}

/// [`job_parent`] for a user in cgroup `own` (on the mount `m`; the root is injected so that
/// this runs on a fake cgroupfs).
pub fn delegated_parent(m: &Cgroup2Mount, own: &Cgroup, uid: u32) -> Result<JobParent, PlaceError> {
    if let Err(e) = own.check_writable() {
        if e.errno() == Some(libc::EROFS) {
            return Err(PlaceError::ReadOnly(m.mount_point.clone()));
        }
        return Err(PlaceError::NotDelegated {
            uid,
            own: match own.owner() {
                Some(o) if o != uid => format!("{} (owned by uid {o})", own.path().display()),
                _ => own.path().display().to_string(),
            },
            hint: delegation_hint(m, uid),
        });
    }
    let leaf = match own.subtree_control() {
        Ok(c) if !c.is_empty() => Some(
            own.path()
                .join(format!("cgjob-supervisor-{}", std::process::id())),
        ),
        _ => None,
    };
    Ok(JobParent {
        dir: own.path().join(defaults::PARENT),
        delegated: Some(Delegation {
            own: own.path().to_owned(),
            leaf,
        }),
    })
}

/// How to get a delegated cgroup, for the error that says there is none.
fn delegation_hint(m: &Cgroup2Mount, uid: u32) -> String {
    let manager = m
        .mount_point
        .join(format!("user.slice/user-{uid}.slice/user@{uid}.service"));
    let systemd = if manager.is_dir() {
        format!("your systemd user manager has a delegated subtree ({}): start cgjob in it with `systemd-run --user --scope -p Delegate=yes cgjob run …`", manager.display())
    } else {
        "on systemd hosts, start cgjob with `systemd-run --user --scope -p Delegate=yes cgjob run …`".into()
    };
    format!("{systemd}; or have root delegate a cgroup to you (mkdir it; chown it and its cgroup.procs, cgroup.subtree_control and cgroup.threads to you) and run cgjob inside it, or pass it as --parent")
}

/// Check, without creating anything, that job cgroups can be made under `p.dir`: the
/// directory (or the nearest existing ancestor it would be made in) must be writable.
pub fn check_usable(m: &Cgroup2Mount, p: &JobParent) -> Result<(), PlaceError> {
    let mut dir = p.dir.as_path();
    while !dir.is_dir() {
        match dir.parent() {
            Some(up) if up.starts_with(&m.mount_point) => dir = up,
            _ => break,
        }
    }
    Cgroup::at(dir)
        .check_writable()
        .map_err(|e| match e.errno() {
            Some(libc::EACCES | libc::EPERM) => PlaceError::Permission {
                path: p.dir.clone(),
            },
            _ => e.into(),
        })
}

/// cgjob moved into a leaf of its delegated cgroup ([`Delegation::leaf`]). Dropping it moves
/// cgjob back to where it was and removes the leaf.
#[derive(Debug)]
pub struct SupervisorLeaf {
    leaf: Cgroup,
    home: Cgroup,
}

/// Move cgjob into `d.leaf`, if it needs one.
pub fn enter_leaf(d: &Delegation) -> Result<Option<SupervisorLeaf>, PlaceError> {
    let Some(leaf) = &d.leaf else {
        return Ok(None);
    };
    let leaf = Cgroup::ensure(leaf)?;
    if let Err(e) = leaf.add_process(0) {
        let _ = leaf.remove();
        return Err(e.into());
    }
    tracing::info!(leaf = %leaf.path().display(), "moved into a leaf cgroup: the delegated cgroup has controllers enabled for its children");
    Ok(Some(SupervisorLeaf {
        leaf,
        home: Cgroup::at(&d.own),
    }))
}

impl Drop for SupervisorLeaf {
    fn drop(&mut self) {
        let back = self.home.add_process(0).and_then(|()| self.leaf.remove());
        if let Err(e) = back {
            tracing::warn!(error = %e, "cannot leave the supervisor's leaf cgroup");
        }
    }
}

/// A fresh name: `run-<pid>-<random>`.
pub fn generate_name() -> JobName {
    let mut r = [0u8; 4];
    // SAFETY: fills the 4-byte buffer.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    JobName::parse(&format!(
        "run-{}-{}",
        std::process::id(),
        u32::from_ne_bytes(r) & 0xff_ffff
    ))
    .expect("generated names are valid")
}

/// Make the job cgroup `parent/name` (creating `parent` when missing). A name given by the
/// user that exists is an error; a generated one that collides is drawn again.
pub fn create(parent: &Path, name: Option<&JobName>) -> Result<(Cgroup, JobName), PlaceError> {
    if !parent.is_dir() {
        Cgroup::ensure(parent)?;
    }
    if let Some(n) = name {
        return Ok((Cgroup::create_new(parent, n.as_str())?, n.clone()));
    }
    for _ in 0..8 {
        let n = generate_name();
        match Cgroup::create_new(parent, n.as_str()) {
            Ok(cg) => return Ok((cg, n)),
            Err(e) if e.errno() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PlaceError::Exists(parent.join("run-*")))
}

/// The job cgroup as `/proc/PID/cgroup` names it (relative to the hierarchy's root).
pub fn proc_view(m: &Cgroup2Mount, cg: &Cgroup) -> PathBuf {
    let rel = cg.path().strip_prefix(&m.mount_point).unwrap_or(cg.path());
    m.root.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cgroup(dir: &Path, subtree_control: &str) -> Cgroup {
        for f in ["cgroup.procs", "cgroup.events", "cgroup.controllers"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        std::fs::write(dir.join("cgroup.subtree_control"), subtree_control).unwrap();
        Cgroup::at(dir)
    }

    #[test]
    fn a_writable_own_cgroup_is_the_delegated_parent() {
        let d = tempfile::tempdir().unwrap();
        let m = Cgroup2Mount {
            mount_point: d.path().to_owned(),
            root: "/".into(),
            read_only: false,
        };
        let own_dir = d.path().join("user.slice/u.scope");
        std::fs::create_dir_all(&own_dir).unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };

        // No controllers for the children: jobs go beside cgjob, under <own>/cgjob.
        let own = fake_cgroup(&own_dir, "");
        let p = delegated_parent(&m, &own, uid).unwrap();
        assert_eq!(p.dir, own_dir.join("cgjob"));
        assert_eq!(
            p.delegated,
            Some(Delegation {
                own: own_dir.clone(),
                leaf: None
            })
        );
        check_usable(&m, &p).unwrap();

        // Controllers enabled for the children: cgjob must leave the interior for a leaf.
        let own = fake_cgroup(&own_dir, "pids\n");
        let p = delegated_parent(&m, &own, uid).unwrap();
        let leaf = p.delegated.unwrap().leaf.unwrap();
        assert_eq!(leaf.parent(), Some(own_dir.as_path()));
        assert!(leaf
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("cgjob-supervisor-"));

        // Not a cgroup one may start processes in (no cgroup.procs): not delegated, and the
        // error says how to get one.
        std::fs::remove_file(own_dir.join("cgroup.procs")).unwrap();
        let e = delegated_parent(&m, &own, uid).unwrap_err();
        assert!(e.no_usable_cgroup());
        let msg = e.to_string();
        assert!(
            msg.contains("no cgroup is delegated")
                && msg.contains("systemd-run --user --scope -p Delegate=yes")
                && msg.contains("chown"),
            "{msg}"
        );
    }

    #[test]
    fn which_errors_mean_no_cgroup_at_all() {
        let p = PathBuf::from("/x");
        assert!(PlaceError::Mount(mount::MountError::NotMounted).no_usable_cgroup());
        assert!(PlaceError::Permission { path: p.clone() }.no_usable_cgroup());
        assert!(PlaceError::ReadOnly(p.clone()).no_usable_cgroup());
        assert!(!PlaceError::Exists(p.clone()).no_usable_cgroup());
        assert!(!PlaceError::ParentDotDot(p.clone()).no_usable_cgroup());
        assert!(!PlaceError::ParentNotCgroup2(p).no_usable_cgroup());
    }
}
