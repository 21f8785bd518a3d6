//! cgjob's Slurm SPANK plugin: puts every task of a job — the batch script and every `srun`
//! task — into the job's cgroup (`<cgroup2 root>/cgjob/job-<id>`, made by the prolog's
//! `cgjob job create`) before the task execs, so everything it starts is born inside and the
//! epilog's `cgjob job cleanup` finds it, however it detached.
//!
//! `plugstack.conf`: `required /usr/local/lib/slurm/libcgjob_spank.so [parent=<cgroup>]`
//! (`parent` as `cgjob --parent`: absolute, or relative to the cgroup2 root).
//!
//! Hand-written FFI against Slurm 22.05's `slurm/spank.h`: the only calls are
//! `spank_get_item(S_JOB_ID)` and the logging functions, whose ABI has not changed since.
//! The plugin is loaded by slurmd, slurmstepd, sbatch, salloc and srun; it acts only in
//! `slurm_spank_task_init_privileged` (slurmstepd, as root, in the task, before exec).
//! It must not export a symbol named `init`: Slurm's plugin loader would call it.
//! A panic cannot unwind into Slurm: a panic in an `extern "C"` function aborts the task.

#![allow(non_upper_case_globals, non_camel_case_types)]

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::path::{Path, PathBuf};

use cgjob::commands::error_line;
use cgjob::job::batch::{self, JobId};
use cgjob::job::place;

/// `SLURM_VERSION_NUMBER` of the Slurm this was built for (see build.rs).
const SLURM_VERSION_NUMBER: c_uint = parse_u32(env!("CGJOB_SPANK_SLURM_VERSION_NUMBER"));

// What `SPANK_PLUGIN(cgjob, 1)` defines in C. Slurm's loader reads these by name; it compares
// only the major and minor release in `plugin_version` with its own.
#[no_mangle]
pub static plugin_name: [u8; 6] = *b"cgjob\0";
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
pub static plugin_version: c_uint = SLURM_VERSION_NUMBER;
#[no_mangle]
pub static spank_plugin_version: c_uint = 1;

/// `spank_t`: an opaque handle.
#[repr(C)]
pub struct spank_handle {
    _private: [u8; 0],
}
type spank_t = *mut spank_handle;

/// `enum spank_item` value of `S_JOB_ID` (argument: `uint32_t *`); stable since Slurm 2.x.
const S_JOB_ID: c_int = 2;
/// `ESPANK_SUCCESS`.
const ESPANK_SUCCESS: c_int = 0;

// Resolved in the process that loads the plugin (libslurmfull).
extern "C" {
    fn spank_get_item(sp: spank_t, item: c_int, ...) -> c_int;
    fn spank_strerror(err: c_int) -> *const c_char;
    fn slurm_error(fmt: *const c_char, ...);
    fn slurm_debug(fmt: *const c_char, ...);
}

/// Runs as root in each task (batch script, each `srun` task) after fork, before exec: the
/// task joins the job cgroup, so everything it starts is born there. Failing returns -1,
/// which with `required` in plugstack.conf fails the job instead of running it uncontained.
///
/// # Safety
/// Called by Slurm: `sp` is its handle, `av` holds `ac` valid C strings.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init_privileged(
    sp: spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    let args = unsafe { plugin_args(ac, av) };
    match place_task(sp, &args) {
        Ok((id, path)) => {
            log(
                slurm_debug,
                &format!("cgjob: task of job {id} joined {}", path.display()),
            );
            0
        }
        Err(msg) => {
            log(slurm_error, &format!("cgjob: {msg}"));
            -1
        }
    }
}

fn place_task(sp: spank_t, args: &[String]) -> Result<(JobId, PathBuf), String> {
    let parent_arg = parse_args(args)?;

    let mut raw: u32 = 0;
    // SAFETY: S_JOB_ID takes one `uint32_t *`.
    let rc = unsafe { spank_get_item(sp, S_JOB_ID, &mut raw as *mut u32) };
    if rc != ESPANK_SUCCESS {
        return Err(format!(
            "cannot get the job id from Slurm: {}",
            spank_error(rc)
        ));
    }
    let id = JobId::parse(&raw.to_string()).map_err(|e| format!("job id from Slurm: {e}"))?;

    let mount = place::hierarchy(None).map_err(|e| error_line(&e))?;
    let parent = place::parent_dir(&mount, parent_arg.as_deref()).map_err(|e| error_line(&e))?;
    batch::join(&parent, &id)
        .map(|p| (id.clone(), p))
        .map_err(|e| {
            let hint = if e.is_gone() {
                " (no job cgroup: does the Prolog run `cgjob job create`, with PrologFlags=Alloc?)"
            } else {
                ""
            };
            format!(
                "cannot place a task of job {id} in {}: {}{hint}",
                job_dir(&parent, &id),
                error_line(&e)
            )
        })
}

/// The plugin's arguments from plugstack.conf: `parent=<cgroup>`, or nothing.
fn parse_args(args: &[String]) -> Result<Option<PathBuf>, String> {
    let mut parent = None;
    for a in args {
        match a.strip_prefix("parent=") {
            Some(p) if !p.is_empty() => parent = Some(PathBuf::from(p)),
            _ => {
                return Err(format!(
                    "unknown plugin argument {a:?} in plugstack.conf (known: parent=<cgroup>)"
                ))
            }
        }
    }
    Ok(parent)
}

fn job_dir(parent: &Path, id: &JobId) -> String {
    parent.join(id.cgroup_name()).display().to_string()
}

/// # Safety
/// `av` holds `ac` valid NUL-terminated strings (or `ac` is 0).
unsafe fn plugin_args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    if av.is_null() {
        return Vec::new();
    }
    (0..ac.max(0) as usize)
        .map(|i| unsafe { *av.add(i) })
        .filter(|p| !p.is_null())
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}

fn spank_error(rc: c_int) -> String {
    // SAFETY: spank_strerror returns a static string (or NULL).
    let p = unsafe { spank_strerror(rc) };
    if p.is_null() {
        return format!("error {rc}");
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Log through Slurm's logger (slurmd.log, and the user's srun for errors), never as a
/// format string.
fn log(f: unsafe extern "C" fn(*const c_char, ...), msg: &str) {
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: "%s" with one valid C string.
    unsafe { f(c"%s".as_ptr(), msg.as_ptr()) };
}

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: u32 = 0;
    while i < b.len() {
        assert!(
            b[i].is_ascii_digit(),
            "CGJOB_SPANK_SLURM_VERSION_NUMBER is not a number"
        );
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_args(&v(&[])), Ok(None));
        assert_eq!(
            parse_args(&v(&["parent=site/jobs"])),
            Ok(Some(PathBuf::from("site/jobs")))
        );
        for bad in [
            &["parent="][..],
            &["parent"],
            &["prent=/x"],
            &["parent=/a", "x"],
        ] {
            assert!(parse_args(&v(bad))
                .unwrap_err()
                .contains("unknown plugin argument"));
        }
    }

    #[test]
    fn version_number() {
        assert_eq!(parse_u32("1443080"), 0x16_05_08);
        // Built for some 2x.yy Slurm, the loader's major.minor check needs a plausible number.
        assert!((0x14_00_00..0x40_00_00).contains(&SLURM_VERSION_NUMBER));
    }
}
