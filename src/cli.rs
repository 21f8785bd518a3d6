//! The command line, as clap derive types only. Doc comments are the `--help` text; values are
//! parsed at the edge (durations, signals, names) so that bad input never gets further.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum, ValueHint};

use crate::cgroup::limits::{CpuMax, Limit};
use crate::config::{self, ForwardTo, JobName};

/// Run jobs in cgroups of their own, and leave nothing behind.
///
/// Every process a job starts is born in the job's cgroup v2 cgroup; when the job ends, is
/// cancelled or times out, everything still in it is found, reported and killed.
#[derive(Debug, Parser)]
#[command(
    name = "cgjob",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output on stderr: -v info, -vv debug (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CGJOB_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new cgroup and return when no process of it is left.
    ///
    /// Exit status: the command's own; 128+N if it died of signal N; 124 on --timeout;
    /// 123 if processes could not be killed (cgroup left in place); 125 if cgjob failed;
    /// 126 if the command cannot be executed; 127 if it is not found; 2 on bad usage.
    Run(RunArgs),
    /// Show what this host offers for containing jobs, and which containment `cgjob run`
    /// would use here, with the reasons.
    ///
    /// Changes nothing: no cgroup is made, no process started.
    ///
    /// Exit status: 0.
    Doctor(DoctorArgs),
    /// Remove stale job cgroups: those whose supervisor is gone (their processes are killed
    /// and reported first).
    ///
    /// Exit status: 0 when every stale job cgroup was removed; 123 when one could not be
    /// emptied; 125 on failure.
    Gc(GcArgs),
    /// Batch-scheduler jobs (Slurm, Grid Engine, PBS), keyed by job id: prolog, task
    /// placement, status, epilog.
    #[command(subcommand)]
    Job(JobCommand),
    /// The node daemon (root): owns the job cgroups under its parent and serves job
    /// operations on a Unix socket (JSON lines); stopping it never kills jobs.
    ///
    /// Exit status: 0 after SIGTERM or SIGINT; 125 if it cannot start.
    Daemon(crate::commands::daemon::DaemonArgs),
    /// Print a shell completion script for cgjob on stdout.
    ///
    /// For example: `cgjob completions bash > /etc/bash_completion.d/cgjob`.
    ///
    /// Exit status: 0; 2 on an unknown shell; 125 if stdout cannot be written.
    Completions(CompletionsArgs),
    /// Print cgjob's manual page (roff) on stdout.
    ///
    /// Without COMMAND, the top-level page cgjob(1); with one, that subcommand's page (e.g.
    /// cgjob-run(1)). Read it with `cgjob man | man -l -`, or install it with
    /// `cgjob man > /usr/local/share/man/man1/cgjob.1`.
    ///
    /// Exit status: 0; 2 on an unknown COMMAND; 125 if stdout cannot be written.
    Man(ManArgs),
}

/// Where job cgroups live.
#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// The cgroup2 directory to use as root, instead of the cgroup2 mount found in
    /// /proc/self/mountinfo.
    #[arg(long, value_name = "DIR", env = "CGJOB_CGROUP_ROOT", value_hint = ValueHint::DirPath)]
    pub cgroup_root: Option<PathBuf>,

    /// Parent cgroup of job cgroups: absolute, or relative to the cgroup2 root
    /// [default: <root>/cgjob; for `run`, `gc` and `doctor` by a user other than root,
    /// <the delegated cgroup cgjob runs in>/cgjob].
    #[arg(long, value_name = "CGROUP", env = "CGJOB_PARENT", value_hint = ValueHint::DirPath)]
    pub parent: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(override_usage = "cgjob run [OPTIONS] -- <CMD> [ARGS]...")]
pub struct RunArgs {
    #[command(flatten)]
    pub place: PlaceArgs,

    /// Name of the job cgroup (letters, digits, '.', '_', '-'; at most 64) [default: generated].
    /// An existing cgroup of that name is an error.
    #[arg(long, value_name = "NAME", value_parser = JobName::parse, env = "CGJOB_NAME")]
    pub name: Option<JobName>,

