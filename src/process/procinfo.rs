//! The few /proc fields cgjob reports about a process, hand-parsed: pid, ppid, uid, state,
//! start time, command name and line, cgroup, and the kernel function it sleeps in.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// Read a pseudo-file (procfs, cgroupfs) whole. Such files report size 0, so std's
/// `read_to_string` probes with 32-byte reads and doubles; here reads are 4 KiB and more.
/// Only a zero-length read ends it: a seq_file hands out one internal page per `read`, so a
/// short read does not mean the end (`cgroup.procs` of a large job spans several).
pub fn read_pseudo(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if buf.len() - len < 1024 {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// [`read_pseudo`] as text.
pub fn read_pseudo_string(path: impl AsRef<Path>) -> std::io::Result<String> {
    read_pseudo(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Whether /proc shows this process's own PID namespace. Not so when cgjob runs as PID 1
/// of a new namespace without a fresh /proc mount (`unshare --pid --fork` without
/// `--mount-proc`): pids from cgroup.procs and getpid() then name other processes in /proc.
pub fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    })
}

/// The pid of a pidfd's process as *this /proc* names it, from the `Pid:` line of its
/// fdinfo (rendered in the PID namespace of the /proc mount). Lets cgjob read /proc for a
/// process when /proc belongs to another PID namespace than cgjob's own.
pub fn pid_in_proc(pidfd: RawFd) -> Option<i32> {
    let text = read_pseudo_string(format!("/proc/self/fdinfo/{pidfd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|p: &i32| *p > 0)
}

/// What `/proc/PID/stat` says (fields after the `(comm)` are counted from the last `)`, since
/// a command name may hold spaces and parentheses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    /// Clock ticks after boot.
    pub start_ticks: u64,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), rest[19] = starttime (22)
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&read_pseudo_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Real uid from the `Uid:` line of `/proc/PID/status`.
pub fn parse_status_uid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn read_uid(pid: i32) -> Option<u32> {
    parse_status_uid(&read_pseudo_string(format!("/proc/{pid}/status")).ok()?)
}

/// The command line, NUL-separated in /proc (empty for kernel threads and zombies).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let b = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|c| *c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

pub fn read_cmdline(pid: i32) -> Vec<String> {
    read_pseudo(format!("/proc/{pid}/cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default()
}

/// The cgroup2 path (`0::/path`) from `/proc/PID/cgroup`, relative to the reader's cgroup
/// namespace root.
pub fn parse_cgroup2_path(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
}

pub fn read_cgroup2_path(pid: i32) -> Option<PathBuf> {
    parse_cgroup2_path(&read_pseudo_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The pid holding an `flock` on the inode `major:minor:ino`, from the text of /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1c:5678 0 EOF`; waiters are marked `->` and skipped;
/// the device numbers are hex, the inode decimal). `None` when no one holds one, or the
/// holder is outside the reader's PID namespace (shown as pid 0 or -1).
pub fn flock_holder(text: &str, major: u32, minor: u32, ino: u64) -> Option<i32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) == Some(&"->") || f.get(1) != Some(&"FLOCK") {
            return None;
        }
        (f.get(5)? == &want.as_str())
            .then(|| f.get(4)?.parse().ok())
            .flatten()
            .filter(|p: &i32| *p > 0)
    })
}

/// The kernel function a sleeping task waits in (`0` when running or unknown).
pub fn read_wchan(pid: i32) -> Option<String> {
    let w = std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()?;
    let w = w.trim();
    (!w.is_empty() && w != "0").then(|| w.to_owned())
}

/// Boot time in seconds since the epoch (`btime` in /proc/stat), to turn start ticks into a
/// wall-clock time.
pub fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Time since boot, from /proc/uptime.
pub fn uptime() -> Option<std::time::Duration> {
    let t = read_pseudo_string("/proc/uptime").ok()?;
    let secs: f64 = t.split_whitespace().next()?.parse().ok()?;
    std::time::Duration::try_from_secs_f64(secs).ok()
}

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Whether this kernel has `/proc/PID/task/TID/children` (CONFIG_PROC_CHILDREN).
fn children_file_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        Path::new(&format!("/proc/self/task/{tid}/children")).exists()
    })
}

/// Children of `pid` (of all its threads), from `/proc/PID/task/TID/children`. `None` when the
/// kernel does not offer the file; an empty list when the process is gone.
pub fn children(pid: i32) -> Option<Vec<i32>> {
    if !children_file_supported() {
        return None;
    }
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = read_pseudo_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    Some(out)
}

/// Every descendant of `root` (children, grandchildren, …), found through the `children`
/// files of `root` and of each descendant in turn: it reads the tree's own entries only, not
/// every process on the system, so a round is quick enough to keep up with a process that
/// forks a copy of itself and exits. The kernel builds each file from a live list (proc(5):
/// only reliable for a stopped tree), so a child being forked or reparented meanwhile can be
/// missed: callers look again. `None` where the kernel has no `children` files.
pub fn descendants(root: i32) -> Option<Vec<i32>> {
    if !children_file_supported() {
        return None;
    }
    let mut out = Vec::new();
    // A pid met twice (reused while we walk) must not loop.
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for c in children(p)? {
            if c != root && seen.insert(c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    Some(out)
}

/// Every process /proc shows (thread-group leaders), by pid.
pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The inode number of the initial PID namespace (`PROC_PID_INIT_INO`, fixed since 3.8).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Whether this process lives in the host's initial PID namespace, where PID 1 is the
/// machine's own init. `None` when it cannot be told (no /proc).
pub fn in_initial_pid_namespace() -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self names this process even in a /proc of an ancestor namespace.
    let m = std::fs::metadata("/proc/self/ns/pid").ok()?;
    Some(m.ino() == PROC_PID_INIT_INO)
}

/// This process's cgroup2 path (from `/proc/self/cgroup`), relative to its cgroup
/// namespace's root.
pub fn own_cgroup2_path() -> Option<PathBuf> {
    parse_cgroup2_path(&read_pseudo_string("/proc/self/cgroup").ok()?)
}

/// `stat` of every process on the system: one pass over /proc that gives both the parent
/// links (to walk a process tree) and what a report needs about each process.
pub fn all_stats() -> Vec<Stat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// Descendants of `root` among `stats` (children, grandchildren, …).
pub fn descendants_in(root: i32, stats: &[Stat]) -> Vec<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    for s in stats {
        children.entry(s.ppid).or_default().push(s.pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(c) = children.get(&p) {
            out.extend_from_slice(c);
            stack.extend_from_slice(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_flock_holder_of_an_inode() {
        let text = "\
1: POSIX  ADVISORY  WRITE 812 00:1a:1001 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:1c:5678 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 00:1c:5678 0 EOF
3: FLOCK  ADVISORY  WRITE 0 00:1c:9999 0 EOF
4: FLOCK  ADVISORY  WRITE 77 103:1f:5678 0 EOF
";
        assert_eq!(flock_holder(text, 0, 0x1c, 5678), Some(4242));
        assert_eq!(flock_holder(text, 0x103, 0x1f, 5678), Some(77));
        assert_eq!(
            flock_holder(text, 0, 0x1a, 1001),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(
            flock_holder(text, 0, 0x1c, 9999),
            None,
            "outside our namespace"
        );
        assert_eq!(flock_holder(text, 0, 0x1c, 567), None);
    }

    #[test]
    fn stat_with_tricky_comm() {
        let t = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100 18446744073709551615";
        let s = parse_stat(t).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_ticks, 98765);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn status_uid_cmdline_cgroup() {
        assert_eq!(
            parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
        assert_eq!(parse_cmdline(b"sleep\x001000\x00"), vec!["sleep", "1000"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"a b\x00"), vec!["a b"]);
        assert_eq!(
            parse_cgroup2_path("4:memory:/x\n0::/cgjob/run-1\n"),
            Some(PathBuf::from("/cgjob/run-1"))
        );
        assert_eq!(parse_cgroup2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn pseudo_files_are_read_to_the_end() {
        // /proc/self/maps is a seq_file that spans pages once there are enough mappings.
        // Mappings of alternating protection, which the kernel cannot merge.
        let maps: Vec<*mut libc::c_void> = (0..200)
            .map(|i| {
                let prot = if i % 2 == 0 {
                    libc::PROT_READ
                } else {
                    libc::PROT_READ | libc::PROT_WRITE
                };
                // SAFETY: a fresh anonymous mapping, unmapped below.
                unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        prot,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                }
            })
            .collect();
        let ours = read_pseudo("/proc/self/maps").unwrap();
        let theirs = std::fs::read("/proc/self/maps").unwrap();
        for m in maps {
            // SAFETY: unmapping what was mapped above.
            unsafe { libc::munmap(m, 4096) };
        }
        // Other test threads may map and unmap meanwhile: compare what cannot move much.
        let lines = |b: &[u8]| b.iter().filter(|c| **c == b'\n').count();
        assert!(theirs.len() > 8192, "the test needs a multi-page file");
        assert!(
            lines(&ours) >= 200 && lines(&ours) + 20 > lines(&theirs),
            "{} of {} lines",
            lines(&ours),
            lines(&theirs)
        );
        let mountinfo = read_pseudo("/proc/self/mountinfo").unwrap();
        assert_eq!(mountinfo, std::fs::read("/proc/self/mountinfo").unwrap());
    }

    #[test]
    fn descendants_and_namespace_facts_of_this_process() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let d = descendants(me).expect("this kernel has children files");
        let pid = child.id() as i32;
        let _ = child.kill();
        let _ = child.wait();
        assert!(d.contains(&pid), "{d:?} lacks {pid}");
        assert!(!d.contains(&me));
        assert!(all_pids().contains(&me));
        assert!(in_initial_pid_namespace().is_some());
        assert!(own_cgroup2_path().is_some());
    }

    #[test]
    fn this_process_reads_back() {
        let me = std::process::id() as i32;
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(read_uid(me).is_some());
        assert!(!read_cmdline(me).is_empty());
        assert!(boot_time().unwrap() > 1_000_000_000);
    }
}
