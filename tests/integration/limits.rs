//! Resource limits on the real kernel: an OOM kill, a fork limit, a CPU quota, the limits gone
//! with the job, bad values, a missing controller. On a hybrid host (memory, pids, cpu and
//! cpuset on cgroup v1) the limits go through v1 cgroups beside the v2 job cgroup; on a pure v2
//! host into the job cgroup itself. The tests hold on either layout, and say which they saw.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

fn run_json(t: &TestJob, limits: &[&str], cmd: &[&str]) -> (std::process::Output, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(limits);
    args.push("--");
    args.extend_from_slice(cmd);
    let o = run_bounded(t.run_cmd(&args), LIMIT);
    let rec = record_of(&o);
    (o, rec)
}

/// `CGJOB_TEST_LIMITS_VIA` (`cgroup-v2` or `cgroup-v1`): where the host must put the limits
/// (set by the pure-v2 QEMU lane, tests/vm/run.sh). Unset: either version passes.
fn expected_via() -> Option<String> {
    std::env::var("CGJOB_TEST_LIMITS_VIA").ok()
}

/// The limits were applied through a cgroup version, and nothing of them is left: the job
/// cgroup and every v1 cgroup of the job removed.
fn assert_limits_gone(t: &TestJob, rec: &Value, v1_jobs: &[PathBuf]) {
    let via = rec["limits"]["applied_via"].as_str().unwrap();
    assert!(via == "cgroup-v1" || via == "cgroup-v2", "{rec}");
    eprintln!("applied via {}", rec["limits"]["applied_via"]);
    if let Some(want) = expected_via() {
        assert_eq!(via, want, "CGJOB_TEST_LIMITS_VIA: {rec}");
    }
    let listed: Vec<PathBuf> = rec["limits"]["v1_cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    if via == "cgroup-v1" {
        assert!(!listed.is_empty(), "{rec}");
        assert_eq!(rec["limits"]["v1_removed"], true, "{rec}");
    }
    for p in listed.iter().chain(v1_jobs) {
        assert!(!p.exists(), "v1 cgroup {} left behind", p.display());
    }
    t.assert_clean();
}

