//! `cgjob doctor [--json]`: what this host offers for containing jobs, and what `cgjob run`
//! would use.

use crate::cli::DoctorArgs;
use crate::job::containment;
use crate::report;

pub fn doctor(args: DoctorArgs) -> i32 {
    let r = containment::doctor(
        args.place.cgroup_root.as_deref(),
        args.place.parent.as_deref(),
    );
    let text = if args.json {
        let mut j = serde_json::to_string_pretty(&r).expect("host reports serialize");
        j.push('\n');
        j
    } else {
        report::doctor_text(&r)
    };
    super::write_stdout(text.as_bytes())
}
