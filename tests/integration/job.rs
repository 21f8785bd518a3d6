//! `cgjob job …`: the scheduler job commands, on the real kernel.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

fn job(t: &TestJob, args: &[&str]) -> Command {
    t.job_cmd(args)
}

fn cg(t: &TestJob, id: &str) -> std::path::PathBuf {
    t.parent.join(format!("job-{id}"))
}

/// Start `sleep` directly in a cgroup (joined before exec), carrying the test's marker.
fn sleeper_in(t: &TestJob, cgroup: &Path, secs: &str, env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new("sleep");
    c.arg(secs).env(MARKER_VAR, &t.marker).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    join_before_exec(&mut c, Some(cgroup));
    c.spawn().unwrap()
}

#[test]
fn create_is_idempotent_and_reports_stale_processes() {
    let t = TestJob::new("jcreate");
    let o = run_bounded(
        job(
            &t,
            &[
                "create",
                "--job-id",
                "101",
                "--scheduler",
                "slurm",
                "--json",
            ],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["created"], true);
    assert!(cg(&t, "101").is_dir());
    // Again, empty: nothing happens.
    let o = run_bounded(job(&t, &["create", "--job-id", "101", "--json"]), LIMIT);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            code(&o),
            v["created"].clone(),
            v["stale"].as_array().unwrap().len()
        ),
        (0, false.into(), 0)
    );
    // An earlier job with the same id left a process: the prolog kills and reports it.
    let mut old = sleeper_in(&t, &cg(&t, "101"), "1101", &[]);
    let o = run_bounded(job(&t, &["create", "--job-id", "101", "--json"]), LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stale"][0]["cmdline"][1], "1101", "{v}");
    assert!(stderr_of(&o).contains("stale: pid"), "{}", stderr_of(&o));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(old.wait().unwrap().signal(), Some(9));
    assert!(procs(&cg(&t, "101")).is_empty() && cg(&t, "101").is_dir());
}

#[test]
fn bad_job_ids_are_refused_and_nothing_is_made() {
    let t = TestJob::new("jbadid");
    let long = "7".repeat(129);
    for bad in ["../x", "a/b", "", ".", "-1", "1;2", long.as_str()] {
        let o = run_bounded(job(&t, &["create", "--job-id", bad]), LIMIT);
        assert_eq!(code(&o), 2, "{bad:?}: {}", stderr_of(&o));
        assert_eq!(stderr_of(&o).lines().count(), 1, "{bad:?}");
    }
    // From the scheduler's variable too, naming it.
    let mut c = job(&t, &["create"]);
    c.env("SLURM_JOB_ID", "../../etc");
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 2);
    assert!(stderr_of(&o).contains("SLURM_JOB_ID"), "{}", stderr_of(&o));
    // No id at all.
    let mut c = job(&t, &["create"]);
    c.env_remove("SLURM_JOB_ID")
        .env_remove("JOB_ID")
        .env_remove("PBS_JOBID");
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 2);
    assert!(stderr_of(&o).contains("--job-id"));
    let left: Vec<_> = std::fs::read_dir(&t.parent)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn job_id_from_the_scheduler_and_flag_wins() {
    let t = TestJob::new("jenv");
    let mut c = job(&t, &["create"]);
    c.env("SLURM_JOB_ID", "202");
    assert_eq!(code(&run_bounded(c, LIMIT)), 0);
    let mut c = job(&t, &["create", "--job-id", "203"]);
    c.env("SLURM_JOB_ID", "202").env("JOB_ID", "204");
    assert_eq!(code(&run_bounded(c, LIMIT)), 0);
    assert!(cg(&t, "202").is_dir() && cg(&t, "203").is_dir() && !cg(&t, "204").exists());
}

