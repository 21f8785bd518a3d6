//! Helpers shared by the benchmark targets (`containment`, `daemon_load`): the cgroup2 mount,
//! waiting for a cgroup to empty, removing cgroup subtrees, the cgjob binary, the environment
//! and statistics. Included by each bench as `mod common;` (a subdirectory without a
//! `main.rs` is not a bench target of its own).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

// ---------------------------------------------------------------------------------------
// cgroup helpers
// ---------------------------------------------------------------------------------------

/// The cgroup2 mount point, from /proc/self/mountinfo (/sys/fs/cgroup first, if there are
/// several).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(unescape_mountinfo))?
        })
        .collect();
    mounts.sort_by_key(|m| m != Path::new("/sys/fs/cgroup"));
    mounts
        .into_iter()
        .next()
        .ok_or_else(|| "no cgroup2 mount in /proc/self/mountinfo".into())
}

/// A path field of /proc/self/mountinfo with its octal escapes (`\040` …) undone.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The `populated` line of an open `cgroup.events` (re-read from the start).
pub fn read_populated(events: &mut File) -> io::Result<bool> {
    let mut s = String::new();
    events.seek(SeekFrom::Start(0))?;
    events.read_to_string(&mut s)?;
    s.lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|v| v.trim() != "0")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no populated line in cgroup.events",
            )
        })
}

/// Waits (poll POLLPRI, re-reading after every wake-up, at most 100 ms apart) until
/// `populated 0`.
pub fn wait_unpopulated(events: &mut File, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if !read_populated(events).map_err(|e| format!("read cgroup.events: {e}"))? {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("cgroup still populated after {timeout:?}"));
        }
        // Cap the wait so a missed notification costs at most 100 ms, not the timeout.
        poll_one(
            events.as_raw_fd(),
            libc::POLLPRI,
            left.min(Duration::from_millis(100)),
        )?;
    }
}

/// poll(2) on one fd; Ok(true) if an event arrived, Ok(false) on timeout.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("poll: {e}"));
        }
    }
}

/// rmdir(2), retrying EBUSY (a cgroup whose last process is still exiting) with backoff;
/// a no-op if `path` does not exist.
pub fn rmdir_retry(path: &Path) -> Result<()> {
    let mut delay = Duration::from_millis(1);
    for _ in 0..14 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(format!("rmdir {}: {e}", path.display())),
        }
    }
    Err(format!("rmdir {}: still busy", path.display()))
}

/// Best-effort teardown of a cgroup subtree: kill everything in it (cgroup.kill), wait until
/// it is empty, remove it bottom-up. A no-op if it does not exist.
pub fn kill_and_remove_cgroup(cg: &Path) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    if let Ok(mut f) = OpenOptions::new().write(true).open(cg.join("cgroup.kill")) {
        let _ = f.write_all(b"1");
    }
    if let Ok(mut ev) = File::open(cg.join("cgroup.events")) {
        let _ = wait_unpopulated(&mut ev, Duration::from_secs(10));
    }
    // Children first (cgjob might use a leaf below the job cgroup).
    let mut dirs = vec![cg.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        rmdir_retry(d)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the binary and the environment
// ---------------------------------------------------------------------------------------

/// The cgjob binary cargo built for this bench; `CGJOB_BENCH_BIN` overrides it (to measure
/// an installed binary).
pub fn cgjob_bin() -> PathBuf {
    match std::env::var_os("CGJOB_BENCH_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_cgjob")),
    }
}

/// A positive integer from the environment variable `name`, at most `max` (`usize::MAX`:
/// no limit); `default` if it is not set.
pub fn env_usize(name: &str, default: usize, max: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ if max == usize::MAX => Err(format!("{name}={v:?}: expected a positive integer")),
            _ => Err(format!("{name}={v:?}: expected an integer from 1 to {max}")),
        },
        Err(_) => Ok(default),
    }
}

// ---------------------------------------------------------------------------------------
// statistics
// ---------------------------------------------------------------------------------------

/// The samples, sorted; `None` if there are none.
pub fn sorted(samples: &[Duration]) -> Option<Vec<Duration>> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    Some(s)
}

/// The median of sorted, non-empty samples (the mean of the middle two for an even count).
pub fn median(s: &[Duration]) -> Duration {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

/// The `q` quantile (0.9: p90) of sorted, non-empty samples, by nearest rank.
pub fn nearest_rank(s: &[Duration], q: f64) -> Duration {
    let n = s.len();
    s[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
