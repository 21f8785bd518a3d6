//! Finding the cgroup2 hierarchy: pure v2 at `/sys/fs/cgroup`, hybrid at
//! `/sys/fs/cgroup/unified`, or anywhere else — read from `/proc/self/mountinfo`, never assumed.

use std::path::{Path, PathBuf};

/// The filesystem magic of cgroup2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup2 mount seen in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy is the mount's root (`/` unless a subtree was bind-mounted
    /// or the mount was made in a cgroup namespace).
    pub root: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read /proc/self/mountinfo")]
    Read(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup` or pass --cgroup-root")]
    NotMounted,
    #[error("{0} is not a cgroup2 filesystem")]
    NotCgroup2(PathBuf),
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
pub(super) fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every cgroup2 mount in a mountinfo text, in file order.
pub fn parse_mountinfo(text: &str) -> Vec<Cgroup2Mount> {
    text.lines()
        .filter_map(|line| {
            // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let f: Vec<&str> = pre.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            Some(Cgroup2Mount {
                root: PathBuf::from(unescape(f[3])),
                mount_point: PathBuf::from(unescape(f[4])),
                read_only: f[5].split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Choose the mount to use: `/sys/fs/cgroup` when it is cgroup2 (pure v2), else a writable one
/// (hybrid hosts put it at `/sys/fs/cgroup/unified`), else the first.
pub fn choose(mounts: &[Cgroup2Mount]) -> Option<&Cgroup2Mount> {
    mounts
        .iter()
        .find(|m| m.mount_point == Path::new("/sys/fs/cgroup"))
        .or_else(|| mounts.iter().find(|m| !m.read_only))
        .or_else(|| mounts.first())
}

/// Find the cgroup2 mount of this host.
pub fn find() -> Result<Cgroup2Mount, MountError> {
    let text = crate::process::procinfo::read_pseudo_string("/proc/self/mountinfo")
        .map_err(MountError::Read)?;
    let mounts = parse_mountinfo(&text);
    choose(&mounts).cloned().ok_or(MountError::NotMounted)
}

/// Use a given directory as the cgroup2 root (an override): it must be a cgroup2 filesystem.
pub fn at(path: &Path) -> Result<Cgroup2Mount, MountError> {
    if !is_cgroup2(path) {
        return Err(MountError::NotCgroup2(path.to_owned()));
    }
    let text = crate::process::procinfo::read_pseudo_string("/proc/self/mountinfo")
        .map_err(MountError::Read)?;
    // The mount this path lives on: the longest mount point that is a prefix of it.
    let mounts = parse_mountinfo(&text);
    let m = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len());
    Ok(match m {
        Some(m) => Cgroup2Mount {
            root: m
                .root
                .join(path.strip_prefix(&m.mount_point).unwrap_or(Path::new(""))),
            mount_point: path.to_owned(),
            read_only: m.read_only,
        },
        None => Cgroup2Mount {
            mount_point: path.to_owned(),
            root: "/".into(),
            read_only: false,
        },
    })
}

/// /proc/self/mountinfo, read once per process: cgroup hierarchies are mounted at boot, and the
/// daemon would otherwise read it at every status and cleanup (empty if it cannot be read).
pub fn mountinfo() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        crate::process::procinfo::read_pseudo_string("/proc/self/mountinfo").unwrap_or_default()
    })
}

/// `path` relative to the cgroup2 mount it lies under (the deepest, when mounts nest); `None`
/// outside every cgroup2 mount, or for a mount point itself.
pub fn relative(path: &Path) -> Option<PathBuf> {
    parse_mountinfo(mountinfo())
        .iter()
        .filter_map(|m| path.strip_prefix(&m.mount_point).ok())
        .min_by_key(|r| r.components().count())
        .filter(|r| !r.as_os_str().is_empty())
        .map(Path::to_owned)
}

/// The directory of the mount `m` for a cgroup path as `/proc/PID/cgroup` names it (both are
/// relative to the reader's cgroup namespace). `None` when the mount does not show that
/// cgroup (a bind-mounted subtree elsewhere in the hierarchy).
pub fn dir_of(m: &Cgroup2Mount, cgroup_path: &Path) -> Option<PathBuf> {
    let rel = cgroup_path.strip_prefix(&m.root).ok()?;
    Some(if rel.as_os_str().is_empty() {
        m.mount_point.clone()
    } else {
        m.mount_point.join(rel)
    })
}

/// The directory of the cgroup this process runs in, on the mount `m`.
pub fn own_dir(m: &Cgroup2Mount) -> Option<PathBuf> {
    dir_of(m, &crate::process::procinfo::own_cgroup2_path()?)
}

/// Whether `path` is on a cgroup2 filesystem (statfs magic).
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const CONTAINER: &str = "\
700 690 0:24 /docker/abc /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
";
    const ESCAPED: &str = "\
50 23 0:40 / /mnt/my\\040cgroups rw,relatime - cgroup2 none rw
";

    #[test]
    fn finds_the_mount_in_each_layout() {
        type Case<'a> = (&'a str, Option<(&'a str, &'a str, bool)>);
        let cases: &[Case] = &[
            (HYBRID, Some(("/sys/fs/cgroup/unified", "/", false))),
            (PURE, Some(("/sys/fs/cgroup", "/", false))),
            (CONTAINER, Some(("/sys/fs/cgroup", "/docker/abc", true))),
            (ESCAPED, Some(("/mnt/my cgroups", "/", false))),
            ("", None),
            ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", None),
            ("garbage line without separator\n", None),
        ];
        for (text, want) in cases {
            let mounts = parse_mountinfo(text);
            let got = choose(&mounts).map(|m| {
                (
                    m.mount_point.to_str().unwrap(),
                    m.root.to_str().unwrap(),
                    m.read_only,
                )
            });
            assert_eq!(got, *want, "mountinfo:\n{text}");
        }
    }

    #[test]
    fn prefers_sys_fs_cgroup_then_writable() {
        let text = "\
1 0 0:1 / /ro-cg ro - cgroup2 cgroup2 rw
2 0 0:1 / /rw-cg rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            choose(&parse_mountinfo(text)).unwrap().mount_point,
            Path::new("/rw-cg")
        );
        let text2 = format!("{text}3 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(
            choose(&parse_mountinfo(&text2)).unwrap().mount_point,
            Path::new("/sys/fs/cgroup")
        );
    }

    #[test]
    fn cgroup_paths_map_to_mount_directories() {
        let m = |mp: &str, root: &str| Cgroup2Mount {
            mount_point: mp.into(),
            root: root.into(),
            read_only: false,
        };
        let cases: &[(Cgroup2Mount, &str, Option<&str>)] = &[
            (
                m("/sys/fs/cgroup", "/"),
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
                Some(
                    "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope",
                ),
            ),
            (
                m("/sys/fs/cgroup/unified", "/"),
                "/",
                Some("/sys/fs/cgroup/unified"),
            ),
            (
                m("/mnt/cg", "/docker/abc"),
                "/docker/abc/sub",
                Some("/mnt/cg/sub"),
            ),
            (m("/mnt/cg", "/docker/abc"), "/elsewhere", None),
        ];
        for (mount, path, want) in cases {
            assert_eq!(
                dir_of(mount, Path::new(path)),
                want.map(PathBuf::from),
                "{mount:?} {path}"
            );
        }
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("tab\\011x"), "tab\tx");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("back\\134slash"), "back\\slash");
    }
}
