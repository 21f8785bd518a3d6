//! The one choke point for cgroupfs I/O (after runc's `file.go`): every read and write of a
//! cgroup interface file goes through here, and every error carries the path, the operation and
//! the data written.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A failed cgroupfs operation.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}{}", data.as_ref().map(|d| format!(" (writing {d:?})")).unwrap_or_default())]
pub struct CgroupFsError {
    pub op: &'static str,
    pub path: PathBuf,
    pub data: Option<String>,
    #[source]
    pub source: io::Error,
}

impl CgroupFsError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        CgroupFsError {
            op,
            path: path.to_owned(),
            data: None,
            source,
        }
    }

    /// The errno of the underlying failure, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The cgroup (or the file) no longer exists: an outcome, not a failure, for most callers.
    /// ENODEV is what kernfs returns for a file of a cgroup removed while it was open.
    pub fn is_gone(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT) | Some(libc::ENODEV))
    }
}

/// Read a whole cgroupfs file as text.
pub fn read(path: &Path) -> Result<String, CgroupFsError> {
    crate::process::procinfo::read_pseudo_string(path)
        .map_err(|e| CgroupFsError::new("read", path, e))
}

/// Write `data` to a cgroupfs file in a single `write(2)`: cgroupfs parses each write as a
/// whole, so the data must not be split.
pub fn write(path: &Path, data: &str) -> Result<(), CgroupFsError> {
    let res = OpenOptions::new().write(true).open(path).and_then(|mut f| {
        let n = f.write(data.as_bytes())?;
        if n != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        Ok(())
    });
    res.map_err(|e| CgroupFsError {
        op: "write",
        path: path.to_owned(),
        data: Some(data.trim_end().to_owned()),
        source: e,
    })
}

/// Parse a flat-keyed file (`cpu.stat`, `memory.events`): `key value` per line.
pub fn parse_flat_keyed(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k, v))
        })
        .collect()
}

/// Parse a newline-separated list of pids (`cgroup.procs`).
pub fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Set an extended attribute on a cgroup directory. cgroupfs (kernfs) keeps `trusted.*`
/// attributes in memory for the life of the cgroup, which makes them a place to keep a job's
/// metadata *with* its cgroup.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), CgroupFsError> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        CgroupFsError::new(
            "set xattr on",
            path,
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })?;
    let cname = std::ffi::CString::new(name).expect("xattr names are static");
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe {
        libc::setxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(CgroupFsError {
            op: "set xattr on",
            path: path.to_owned(),
            data: Some(name.to_owned()),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Read an extended attribute; `Ok(None)` when the attribute is not set.
pub fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, CgroupFsError> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        CgroupFsError::new(
            "get xattr of",
            path,
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })?;
    let cname = std::ffi::CString::new(name).expect("xattr names are static");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(CgroupFsError::new("get xattr of", path, e)),
        };
    }
    buf.truncate(rc as usize);
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let t = "usage_usec 120\nuser_usec 100\nsystem_usec 20\nnr_periods 0\n";
        assert_eq!(
            parse_flat_keyed(t),
            vec![
                ("usage_usec", 120),
                ("user_usec", 100),
                ("system_usec", 20),
                ("nr_periods", 0)
            ]
        );
        assert_eq!(parse_flat_keyed("bad\nkey notanumber\n"), vec![]);
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("1\n22\n\n333\n"), vec![1, 22, 333]);
        assert!(parse_pids("").is_empty());
    }

    #[test]
    fn write_error_names_path_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing");
        let e = write(&p, "1\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("missing") && msg.contains("\"1\""), "{msg}");
        assert!(e.is_gone());
    }
}
