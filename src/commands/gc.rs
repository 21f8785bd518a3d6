//! `cgjob gc`: remove stale job cgroups — those whose supervisor is gone.

use crate::cli::GcArgs;
use crate::job::gc::{self, GcOutcome};
use crate::job::place;
use crate::job::policy::exit;

pub fn gc(args: GcArgs) -> i32 {
    // A pidfd per process of a stale job.
    crate::process::raise_nofile();
    // Where `cgjob run` puts job cgroups: for a user other than root without --parent, the
    // delegated cgroup cgjob runs in.
    let res = place::hierarchy(args.place.cgroup_root.as_deref())
        .and_then(|h| place::job_parent(&h, args.place.parent.as_deref()))
        .map(|p| p.dir);
    let parent = match res {
        Ok(p) => p,
        Err(e) => {
            super::print_error(&e);
            return exit::FAILURE;
        }
    };
    let found = match gc::sweep(&parent, args.dry_run) {
        Ok(f) => f,
        Err(e) => {
            super::print_error(&e);
            return exit::FAILURE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&found).expect("gc results serialize")
        );
    } else {
        for j in &found {
            println!("{}", j.describe());
        }
    }
    if found.iter().any(|j| j.outcome == GcOutcome::NotEmptied) {
        exit::UNKILLABLE
    } else {
        0
    }
}