#[test]
fn exec_runs_the_command_inside_and_attach_moves_pids_in() {
    let t = TestJob::new("jexec");
    // Without the cgroup: a clear error, nothing run.
    let o = run_bounded(job(&t, &["exec", "--job-id", "301", "--", "true"]), LIMIT);
    assert_eq!(code(&o), 125);
    assert!(
        stderr_of(&o).contains("cgjob job create"),
        "{}",
        stderr_of(&o)
    );
    let o = run_bounded(
        job(
            &t,
            &[
                "exec",
                "--job-id",
                "301",
                "--create",
                "--",
                "cat",
                "/proc/self/cgroup",
            ],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let rel = cg(&t, "301")
        .strip_prefix(&t.root)
        .unwrap()
        .display()
        .to_string();
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("0::/{rel}")));
    // The exit status is the command's own (cgjob became it).
    assert_eq!(
        code(&run_bounded(
            job(&t, &["exec", "--job-id", "301", "--", "sh", "-c", "exit 7"]),
            LIMIT
        )),
        7
    );
    assert_eq!(
        code(&run_bounded(
            job(&t, &["exec", "--job-id", "301", "--", "no-such-cmd-xyz"]),
            LIMIT
        )),
        127
    );

    let mut s = Command::new("sleep");
    s.arg("1301").env(MARKER_VAR, &t.marker);
    let mut s = s.spawn().unwrap();
    let o = run_bounded(
        job(
            &t,
            &["attach", "--job-id", "301", "--pid", &s.id().to_string()],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(procs(&cg(&t, "301")).contains(&(s.id() as i32)));
    let o = run_bounded(
        job(&t, &["attach", "--job-id", "301", "--pid", "999999999"]),
        LIMIT,
    );
    assert_eq!(code(&o), 125);
    assert!(stderr_of(&o).contains("999999999"));
    let o = run_bounded(job(&t, &["status", "--job-id", "301", "--json"]), LIMIT);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["processes"][0]["pid"], s.id());
    assert_eq!(v["owner"]["job_id"], "301");
    let o = run_bounded(job(&t, &["list", "--json"]), LIMIT);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["job_id"], "301");
    assert_eq!(v[0]["processes"], 1);
    let o = run_bounded(
        job(&t, &["signal", "--job-id", "301", "--signal", "KILL"]),
        LIMIT,
    );
    assert_eq!(code(&o), 0);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(s.wait().unwrap().signal(), Some(9));
}

