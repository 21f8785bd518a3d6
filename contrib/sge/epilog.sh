#!/bin/sh
# Grid Engine epilog (queue setting `epilog root@/path/to/epilog.sh`), run as root by the
# shepherd after the job. The shepherd and this script are in the job's cgroup (see prolog.sh):
# `--spare-ancestors` moves them out first, then everything left is killed, reported and the
# cgroup removed.
#
# Always exits 0: for Grid Engine an epilog's 3 puts the queue in error state and requeues
# the finished job, 99 reruns it, 100 puts it in error — none is what a dirty node calls for.
# When processes could not be killed it logs so and, if CGJOB_SGE_DISABLE_QUEUE=1, disables
# the queue instance on this host (`qmod -d`), so that no new job lands on a dirty node.
. "$(/usr/bin/dirname "$0")/common.sh"
set -- job cleanup --job-id "$CGJOB_ID" --spare-ancestors --grace 2s
# Outside-the-cgroup sweep by JOB_ID: only for plain jobs (array tasks share the variable).
if [ "$CGJOB_ID" = "$JOB_ID" ]; then
    uid=$(/usr/bin/id -u "${USER:-nobody}" 2>/dev/null) && set -- "$@" --sweep --uid "$uid" --marker-var JOB_ID
fi
"$CGJOB" "$@"
rc=$?
if [ "$rc" = 123 ]; then
    log "processes of the job could not be killed; the node is not clean"
    if [ "$CGJOB_SGE_DISABLE_QUEUE" = 1 ] && [ -x "${SGE_ROOT:-/nonexistent}/bin/lx-amd64/qmod" ]; then
        "$SGE_ROOT/bin/lx-amd64/qmod" -d "${QUEUE}@${HOSTNAME}" >&2
    fi
elif [ "$rc" != 0 ]; then
    log "cleanup failed (status $rc)"
fi
exit 0
