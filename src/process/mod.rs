//! MECHANISM: starting a process inside a cgroup, pidfds, signals, reaping, and reading /proc.

pub mod pidfd;
pub mod procinfo;
pub mod reap;
pub mod signals;
pub mod spawn;
pub mod terminal;

pub use pidfd::PidFd;