    /// Send the timeout signal to the command after DUR (e.g. 30, 1.5, 10s, 1m30s; 0 = none).
    #[arg(long, value_name = "DUR", value_parser = config::parse_duration)]
    pub timeout: Option<Duration>,

    /// Signal sent to the command when the timeout fires: a name (TERM, SIGTERM) or a number
    /// (15).
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    pub timeout_signal: i32,

    /// After the timeout signal, wait DUR, then kill the whole job.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = config::parse_duration)]
    pub kill_after: Duration,

    /// What to do with processes left when the command exits.
    #[arg(long, value_enum, default_value_t = LeftoversArg::Term)]
    pub leftovers: LeftoversArg,

    /// Wait DUR between SIGTERM to leftovers and killing them.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = config::parse_duration)]
    pub grace: Duration,

    /// How to kill the job's processes.
    #[arg(long, value_enum, default_value_t = KillMethodArg::Auto)]
    pub kill_method: KillMethodArg,

    /// After the first kill, how long to wait for the cgroup to empty before reporting the
    /// rest as unkillable.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = config::parse_duration)]
    pub kill_timeout: Duration,

    /// Where signals sent to cgjob go.
    #[arg(long, value_enum, default_value_t = ForwardTo::Main)]
    pub forward_to: ForwardTo,

    /// How to contain the job. auto: the strongest this host allows — a cgroup of its own;
    /// without one, cgjob's PID namespace when cgjob is its PID 1; else cgjob's process tree,
    /// with a warning. The result record says which (`containment`); `cgjob doctor` says why.
    #[arg(long, value_enum, default_value_t = ContainmentArg::Auto, env = "CGJOB_CONTAINMENT")]
    pub containment: ContainmentArg,

    /// Refuse to run the job without a cgroup of its own (status 125, nothing started)
    /// rather than fall back to weaker containment.
    /// (The variable takes 1/0, true/false, yes/no, on/off.)
    #[arg(
        long,
        env = "CGJOB_REQUIRE_CGROUP",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub require_cgroup: bool,

    /// Write the job's result record (JSON) to FILE.
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub report: Option<PathBuf>,

