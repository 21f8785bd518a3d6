#!/bin/sh
# cgjob's Slurm Prolog. slurm.conf:
#   Prolog=/usr/local/lib/cgjob/slurm/prolog.sh
#   PrologFlags=Alloc,Contain     (Alloc: runs at allocation, before any job process exists)
#
# Makes the job's cgroup (`cgjob job create`), which cgjob's SPANK plugin puts every task of
# the job into and which the Epilog empties and removes. A stale cgroup of an earlier job with
# the same id is cleaned first and reported.
#
# slurmd runs it as root with an environment built from scratch (no PATH, HOME or USER; cwd /)
# and SLURM_JOB_ID / SLURM_JOB_UID, which cgjob reads. slurmd logs a script's output only at
# SlurmdDebug=debug2, or when it fails, so what cgjob says is also appended to $LOG. A non-zero
# exit drains the node and requeues the job held: right when the job cannot be contained.

# --- site settings ---------------------------------------------------------------------------
CGJOB=/usr/local/bin/cgjob
LOG=/var/log/cgjob/slurm.log # "" for none
# Limits every job on this node gets, as `cgjob job create` flags, e.g.
#   LIMITS="--pids-max 8192 --memory-swap-max 0"
LIMITS=""
# ----------------------------------------------------------------------------------------------

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { # lines on stdin -> stderr (slurmd) and $LOG
    msg=$(cat)
    [ -n "$msg" ] || return 0
    printf '%s\n' "$msg" >&2
    if [ -n "$LOG" ] && mkdir -p "${LOG%/*}"; then
        printf '%s\n' "$msg" |
            sed "s/^/$(date '+%Y-%m-%dT%H:%M:%S') prolog job ${SLURM_JOB_ID:-?}: /" >>"$LOG"
    fi
}

tmp=$(mktemp) || tmp=/dev/null
# shellcheck disable=SC2086 # LIMITS is a list of flags
"$CGJOB" job create --scheduler slurm $LIMITS >"$tmp" 2>&1
rc=$?
say <"$tmp"
[ "$tmp" = /dev/null ] || rm -f "$tmp"
exit $rc
