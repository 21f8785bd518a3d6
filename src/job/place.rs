//! POLICY: where a job's cgroup lives — `<cgroup2 root>/cgjob/<name>` unless told otherwise —
//! and making it, with errors that say what to do.

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
    #[error(transparent)]
    Fs(CgroupFsError),
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
