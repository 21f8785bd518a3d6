//! POLICY: what a job is and how it is supervised, escalated, swept and reported. Calls the
//! mechanism in `cgroup` and `process`; never writes cgroupfs itself.

pub mod batch;
pub mod cleanup;
pub mod containment;
pub mod gc;
pub mod guardian;
pub mod leftovers;
pub mod limits;
pub mod meta;
pub mod place;
pub mod policy;
pub mod record;
pub mod supervise;