#[test]
fn cleanup_kills_reports_sweeps_outside_and_removes() {
    let t = TestJob::new("jclean");
    assert_eq!(
        code(&run_bounded(
            job(
                &t,
                &[
                    "create",
                    "--job-id",
                    "401",
                    "--scheduler",
                    "slurm",
                    "--uid",
                    "0"
                ]
            ),
            LIMIT
        )),
        0
    );
    // Inside: one that leaves on SIGTERM, one that ignores it.
    let script = t.script(
        "j.sh",
        "exec >/dev/null 2>&1; sleep 1401 & bash -c 'trap \"\" TERM; sleep 1402' & sleep 0.2; exit 0",
    );
    assert_eq!(
        code(&run_bounded(
            job(&t, &["exec", "--job-id", "401", "--", "bash", &script]),
            LIMIT
        )),
        0
    );
    // Outside the cgroup but the job's: its uid and SLURM_JOB_ID=401 in its environment.
    let mut outside = Command::new("sleep");
    outside
        .arg("1403")
        .env(MARKER_VAR, &t.marker)
        .env("SLURM_JOB_ID", "401");
    let mut outside = outside.spawn().unwrap();
    // Not the job's: another job id. Must survive.
    let mut other = Command::new("sleep");
    other.arg("1404").env("SLURM_JOB_ID", "4010");
    let mut other = other.spawn().unwrap();

    let o = run_bounded(
        job(
            &t,
            &[
                "cleanup", "--job-id", "401", "--sweep", "--grace", "0.5s", "--json",
            ],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = stderr_of(&o);
    assert!(err.contains("rogue process(es) found for job 401"), "{err}");
    assert!(
        err.contains("rogue: sleep 1401") && err.contains("rogue: sleep 1403"),
        "{err}"
    );
    let by_cmd = |c: &str| {
        v["leftovers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["cmdline"].to_string().contains(c))
            .cloned()
            .unwrap_or_else(|| panic!("{c} not in {v}"))
    };
    assert_eq!(by_cmd("1401")["ended_by"], "exited-during-grace");
    assert_eq!(by_cmd("1403")["in_cgroup"], false);
    assert_eq!(by_cmd("1403")["ended_by"], "exited-during-grace");
    assert!(
        v["leftovers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ended_by"] == "killed"),
        "{v}"
    );
    assert_eq!(v["cgroup_removed"], true);
    assert!(!cg(&t, "401").exists());
    outside.wait().unwrap();
    assert!(
        other.try_wait().unwrap().is_none(),
        "another job's process was touched"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
    // A second cleanup: nothing to do, clean.
    assert_eq!(
        code(&run_bounded(
            job(&t, &["cleanup", "--job-id", "401"]),
            LIMIT
        )),
        0
    );
}

#[test]
fn cleanup_of_a_job_that_forks_while_being_killed() {
    let t = TestJob::new("jchase");
    assert_eq!(
        code(&run_bounded(job(&t, &["create", "--job-id", "501"]), LIMIT)),
        0
    );
    let script = t.script(
        "j.sh",
        "exec >/dev/null 2>&1\npython3 -c '\nimport os, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    if os.fork() != 0:\n        os._exit(0)\n' &\nbash -c 'trap \"\" TERM; while :; do (trap \"\" TERM; sleep 0.01) & wait; done' &\nsleep 0.3",
    );
    assert_eq!(
        code(&run_bounded(
            job(&t, &["exec", "--job-id", "501", "--", "bash", &script]),
            LIMIT
        )),
        0
    );
    let start = Instant::now();
    let o = run_bounded(
        job(
            &t,
            &["cleanup", "--job-id", "501", "--grace", "0.3s", "--json"],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(!cg(&t, "501").exists());
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
}

#[test]
fn cleanup_reports_unkillable_with_its_own_status() {
    let mut t = TestJob::new("junkill");
    let frz = t.v1_freezer();
    assert_eq!(
        code(&run_bounded(job(&t, &["create", "--job-id", "601"]), LIMIT)),
        0
    );
    let mut s = sleeper_in(&t, &cg(&t, "601"), "1601", &[]);
    std::fs::write(frz.join("cgroup.procs"), s.id().to_string()).unwrap();
    std::fs::write(frz.join("freezer.state"), "FROZEN").unwrap();
    let o = run_bounded(
        job(
            &t,
            &[
                "cleanup",
                "--job-id",
                "601",
                "--grace",
                "0.2s",
                "--kill-timeout",
                "1s",
            ],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 123, "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("left in place"), "{}", stderr_of(&o));
    assert!(cg(&t, "601").is_dir());
    std::fs::write(frz.join("freezer.state"), "THAWED").unwrap();
    let o = run_bounded(job(&t, &["cleanup", "--job-id", "601"]), LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(!cg(&t, "601").exists());
    s.wait().unwrap();
}

#[test]
fn gc_leaves_a_fresh_empty_scheduler_job_alone() {
    let t = TestJob::new("jgc");
    assert_eq!(
        code(&run_bounded(job(&t, &["create", "--job-id", "701"]), LIMIT)),
        0
    );
    let mut c = t.cgjob();
    c.args(["gc", "--parent"]).arg(&t.parent);
    let o = run_bounded(c, LIMIT);
    assert_eq!(code(&o), 0);
    assert!(
        cg(&t, "701").is_dir(),
        "a prolog's cgroup waiting for its tasks is not stale"
    );
}

/// More pids than fit in one page of `cgroup.procs`: every one must be found and asked to
/// leave (a reader that stops at a short read saw only the first ~700).
#[test]
fn cleanup_of_a_large_job_terms_every_process() {
    let mut t = TestJob::new("jlarge");
    let net = pids_net(&mut t, 1400);
    job_of_sleeps(&t, "801", 1200, net.as_deref());
    let o = run_bounded(
        job(
            &t,
            &["cleanup", "--job-id", "801", "--grace", "20s", "--json"],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = v["leftovers"].as_array().unwrap();
    assert_eq!(l.len(), 1200);
    assert!(
        l.iter().all(|x| x["ended_by"] == "exited-during-grace"),
        "every one got SIGTERM"
    );
    assert!(
        v["duration_ms"].as_f64().unwrap() < 15_000.0,
        "no wait for the grace period"
    );
    assert!(t.survivors().is_empty());
}

/// Grid Engine's shape: the prolog moves its parent (the shepherd) into the job cgroup, the
/// shepherd starts the job (born inside), then runs the epilog, which must spare the
/// shepherd and itself and kill the rest. Uses the scripts in contrib/sge.
#[test]
fn sge_style_shepherd_survives_its_epilog() {
    let t = TestJob::new("jsge");
    // The scripts as a site installs them: a copy whose common.sh names this build and the
    // test's parent (their settings are lines of the file, never the job's environment).
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/sge"));
    let sge = t.path("sge");
    std::fs::create_dir(&sge).unwrap();
    for f in ["common.sh", "prolog.sh", "epilog.sh"] {
        let text = std::fs::read_to_string(src.join(f)).unwrap();
        let text = text
            .replace(
                "\nCGJOB=/usr/local/bin/cgjob\n",
                &format!("\nCGJOB={}\n", env!("CARGO_BIN_EXE_cgjob")),
            )
            .replace(
                "\nCGJOB_PARENT_DIR=\"\"\n",
                &format!("\nCGJOB_PARENT_DIR={}\n", t.parent.display()),
            );
        std::fs::write(sge.join(f), text).unwrap();
    }
    let sge = sge.display();
    let shepherd = t.script(
        "shepherd.sh",
        &format!(
            "exec >/dev/null 2>>$TMPD/err\n\
             /bin/sh {sge}/prolog.sh || exit 9\n\
             setsid bash -c 'sleep 1901 &' & sleep 1902 &\n\
             cat /proc/self/cgroup > $TMPD/job-cgroup\n\
             sleep 0.3\n\
             /bin/sh {sge}/epilog.sh\n\
             echo alive > $TMPD/alive\n"
        ),
    );
    let mut c = Command::new("bash");
    c.arg(&shepherd)
        .env(MARKER_VAR, &t.marker)
        .env("TMPD", t.dir.path())
        // What a job's user could put in its environment is ignored.
        .env("CGJOB", "/bin/false")
        .env("CGJOB_PARENT", t.root.join("elsewhere"))
        .env("CGJOB_SOCKET", t.path("fake-daemon.sock"))
        .env("JOB_ID", "1900")
        .env("USER", "root")
        .stdin(Stdio::null());
    let o = run_bounded(c, LIMIT);
    let err = std::fs::read_to_string(t.path("err")).unwrap_or_default();
    assert_eq!(code(&o), 0, "{err}");
    assert!(
        t.path("alive").exists(),
        "the shepherd survived its epilog: {err}"
    );
    let rel = cg(&t, "1900")
        .strip_prefix(&t.root)
        .unwrap()
        .display()
        .to_string();
    let job_cg = std::fs::read_to_string(t.path("job-cgroup")).unwrap();
    assert!(
        job_cg.contains(&format!("0::/{rel}")),
        "the job ran in its cgroup: {job_cg}"
    );
    assert!(
        err.contains("rogue: sleep 1901") && err.contains("rogue: sleep 1902"),
        "{err}"
    );
    assert!(!cg(&t, "1900").exists());
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
}

/// Run with few file descriptors — the usual soft limit is 1024, and a pidfd per process is
/// needed — a cleanup still records every process of the job: it raises its soft limit to the
/// hard one, and past that records the rest without a pidfd (killed with the cgroup).
#[test]
fn cleanup_with_few_descriptors_still_records_every_process() {
    let mut t = TestJob::new("jnofile");
    let net = pids_net(&mut t, 500);
    for (soft, hard) in [(64u64, 4096u64), (64, 64)] {
        job_of_sleeps(&t, "901", 300, net.as_deref());
        let mut c = job(
            &t,
            &["cleanup", "--job-id", "901", "--grace", "5s", "--json"],
        );
        limit_nofile_before_exec(&mut c, soft, hard);
        let o = run_bounded(c, LIMIT);
        assert_eq!(code(&o), 0, "nofile {soft}:{hard}: {}", stderr_of(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            v["leftovers"].as_array().unwrap().len(),
            300,
            "nofile {soft}:{hard}: every process recorded"
        );
        assert_eq!(v["cgroup_removed"], true);
        if hard == 64 {
            assert!(
                stderr_of(&o).contains("out of file descriptors"),
                "{}",
                stderr_of(&o)
            );
        }
    }
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
}

/// Make job `id` and start `n` sleeps in it (through `job exec`, under the pids limit `net`);
/// returns once all of them are there.
fn job_of_sleeps(t: &TestJob, id: &str, n: usize, net: Option<&Path>) {
    assert_eq!(
        code(&run_bounded(job(t, &["create", "--job-id", id]), LIMIT)),
        0
    );
    let script = t.script(
        &format!("j{id}.sh"),
        &format!("exec >/dev/null 2>&1; for i in $(seq {n}); do sleep 1{id} & done"),
    );
    let mut c = job(t, &["exec", "--job-id", id, "--", "bash", &script]);
    join_before_exec(&mut c, net);
    assert_eq!(code(&run_bounded(c, LIMIT)), 0);
    t.wait_for(&format!("{n} sleeps"), Duration::from_secs(30), || {
        sleeps(&cg(t, id)) == n
    });
}

/// The `sleep` processes in a cgroup (the script that starts them may still be there).
fn sleeps(cg: &Path) -> usize {
    procs(cg)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .count()
}

/// `cgjob job exec` ignores SIGPIPE for itself, but the command it becomes gets what cgjob was
/// started with (here the default), or a `yes | head` in it would not end by SIGPIPE.
#[test]
fn exec_gives_the_command_the_sigpipe_cgjob_was_started_with() {
    let t = TestJob::new("jsigpipe");
    let o = run_bounded(
        job(
            &t,
            &[
                "exec",
                "--create",
                "--job-id",
                "sp",
                "--",
                "grep",
                "SigIgn",
                "/proc/self/status",
            ],
        ),
        LIMIT,
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let mask = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        mask & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored in the command: {out}"
    );
    let o = run_bounded(job(&t, &["cleanup", "--job-id", "sp"]), LIMIT);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
}