#[test]
fn a_memory_hog_over_memory_max_is_oom_killed_and_the_record_says_so() {
    let mut t = TestJob::new("lim-oom");
    let v1 = t.prepare_limits();
    // dd holds one 100 MiB buffer: bounded even if the limit were not applied.
    let (o, rec) = run_json(
        &t,
        &["--memory-max", "32M"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
    );
    let err = stderr_of(&o);
    assert_eq!(code(&o), 137, "{err}");
    assert_eq!(rec["oom_killed"], true, "{rec}");
    assert!(rec["usage"]["oom_kills"].as_u64().unwrap() >= 1, "{rec}");
    let peak = rec["usage"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 32 << 20 && peak > 16 << 20, "peak {peak}: {rec}");
    assert_eq!(rec["limits"]["memory_max"], 32u64 << 20);
    assert!(err.contains("killed by the OOM killer"), "{err}");
    assert_limits_gone(&t, &rec, &v1);
}

#[test]
fn a_fork_loop_under_pids_max_gets_eagain_and_the_job_ends_clean() {
    let mut t = TestJob::new("lim-pids");
    let v1 = t.prepare_limits();
    // Up to 40 children that sleep; the count of pids.max includes perl itself.
    let script = r#"my $n = 0; for (1..40) { my $p = fork; if (!defined $p) { print "fork failed: ", ($!{EAGAIN} ? "EAGAIN" : "$!"), "\n"; last } if ($p == 0) { sleep 60; exit 0 } $n++ } print "forked $n\n"; exit 0"#;
    let (o, rec) = run_json(&t, &["--pids-max", "20"], &["perl", "-e", script]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(out.contains("fork failed: EAGAIN"), "{out}");
    assert!(out.contains("forked 19"), "{out}");
    assert_eq!(rec["leftovers"].as_array().unwrap().len(), 19, "{rec}");
    assert_eq!(rec["limits"]["pids_max"], 20);
    assert_eq!(rec["oom_killed"], false);
    if let Some(hits) = rec["usage"]["pids_max_hits"].as_u64() {
        assert!(hits >= 1, "{rec}");
    }
    if let Some(peak) = rec["usage"]["pids_peak"].as_u64() {
        assert_eq!(peak, 20, "{rec}");
    }
    assert_limits_gone(&t, &rec, &v1);
}

#[test]
fn a_cpu_quota_of_half_a_cpu_is_observed() {
    let mut t = TestJob::new("lim-cpu");
    let v1 = t.prepare_limits();
    // Burn 0.6 s of CPU time (at most 15 s of wall time). Unlimited, one spinning thread gets
    // a whole CPU on an idle machine; under 0.5 CPU the kernel throttles it to half of each
    // 100 ms period, so it needs at least 1.2 s.
    let spin = "my $t = time; 1 while ((times)[0] + (times)[1] < 0.6 && time - $t < 15);";
    let (o, rec) = run_json(&t, &["--cpus", "0.5"], &["perl", "-e", spin]);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert_eq!(rec["limits"]["cpu_max"], "50000 100000");
    let used = rec["cpu"]["usage_usec"].as_f64().unwrap() / 1000.0;
    let wall = rec["duration_ms"].as_f64().unwrap();
    let ratio = used / wall;
    eprintln!(
        "cpu {used:.0} ms over {wall:.0} ms: {ratio:.3}; throttled {} times, {} us",
        rec["usage"]["cpu_nr_throttled"], rec["usage"]["cpu_throttled_usec"]
    );
    assert!(used >= 550.0, "the spinner did its work: {rec}");
    // The quota is a ceiling: a busy machine can only lower the share (an idle one gives
    // about 0.5 here, measured 0.49).
    assert!(ratio <= 0.6, "CPU share {ratio:.3} over the quota: {rec}");
    // And the kernel says it throttled the job (cpu.stat).
    assert!(
        rec["usage"]["cpu_nr_throttled"].as_u64().unwrap() >= 1,
        "{rec}"
    );
    assert!(
        rec["usage"]["cpu_throttled_usec"].as_u64().unwrap() > 0,
        "{rec}"
    );
    assert_limits_gone(&t, &rec, &v1);
}

#[test]
fn the_command_starts_inside_its_limit_cgroups_with_clone3_and_with_fork_join() {
    for method in ["clone3", "fork-join"] {
        let mut t = TestJob::new(&format!("lim-born-{method}"));
        let v1 = t.prepare_limits();
        let (o, rec) = run_json(
            &t,
            &[
                "--spawn",
                method,
                "--memory-max",
                "1G",
                "--pids-max",
                "100",
                "--cpus",
                "1.5",
                "--cpuset",
                "0",
            ],
            &[
                "bash",
                "-c",
                "cat /proc/self/cgroup; grep Cpus_allowed_list /proc/self/status",
            ],
        );
        assert_eq!(code(&o), 0, "{}", stderr_of(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.contains("Cpus_allowed_list:\t0\n"), "{out}");
        let rel = t.parent.strip_prefix(&t.root).unwrap().join("job");
        if rec["limits"]["applied_via"] == "cgroup-v1" {
            assert_eq!(rec["limits"]["v1_cgroups"].as_array().unwrap().len(), 4);
            for c in ["memory", "pids", "cpu", "cpuset"] {
                // `N:cpu,cpuacct:/path` where cpu and cpuacct share a hierarchy.
                let line = out
                    .lines()
                    .find(|l| l.split(':').nth(1).unwrap_or("").split(',').any(|x| x == c))
                    .unwrap_or_else(|| panic!("no {c} line: {out}"));
                assert!(
                    line.ends_with(&format!(":/{}", rel.display())),
                    "{method}: {c} in {line}"
                );
            }
        } else {
            // Pure v2: born into the job cgroup, which holds the limits.
            assert!(
                out.contains(&format!("0::/{}\n", rel.display())),
                "{method}: not in the job cgroup: {out}"
            );
        }
        assert_limits_gone(&t, &rec, &v1);
    }
}

/// Refused: `want`, one `cgjob: ` line containing `needle`, the command never ran, no cgroup
/// of either version left.
fn refused(t: &TestJob, v1: &[PathBuf], args: &[&str], want: i32, needle: &str) {
    let mut full = args.to_vec();
    full.extend_from_slice(&["--", "bash", "-c", "touch $TMPD/ran"]);
    let o = run_bounded(t.run_cmd(&full), LIMIT);
    let err = stderr_of(&o);
    assert_eq!(code(&o), want, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("cgjob: ") && err.contains(needle),
        "{needle:?} in {err}"
    );
    assert!(!t.path("ran").exists(), "the command must not run");
    assert!(!t.job_cgroup().exists(), "{args:?} left the job cgroup");
    for p in v1 {
        assert!(!p.exists(), "{args:?} left {}", p.display());
    }
}

#[test]
fn bad_limit_values_exit_2() {
    let mut t = TestJob::new("lim-usage");
    let v1 = t.prepare_limits();
    let cases: &[(&[&str], &str)] = &[
        (&["--memory-max", "12Q"], "invalid size"),
        (&["--memory-max=-1"], "invalid size"),
        (&["--memory-max", "1.5G"], "invalid size"),
        (&["--memory-high", "lots"], "invalid size"),
        (&["--memory-swap-max", ""], "invalid size"),
        (&["--pids-max", "0"], "invalid process count"),
        (&["--pids-max", "many"], "invalid process count"),
        (&["--cpus", "0"], "invalid CPU count"),
        (&["--cpus", "0.001"], "minimum"),
        (&["--cpus", "half"], "invalid CPU count"),
        (&["--cpu-max", "50000"], "QUOTA/PERIOD"),
        (&["--cpu-max", "50000/5000000"], "QUOTA/PERIOD"),
        (
            &["--cpus", "1", "--cpu-max", "50000/100000"],
            "cannot be used with",
        ),
        (&["--cpuset", "1-0"], "invalid CPU list"),
        (&["--cpuset", "a"], "invalid CPU list"),
        (&["--limits-via", "v3"], "v3"),
        (
            &["--containment", "subreaper", "--memory-max", "1G"],
            "limits need a cgroup",
        ),
    ];
    for (args, needle) in cases {
        refused(&t, &v1, args, 2, needle);
    }
}

#[test]
fn a_missing_controller_exits_125_naming_it() {
    let mut t = TestJob::new("lim-missing");
    let v1 = t.prepare_limits();
    let top = t.root.join("cgjob-test");
    let v2_memory = std::fs::read_to_string(top.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "memory");
    if let Some(want) = expected_via() {
        assert_eq!(
            v2_memory,
            want == "cgroup-v2",
            "CGJOB_TEST_LIMITS_VIA={want}, memory in v2 is {v2_memory}"
        );
    }
    if v2_memory {
        // Pure v2 with memory delegated: v1 is what is missing.
        refused(
            &t,
            &v1,
            &["--limits-via", "cgroup-v1", "--memory-max", "32M"],
            125,
            "memory controller is not available",
        );
        eprintln!("pure v2 host: tested the missing-v1 path");
    } else {
        // Hybrid: the job parent has no memory controller in v2. `--limits-via cgroup-v2`
        // turns off the v1 fallback, which is how a pure v2 host without it behaves.
        refused(
            &t,
            &v1,
            &["--limits-via", "cgroup-v2", "--memory-max", "32M"],
            125,
            "memory controller is not available",
        );
        // And what v1 cannot express.
        refused(
            &t,
            &v1,
            &["--memory-high", "32M"],
            125,
            "--memory-high has no cgroup v1 counterpart",
        );
        refused(
            &t,
            &v1,
            &["--memory-swap-max", "0"],
            125,
            "needs a --memory-max",
        );
    }
}

/// A job with limits whose supervisor is SIGKILLed: its guardian removes the v1 cgroups with
/// the v2 one; when the guardian is killed too, `cgjob gc` does.
#[test]
fn limit_cgroups_go_when_the_supervisor_is_killed_by_its_guardian_or_by_gc() {
    for guardian_too in [false, true] {
        let mut t = TestJob::new(if guardian_too { "lim-gc" } else { "lim-guard" });
        let v1 = t.prepare_limits();
        let mut sup = t
            .run_cmd(&[
                "--memory-max",
                "64M",
                "--pids-max",
                "50",
                "--",
                "sleep",
                "1051",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let job = t.job_cgroup();
        // Started, and the supervisor has recorded itself as the job's owner (just after the
        // start): a cgroup without that record is not cgjob's, and gc leaves it alone.
        t.wait_for("the job to start", LIMIT, || {
            std::fs::read_to_string(job.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
                && has_owner_record(&job)
        });
        for p in &v1 {
            if p.ends_with("job") && !p.to_string_lossy().contains("cpu") {
                assert!(p.is_dir(), "v1 cgroup {} not made", p.display());
            }
        }
        if guardian_too {
            kill_guardian(&sup, LIMIT);
        }
        sup.kill().unwrap();
        sup.wait().unwrap();
        if guardian_too {
            assert!(job.is_dir(), "nobody removed it yet");
            let mut gc = t.cgjob();
            gc.args(["gc", "--parent"]).arg(&t.parent);
            let o = run_bounded(gc, LIMIT);
            assert_eq!(code(&o), 0, "{}", stderr_of(&o));
        }
        let end = std::time::Instant::now() + LIMIT;
        while job.exists() {
            let state = |f: &str| std::fs::read_to_string(job.join(f)).unwrap_or_default();
            assert!(
                std::time::Instant::now() < end,
                "job cgroup left (guardian killed too: {guardian_too}): procs {:?} events {:?}",
                state("cgroup.procs"),
                state("cgroup.events")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for p in &v1 {
            if p.ends_with("job") {
                t.wait_for("its v1 cgroups to go", LIMIT, || !p.exists());
            }
        }
        t.assert_clean();
    }
}

/// `cgjob job …` without any daemon (the VM lane has none).
fn job(t: &TestJob, args: &[&str]) -> std::process::Output {
    run_bounded(crate::daemon::job_cmd(t, None, args), LIMIT)
}

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&o.stdout),
            stderr_of(o)
        )
    })
}

/// A scheduler's job made with limits (`cgjob job create`): every process that joins it
/// (`cgjob job exec`) is under them — on a hybrid host through v1 cgroups it joins beside the
/// v2 one — status shows what it uses, the cleanup record what it used, and nothing of the
/// limits is left after it.
#[test]
fn a_scheduler_job_gets_its_limits_and_every_process_that_joins_it_too() {
    let mut t = TestJob::new("lim-job");
    let v1 = t.prepare_limits_for(&["job-lim"]);
    let o = job(
        &t,
        &[
            "create",
            "--job-id",
            "lim",
            "--memory-max",
            "32M",
            "--pids-max",
            "20",
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let created = json_of(&o);
    let via = created["limits"]["applied_via"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("applied via {:?}", via);
    if let Some(want) = expected_via() {
        assert_eq!(via, want, "{created}");
    }
    assert_eq!(created["limits"]["memory_max"], 32u64 << 20);

    // A memory hog that joins the job is OOM-killed at the job's limit.
    let o = job(
        &t,
        &[
            "exec",
            "--job-id",
            "lim",
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=100M",
            "count=1",
        ],
    );
    assert_eq!(code(&o), 137, "{}", stderr_of(&o));
    // A fork loop that joins it meets its process limit.
    // (The children stay, in the job, without the output: `cgjob job exec` is not a
    // supervisor and does not wait for them.)
    let script = r#"$| = 1; my $n = 0; for (1..40) { my $p = fork; if (!defined $p) { print "fork failed: ", ($!{EAGAIN} ? "EAGAIN" : "$!"), "\n"; last } if ($p == 0) { close STDOUT; close STDERR; sleep 60; exit 0 } $n++ } print "forked $n\n"; exit 0"#;
    let o = job(&t, &["exec", "--job-id", "lim", "--", "perl", "-e", script]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    assert!(out.contains("fork failed: EAGAIN"), "{out}");
    assert!(out.contains("forked 19"), "{out}");

    // Status: what the job holds and has used.
    let o = job(&t, &["status", "--job-id", "lim", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let st = json_of(&o);
    let u = &st["usage"];
    assert_eq!(st["processes"].as_array().unwrap().len(), 19, "{st}");
    assert_eq!(u["pids"], 19, "{st}");
    assert!(u["oom_kills"].as_u64().unwrap() >= 1, "{st}");
    let peak = u["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 32 << 20 && peak > 16 << 20, "peak {peak}: {st}");
    assert!(u["memory_bytes"].as_u64().unwrap() > 0, "{st}");
    let o = job(&t, &["status", "--job-id", "lim"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("usage memory "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Cleanup: the record says what was used; the job's cgroups of both versions are gone.
    let o = job(
        &t,
        &["cleanup", "--job-id", "lim", "--grace", "0", "--json"],
    );
    assert_eq!(code(&o), 0, "{}", stderr_of(&o));
    let rec = json_of(&o);
    assert_eq!(rec["cgroup_removed"], true, "{rec}");
    assert_eq!(rec["leftovers"].as_array().unwrap().len(), 19);
    assert!(rec["usage"]["oom_kills"].as_u64().unwrap() >= 1, "{rec}");
    assert!(!t.parent.join("job-lim").exists());
    for p in &v1 {
        assert!(!p.exists(), "v1 cgroup {} left behind", p.display());
    }
    assert!(t.survivors().is_empty(), "{:?}", t.survivors());
}

/// `cgjob job create` with limits it cannot have: 125 naming the controller, or 2 for a bad
/// value; no cgroup of either version is made.
#[test]
fn a_scheduler_job_without_its_controller_or_with_a_bad_value_is_not_made() {
    let mut t = TestJob::new("lim-jobbad");
    let v1 = t.prepare_limits_for(&["job-x"]);
    let v2_memory = std::fs::read_to_string(t.root.join("cgjob-test/cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "memory");
    // The version that lacks memory here.
    let missing = if v2_memory { "cgroup-v1" } else { "cgroup-v2" };
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--limits-via", missing, "--memory-max", "32M"],
            125,
            "memory controller is not available",
        ),
        (&["--memory-max", "lots"], 2, "invalid size"),
        (&["--pids-max", "0"], 2, "invalid process count"),
        (&["--cpus", "half"], 2, "invalid CPU count"),
    ];
    for (args, want, needle) in cases {
        let mut full = vec!["create", "--job-id", "x"];
        full.extend_from_slice(args);
        let o = job(&t, &full);
        let err = stderr_of(&o);
        assert_eq!(code(&o), *want, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("cgjob: ") && err.contains(needle),
            "{needle:?} in {err}"
        );
        assert!(
            !t.parent.join("job-x").exists(),
            "{args:?} left the job cgroup"
        );
        for p in &v1 {
            assert!(!p.exists(), "{args:?} left {}", p.display());
        }
    }
}
