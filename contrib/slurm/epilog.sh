#!/bin/sh
# cgjob's Slurm Epilog. slurm.conf:
#   Epilog=/usr/local/lib/cgjob/slurm/epilog.sh     (one script, not a glob)
#
# Kills whatever the job left (`cgjob job cleanup --sweep`): everything in the job's cgroup,
# and processes of the job's user outside it that carry SLURM_JOB_ID=<id>, reports them
# (`rogue process(es) found for job <id>`, then one `rogue: <cmdline>` line each), and removes
# the job's cgroup.
#
# slurmd runs it as root with an environment built from scratch (no PATH, HOME or USER; cwd /).
# slurmd logs a script's output only at SlurmdDebug=debug2, or when it fails, so the report is
# also appended to $LOG. An Epilog that exits non-zero drains the node, so this one fails only
# when cgjob says processes could not be killed (exit 123): then the node is unfit for the next
# job. Any other failure of cgjob is logged, and the node stays in service.

# --- site settings ---------------------------------------------------------------------------
CGJOB=/usr/local/bin/cgjob
LOG=/var/log/cgjob/slurm.log # "" for none
GRACE=2s                     # between SIGTERM and SIGKILL
# ----------------------------------------------------------------------------------------------

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { # lines on stdin -> stderr (slurmd) and $LOG
    msg=$(cat)
    [ -n "$msg" ] || return 0
    printf '%s\n' "$msg" >&2
    if [ -n "$LOG" ] && mkdir -p "${LOG%/*}"; then
        printf '%s\n' "$msg" |
            sed "s/^/$(date '+%Y-%m-%dT%H:%M:%S') epilog job ${SLURM_JOB_ID:-?}: /" >>"$LOG"
    fi
}

tmp=$(mktemp) || tmp=/dev/null
"$CGJOB" job cleanup --sweep --grace "$GRACE" >"$tmp" 2>&1
rc=$?
say <"$tmp"
[ "$tmp" = /dev/null ] || rm -f "$tmp"

case $rc in
0) exit 0 ;;
123)
    echo "cgjob: job ${SLURM_JOB_ID:-?}: processes could not be killed; failing the epilog (the node drains)" | say
    exit 1
    ;;
*)
    echo "cgjob: job ${SLURM_JOB_ID:-?}: '$CGJOB job cleanup' failed (exit $rc); node left in service" | say
    exit 0
    ;;
esac
