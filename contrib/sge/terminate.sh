#!/bin/sh
# Grid Engine terminate_method (queue setting `terminate_method /path/to/terminate.sh`), run as
# the job user on qdel. SIGTERM to every process of the job, then SIGKILL to whatever is left
# after a grace period: Grid Engine retries a terminate_method that leaves the job running.
# (The epilog then removes the cgroup and reports anything that escaped.)
. "$(/usr/bin/dirname "$0")/common.sh"
"$CGJOB" job signal --job-id "$CGJOB_ID" --signal TERM || exit 0
/bin/sleep "$CGJOB_SGE_GRACE"
"$CGJOB" job signal --job-id "$CGJOB_ID" --signal KILL
exit 0
