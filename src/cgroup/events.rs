//! `cgroup.events`: whether a cgroup's subtree still holds a live task (`populated`, since 4.5)
//! and whether it is frozen (`frozen`, since 5.2). The kernel signals a change with
//! POLLPRI/EPOLLPRI on an open fd of the file; every wake-up is followed by a fresh read,
//! because one notification may stand for several changes and the kernel rate-limits them
//! (about one per ~10 ms per file, the last one delayed, never dropped).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::file::CgroupFsError;

/// The parsed content of `cgroup.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    pub populated: bool,
    /// `None` on kernels before 5.2 (no freezer in v2).
    pub frozen: Option<bool>,
}

/// Parse `cgroup.events`. Unknown keys are ignored; a missing `populated` is an error.
pub fn parse(text: &str) -> Option<Events> {
    let mut populated = None;
    let mut frozen = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("populated"), Some(v)) => populated = Some(v == "1"),
            (Some("frozen"), Some(v)) => frozen = Some(v == "1"),
            _ => {}
        }
    }
    Some(Events {
        populated: populated?,
        frozen,
    })
}

/// An open `cgroup.events` of one cgroup, for reading and for waiting on changes.
#[derive(Debug)]
pub struct EventsFile {
    file: File,
    path: PathBuf,
}

impl EventsFile {
    pub fn open(cgroup_dir: &Path) -> Result<Self, CgroupFsError> {
        let path = cgroup_dir.join("cgroup.events");
        let file = File::open(&path).map_err(|e| CgroupFsError::new("open", &path, e))?;
        Ok(EventsFile { file, path })
    }

    /// Read the current state (from offset 0: the fd is kept open across reads).
    pub fn read(&self) -> Result<Events, CgroupFsError> {
        let mut buf = [0u8; 256];
        let n = self
            .file
            .read_at(&mut buf, 0)
            .map_err(|e| CgroupFsError::new("read", &self.path, e))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        parse(&text).ok_or_else(|| {
            CgroupFsError::new(
                "parse",
                &self.path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_owned()),
            )
        })
    }

    /// Block until `pred` holds for the file's state or `deadline` passes, woken by POLLPRI
    /// (never by sleeping). Returns the last state read and whether `pred` held.
    ///
    /// For callers with nothing else to wait on (the guardian, the kill mechanism's freeze
    /// confirmation); the supervisor puts [`EventsFile::fd`] into its own epoll set instead.
    pub fn wait_until(
        &self,
        deadline: Instant,
        pred: impl Fn(&Events) -> bool,
    ) -> Result<(Events, bool), CgroupFsError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let ev = self.read()?;
            if pred(&ev) {
                return Ok((ev, true));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok((ev, false));
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLPRI)];
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(CgroupFsError::new("poll", &self.path, e.into())),
            }
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_shape() {
        type Case<'a> = (&'a str, Option<(bool, Option<bool>)>);
        let cases: &[Case] = &[
            ("populated 1\nfrozen 0\n", Some((true, Some(false)))),
            ("populated 0\nfrozen 1\n", Some((false, Some(true)))),
            ("populated 0\n", Some((false, None))),
            ("frozen 1\npopulated 1\n", Some((true, Some(true)))),
            (
                "populated 1\nfrozen 0\nnewkey 7\n",
                Some((true, Some(false))),
            ),
            ("frozen 1\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse(text).map(|e| (e.populated, e.frozen)),
                *want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn wait_until_sees_a_rewrite_by_another_thread() {
        // A fake cgroupfs: a thread plays the kernel. A regular file is always "ready" for
        // poll, so this checks the re-read loop, not the wake-up.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cgroup.events");
        std::fs::write(&p, "populated 1\nfrozen 0\n").unwrap();
        let ev = EventsFile::open(dir.path()).unwrap();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            std::fs::write(&p2, "populated 0\nfrozen 0\n").unwrap();
        });
        // Regular files never raise POLLPRI, so this wakes at the deadline and re-reads.
        let deadline = Instant::now() + std::time::Duration::from_millis(300);
        let (last, ok) = ev.wait_until(deadline, |e| !e.populated).unwrap();
        t.join().unwrap();
        assert!(ok);
        assert!(!last.populated);
        // And a deadline that passes returns the state with `false`.
        let (_, ok) = ev.wait_until(Instant::now(), |e| e.populated).unwrap();
        assert!(!ok);
    }
}
