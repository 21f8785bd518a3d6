//! Job cgroup directories: create (never reuse), list processes, remove (EBUSY retry).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{self, CgroupFsError};

/// One cgroup directory of the cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// A handle on an existing cgroup directory (nothing is checked).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Cgroup { path: path.into() }
    }

    /// Create `parent/name`. An existing directory is an error (`EEXIST`), never reused: another
    /// job's processes could be in it.
    pub fn create_new(parent: &Path, name: &str) -> Result<Self, CgroupFsError> {
        let path = parent.join(name);
        std::fs::create_dir(&path).map_err(|e| CgroupFsError::new("create cgroup", &path, e))?;
        Ok(Cgroup { path })
    }

    /// Create a directory (and missing parents) if it does not exist yet: for cgjob's own
    /// parent cgroup, which many jobs share.
    pub fn ensure(path: &Path) -> Result<Self, CgroupFsError> {
        match std::fs::create_dir_all(path) {
            Ok(()) => Ok(Cgroup {
                path: path.to_owned(),
            }),
            Err(e) => Err(CgroupFsError::new("create cgroup", path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn has_file(&self, name: &str) -> bool {
        self.file(name).exists()
    }

    pub fn read(&self, name: &str) -> Result<String, CgroupFsError> {
        file::read(&self.file(name))
    }

    pub fn write(&self, name: &str, data: &str) -> Result<(), CgroupFsError> {
        file::write(&self.file(name), data)
    }

    /// Open the directory for clone3's `CLONE_INTO_CGROUP`.
    pub fn open_dir(&self) -> Result<OwnedFd, CgroupFsError> {
        open_fd(
            &self.path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    }

    /// Open `cgroup.procs` for writing, for a child that joins before exec.
    pub fn open_procs_for_join(&self) -> Result<OwnedFd, CgroupFsError> {
        open_fd(&self.file("cgroup.procs"), libc::O_WRONLY | libc::O_CLOEXEC)
    }

    /// Take an exclusive `flock` on the cgroup directory and hold it as long as the returned
    /// fd is open: a liveness mark that needs no pid (pids differ between PID namespaces and
    /// get reused) and that the kernel drops when its holder dies, however it dies.
    pub fn hold_lock(&self) -> Result<OwnedFd, CgroupFsError> {
        use std::os::fd::AsRawFd;
        let fd = self.open_dir()?;
        // Blocking: the cgroup is new, so the only other holder can be an `is_locked` check
        // (gc, the daemon) that takes and drops the lock at once; failing then would fail the
        // job for nothing.
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CgroupFsError::new(
                "lock",
                &self.path,
                io::Error::last_os_error(),
            ));
        }
        Ok(fd)
    }

    /// The process holding the lock of [`Cgroup::hold_lock`], from /proc/locks, which names
    /// it as the reader's PID namespace sees it (`None` when it cannot, or nobody holds it).
    pub fn lock_holder(&self) -> Option<i32> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&self.path).ok()?;
        let text = crate::process::procinfo::read_pseudo_string("/proc/locks").ok()?;
        crate::process::procinfo::flock_holder(
            &text,
            libc::major(md.dev()),
            libc::minor(md.dev()),
            md.ino(),
        )
    }

    /// Whether someone holds the lock of [`Cgroup::hold_lock`]. `None` when that cannot be
    /// told (no such directory, or locks unsupported).
    pub fn is_locked(&self) -> Option<bool> {
        use std::os::fd::AsRawFd;
        let fd = self.open_dir().ok()?;
        // SAFETY: flock on an fd we own; closing it drops a lock we may have taken.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        match rc {
            0 => Some(false),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK) => Some(true),
            _ => None,
        }
    }

    /// Pids in this cgroup only.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupFsError> {
        Ok(file::parse_pids(&self.read("cgroup.procs")?))
    }

    /// This cgroup and every descendant cgroup (a job may create sub-cgroups), parents first.
    pub fn subtree(&self) -> Result<Vec<Cgroup>, CgroupFsError> {
        let mut out = vec![self.clone()];
        let mut i = 0;
        while i < out.len() {
            let dir = out[i].path.clone();
            match std::fs::read_dir(&dir) {
                Ok(rd) => {
                    for ent in rd.flatten() {
                        if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            out.push(Cgroup { path: ent.path() });
                        }
                    }
                }
                Err(e) if i > 0 && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupFsError::new("list", &dir, e)),
            }
            i += 1;
        }
        Ok(out)
    }

    /// Pids in this cgroup and all its descendants.
    pub fn procs_recursive(&self) -> Result<Vec<i32>, CgroupFsError> {
        let mut pids = Vec::new();
        for cg in self.subtree()? {
            match cg.procs() {
                Ok(p) => pids.extend(p),
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pids)
    }

    /// Remove this cgroup and its descendant cgroups, children first. `rmdir` can fail with
    /// EBUSY for a moment after the last task left (the kernel still unlinks exiting tasks), so
    /// retry with backoff as runc does (10 tries from 1 ms doubling); ENOENT means done.
    pub fn remove(&self) -> Result<(), CgroupFsError> {
        // The common case, a job that made no sub-cgroups: one rmdir.
        match std::fs::remove_dir(&self.path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {}
        }
        let tree = match self.subtree() {
            Ok(t) => t,
            Err(e) if e.is_gone() => return Ok(()),
            Err(e) => return Err(e),
        };
        for cg in tree.iter().rev() {
            rmdir_retry(&cg.path)?;
        }
        Ok(())
    }

    /// Check that this process may make cgroups here and start or move processes into them:
    /// write access to the directory and to its `cgroup.procs` (the v2 migration rule asks
    /// for the latter on the common ancestor of source and target). Checked with the
    /// effective ids, as the kernel will; EROFS for a read-only mount. Nothing is changed.
    pub fn check_writable(&self) -> Result<(), CgroupFsError> {
        for p in [self.path.clone(), self.file("cgroup.procs")] {
            access_w(&p).map_err(|e| CgroupFsError::new("write to", &p, e))?;
        }
        Ok(())
    }

    /// The controllers enabled for the children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>, CgroupFsError> {
        Ok(words(&self.read("cgroup.subtree_control")?))
    }

    /// The controllers available here (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupFsError> {
        Ok(words(&self.read("cgroup.controllers")?))
    }

    /// Enable controllers for this cgroup's children (`+memory +pids` into
    /// `cgroup.subtree_control`), in one write. The no-internal-processes rule makes this fail
    /// (EBUSY) while the cgroup itself holds processes, except at the root.
    pub fn enable_controllers(&self, names: &[&str]) -> Result<(), CgroupFsError> {
        if names.is_empty() {
            return Ok(());
        }
        let data: Vec<String> = names.iter().map(|n| format!("+{n}")).collect();
        self.write("cgroup.subtree_control", &data.join(" "))
    }

    /// Move a process, all its threads, into this cgroup (`0`: the caller). cgroup v2 allows
    /// it only to someone who may write `cgroup.procs` of the common ancestor of the
    /// process's old and new cgroup; ESRCH (`errno()`) when there is no such process.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupFsError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The owner of the directory (a delegated cgroup belongs to its delegatee).
    pub fn owner(&self) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).ok().map(|m| m.uid())
    }

    /// `cpu.stat` as key/value pairs (present on every cgroup2 cgroup since 4.5, even without
    /// the cpu controller: `usage_usec`, `user_usec`, `system_usec`).
    pub fn cpu_stat(&self) -> Result<Vec<(String, u64)>, CgroupFsError> {
        let text = self.read("cpu.stat")?;
        Ok(file::parse_flat_keyed(&text)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect())
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// `faccessat(W_OK, AT_EACCESS)`: may the effective user write `path`?
fn access_w(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string; no pointers kept.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn rmdir_retry(path: &Path) -> Result<(), CgroupFsError> {
    let mut delay = Duration::from_millis(1);
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 10 => {
                // Not a wait for emptiness (that is event-driven): a bounded retry of a
                // transient kernel state, as runc's RemovePath does.
                std::thread::sleep(delay);
                delay *= 2;
                tries += 1;
            }
            Err(e) => return Err(CgroupFsError::new("remove cgroup", path, e)),
        }
    }
}

