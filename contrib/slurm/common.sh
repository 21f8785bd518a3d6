# Shared by cgjob's Slurm Prolog and Epilog (sourced by them from their own directory): the
# site settings, and running cgjob with its output both to slurmd and to $LOG.
#
# slurmd runs them as root with an environment built from scratch (no PATH, HOME or USER;
# cwd /) and SLURM_JOB_ID / SLURM_JOB_UID, which cgjob reads. It logs a script's output only at
# SlurmdDebug=debug2, or when it fails, so what cgjob says is also appended to $LOG.

# --- site settings ---------------------------------------------------------------------------
CGJOB=/usr/local/bin/cgjob
LOG=/var/log/cgjob/slurm.log # "" for none
# Limits every job on this node gets, as `cgjob job create` flags, e.g.
#   LIMITS="--pids-max 8192 --memory-swap-max 0"
LIMITS=""
GRACE=2s # at cleanup, between SIGTERM and SIGKILL
# ----------------------------------------------------------------------------------------------

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# Lines on stdin -> stderr (slurmd) and $LOG, prefixed with the time, $PHASE and the job.
say() {
    msg=$(cat)
    [ -n "$msg" ] || return 0
    printf '%s\n' "$msg" >&2
    if [ -n "$LOG" ] && mkdir -p "${LOG%/*}"; then
        printf '%s\n' "$msg" |
            sed "s/^/$(date '+%Y-%m-%dT%H:%M:%S') $PHASE job ${SLURM_JOB_ID:-?}: /" >>"$LOG"
    fi
}

# Run cgjob with these arguments; what it says goes through `say`; its status is in $rc.
run_cgjob() {
    tmp=$(mktemp) || tmp=/dev/null
    "$CGJOB" "$@" >"$tmp" 2>&1
    rc=$?
    say <"$tmp"
    [ "$tmp" = /dev/null ] || rm -f "$tmp"
}
