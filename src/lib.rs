//! cgjob: a Linux job containment supervisor.
//!
//! Each job runs in a cgroup v2 cgroup of its own; its processes are born inside it (clone3
//! `CLONE_INTO_CGROUP`), and when the job ends everything still inside — and every descendant
//! of cgjob that left — is found, reported and killed.
//!
//! Layout: `cgroup` and `process` are mechanism (cgroupfs, spawning, signals, /proc); `job` is
//! policy (supervision, escalation, leftovers, records); `commands` are thin subcommands;
//! `report` prints results, never through the log.

pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod job;
pub mod logging;
pub mod process;
pub mod report;
