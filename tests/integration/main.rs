//! Real-kernel tests of the built `cgjob` binary, as root. Each test owns a uniquely named
//! cgroup and cleans it up whatever happens (see `util`).

mod util;

mod daemon;
mod daemon_policy;
mod docs;
mod errors;
mod escapes;
mod job;
mod limits;
mod modes;
mod pid1;
mod run;
mod tty;