fn open_fd(path: &Path, flags: i32) -> Result<OwnedFd, CgroupFsError> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        CgroupFsError::new("open", path, io::Error::from(io::ErrorKind::InvalidInput))
    })?;
    // SAFETY: a valid C string; the returned fd is owned by us.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(CgroupFsError::new("open", path, io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_refuses_an_existing_cgroup() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroup::create_new(d.path(), "job1").unwrap();
        assert!(cg.path().is_dir());
        let e = Cgroup::create_new(d.path(), "job1").unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().contains("job1"));
    }

    #[test]
    fn subtree_and_recursive_procs_on_a_fake_cgroupfs() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroup::create_new(d.path(), "job").unwrap();
        std::fs::write(cg.file("cgroup.procs"), "10\n11\n").unwrap();
        let sub = Cgroup::create_new(cg.path(), "sub").unwrap();
        std::fs::write(sub.file("cgroup.procs"), "12\n").unwrap();
        let mut p = cg.procs_recursive().unwrap();
        p.sort();
        assert_eq!(p, vec![10, 11, 12]);
        assert_eq!(cg.subtree().unwrap().len(), 2);
    }

    #[test]
    fn lock_marks_a_live_owner() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroup::create_new(d.path(), "job").unwrap();
        assert_eq!(cg.is_locked(), Some(false));
        let held = cg.hold_lock().unwrap();
        assert_eq!(cg.is_locked(), Some(true));
        drop(held);
        assert_eq!(cg.is_locked(), Some(false));
        assert_eq!(Cgroup::at(d.path().join("gone")).is_locked(), None);
    }

    #[test]
    fn controllers_writability_and_owner_on_a_fake_cgroupfs() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroup::create_new(d.path(), "own").unwrap();
        std::fs::write(cg.file("cgroup.subtree_control"), "pids cpuset\n").unwrap();
        std::fs::write(cg.file("cgroup.controllers"), "").unwrap();
        assert_eq!(cg.subtree_control().unwrap(), vec!["pids", "cpuset"]);
        assert!(cg.controllers().unwrap().is_empty());
        // No cgroup.procs: not a cgroup one could start processes in.
        let e = cg.check_writable().unwrap_err();
        assert!(e.is_gone(), "{e}");
        std::fs::write(cg.file("cgroup.procs"), "").unwrap();
        cg.check_writable().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(cg.owner(), Some(unsafe { libc::geteuid() }));
    }

    #[test]
    fn remove_is_children_first_and_gone_is_done() {
        let d = tempfile::tempdir().unwrap();
        let cg = Cgroup::create_new(d.path(), "job").unwrap();
        Cgroup::create_new(cg.path(), "a").unwrap();
        Cgroup::create_new(&cg.path().join("a"), "b").unwrap();
        cg.remove().unwrap();
        assert!(!cg.path().exists());
        cg.remove().unwrap(); // already gone: done, not an error
    }
}