    /// Print the job's result record as one JSON line on stderr.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// How the command gets into its cgroup (for testing the fallback).
    #[arg(long, value_enum, default_value_t = SpawnArg::Clone3, hide = true)]
    pub spawn: SpawnArg,

    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "CMD",
        value_hint = ValueHint::CommandWithArguments
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeftoversArg {
    /// SIGTERM, wait --grace, kill.
    Term,
    /// Let them exit on their own: forever without --timeout, else until it fires (then as
    /// `term`). SIGTERM, SIGINT, SIGHUP or SIGQUIT to cgjob end the wait.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainmentArg {
    /// The strongest available: cgroup-v2, else pid-namespace, else subreaper.
    Auto,
    /// A cgroup v2 cgroup of its own (as root under <root>/cgjob; otherwise in the delegated
    /// cgroup cgjob runs in, or --parent).
    #[value(name = "cgroup-v2")]
    CgroupV2,
    /// cgjob is PID 1 of a PID namespace (a container): at the end, every other process in
    /// it is killed.
    PidNamespace,
    /// cgjob's descendants: it is their subreaper, and at the end kills its whole process
    /// tree, again and again until none is left. Weaker: a process started through another
    /// supervisor is out of reach.
    Subreaper,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KillMethodArg {
    /// cgroup.kill where the kernel has it, else freeze.
    Auto,
    /// Write 1 to cgroup.kill (Linux 5.14+): the kernel kills the whole subtree.
    CgroupKill,
    /// Freeze the cgroup, SIGKILL every process, thaw (Linux 5.2+).
    Freeze,
}

/// Resource limits of a job, set in its cgroup before the command starts.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Memory limit: bytes, or with a suffix (512K, 512M, 2G), or max. Over it the OOM killer
    /// kills in the job (memory.max; v1 memory.limit_in_bytes).
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    pub memory_max: Option<Limit>,

    /// Memory throttling threshold (memory.high; cgroup v2 only).
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    pub memory_high: Option<Limit>,

    /// Swap limit (memory.swap.max; on v1, memory.memsw.limit_in_bytes = --memory-max + this).
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    pub memory_swap_max: Option<Limit>,

    /// Most processes and threads the job may have at once; forks beyond fail with EAGAIN
    /// (pids.max).
    #[arg(long, value_name = "N", value_parser = config::parse_pids_max)]
    pub pids_max: Option<Limit>,

    /// CPU quota in CPUs, e.g. 0.5 or 1.5 (cpu.max "150000 100000"; v1 cpu.cfs_quota_us).
    #[arg(long, value_name = "CPUS", value_parser = config::parse_cpus, conflicts_with = "cpu_max")]
    pub cpus: Option<CpuMax>,

    /// CPU quota as QUOTA/PERIOD in microseconds, e.g. 50000/100000.
    #[arg(long, value_name = "QUOTA/PERIOD", value_parser = config::parse_cpu_max)]
    pub cpu_max: Option<CpuMax>,

    /// CPUs the job may run on, e.g. 0-1 or 0,2 (cpuset.cpus).
    #[arg(long, value_name = "LIST", value_parser = config::parse_cpuset)]
    pub cpuset: Option<String>,

    /// Which cgroup version carries the limits. auto: cgroup v2 when the job parent has the
    /// controllers, else the host's cgroup v1 hierarchies (hybrid hosts); the job is contained
    /// and killed through cgroup v2 either way.
    #[arg(long, value_enum, default_value_t = LimitsViaArg::Auto, env = "CGJOB_LIMITS_VIA")]
    pub limits_via: LimitsViaArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LimitsViaArg {
    Auto,
    #[value(name = "cgroup-v2")]
    CgroupV2,
    #[value(name = "cgroup-v1")]
    CgroupV1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpawnArg {
    Clone3,
    ForkJoin,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub place: PlaceArgs,

    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub place: PlaceArgs,

    /// Print the findings as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The subcommand whose page to print [default: the top-level page].
    #[arg(value_name = "COMMAND", value_parser = ["run", "doctor", "gc", "job", "daemon", "completions", "man"])]
    pub command: Option<String>,
}

fn parse_signal(s: &str) -> Result<i32, String> {
    crate::process::signals::parse_signal(s).map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `cgjob man COMMAND` lists the subcommands by hand (clap cannot derive the list from the
    /// enum it is part of): keep it in step.
    #[test]
    fn man_knows_every_subcommand() {
        let cmd = Cli::command();
        let subs: Vec<&str> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name())
            .collect();
        let man = cmd.find_subcommand("man").unwrap();
        let arg = man
            .get_arguments()
            .find(|a| a.get_id() == "command")
            .unwrap();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(values, subs);
    }
}

/// Which job, and where its cgroup lives.
#[derive(Debug, Args)]
pub struct JobTarget {
    #[command(flatten)]
    pub place: PlaceArgs,

    /// The scheduler's job id [default: $SLURM_JOB_ID, else $PBS_JOBID, else $JOB_ID].
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Make the job's cgroup (prolog), with its resource limits and time limit if given.
    /// Idempotent; processes of an earlier job with the same id found in it are killed and
    /// reported.
    ///
    /// Exit status: 0; 2 on a bad job id or value; 125 on failure (a limit's controller
    /// missing: nothing is made).
    Create(JobCreateArgs),
    /// Run a command inside the job's cgroup: cgjob joins it, then execs the command (a job
    /// wrapper, Grid Engine's starter_method).
    ///
    /// Exit status: the command's (cgjob is replaced by it); 125 if the cgroup cannot be
    /// joined; 126 not executable; 127 not found.
    Exec(JobExecArgs),
    /// Move running processes into the job's cgroup (for hooks that only have a pid).
    ///
    /// Exit status: 0 when every pid was moved; 125 otherwise.
    Attach(JobAttachArgs),
    /// Send a signal to every process of the job.
    ///
    /// Exit status: 0; 125 on failure.
    Signal(JobSignalArgs),
    /// Show the job's processes: pid, user, state, command.
    ///
    /// Exit status: 0; 125 when the job has no cgroup.
    Status(JobStatusArgs),
    /// List the scheduler jobs that have a cgroup here.
    List(JobListArgs),
    /// Empty and remove the job's cgroup (epilog): SIGTERM, --grace, kill; report what was
    /// left, as data and as Grid-Engine-style `rogue` lines.
    ///
    /// Exit status: 0 when the node is clean; 123 when something could not be killed (the
    /// node should be drained); 125 on failure.
    Cleanup(JobCleanupArgs),
}

#[derive(Debug, Args)]
pub struct JobCreateArgs {
    #[command(flatten)]
    pub target: JobTarget,

    /// The job's user [default: $SLURM_JOB_UID, else the caller's uid].
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// The scheduler [default: from the variable the job id came from, else other].
    #[arg(long, value_enum)]
    pub scheduler: Option<crate::job::batch::Scheduler>,

    /// A wall-clock limit for the job, from now (e.g. 90m, 2h): when it passes, the node
    /// daemon ends the job — SIGTERM, --kill-after, kill, remove. Recorded on the cgroup, so
    /// it holds across daemon restarts; enforced only while a daemon runs.
    #[arg(long, value_name = "DUR", value_parser = config::parse_duration)]
    pub timeout: Option<Duration>,

    /// With --timeout: the grace between the SIGTERM and the kill.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = config::parse_duration, requires = "timeout")]
    pub kill_after: Duration,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(override_usage = "cgjob job exec [OPTIONS] -- <CMD> [ARGS]...")]
pub struct JobExecArgs {
    #[command(flatten)]
    pub target: JobTarget,

    /// Create the job's cgroup if it does not exist.
    #[arg(long)]
    pub create: bool,

    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct JobAttachArgs {
    #[command(flatten)]
    pub target: JobTarget,

    /// Processes to move in.
    #[arg(long = "pid", value_name = "PID", required = true, num_args = 1..)]
    pub pids: Vec<i32>,
}

#[derive(Debug, Args)]
pub struct JobSignalArgs {
    #[command(flatten)]
    pub target: JobTarget,

    /// The signal: a name (TERM, SIGTERM) or a number (15).
    #[arg(long, short, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    pub signal: i32,
}

#[derive(Debug, Args)]
pub struct JobStatusArgs {
    #[command(flatten)]
    pub target: JobTarget,

    /// Print the status as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobListArgs {
    #[command(flatten)]
    pub place: PlaceArgs,

    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobCleanupArgs {
    #[command(flatten)]
    pub target: JobTarget,

    /// Wait DUR between SIGTERM and the kill.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = config::parse_duration)]
    pub grace: Duration,

    /// After the first kill, how long to wait for the cgroup to empty before reporting the
    /// rest as unkillable.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = config::parse_duration)]
    pub kill_timeout: Duration,

    /// Also find the job's processes outside its cgroup — the job's uid, and the scheduler's
    /// job id variable in their environment — and report and kill them as escaped.
    #[arg(long)]
    pub sweep: bool,

    /// The job's user, for --sweep [default: the uid recorded at create, else $SLURM_JOB_UID].
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// The environment variable that carries the job id, for --sweep [default: the
    /// scheduler's].
    #[arg(long, value_name = "VAR")]
    pub marker_var: Option<String>,

    /// First move cgjob and its ancestors that are in the job's cgroup out of it (to the
    /// cgroup2 root): for an epilog whose parent was moved into the job cgroup by the prolog
    /// (Grid Engine's shepherd; see contrib/sge).
    #[arg(long)]
    pub spare_ancestors: bool,

    /// Print the result record as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Write the result record (JSON) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}
