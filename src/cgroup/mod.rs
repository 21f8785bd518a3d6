//! MECHANISM: the only code that touches cgroupfs. Knows nothing of jobs, schedulers or
//! policies; the cgroup root is always passed in, so every operation can run on a temp dir.

pub mod events;
pub mod file;
pub mod kill;
pub mod limits;
pub mod mount;
pub mod tree;
pub mod v1;

pub use events::{Events, EventsFile};
pub use file::CgroupFsError;
pub use kill::{KillMethod, KillRequest};
pub use mount::Cgroup2Mount;
pub use tree::Cgroup;
