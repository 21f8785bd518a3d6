# Shared by the Grid Engine prolog, epilog and terminate_method. Sourced with an absolute path.
# Grid Engine runs them with the job's TMPDIR first in PATH (a directory the job user owns):
# every command is called by its absolute path.
#
# Grid Engine starts the prolog and epilog (as root) with the *job's* environment, which its
# user can add to (`qsub -v`): no variable of it may choose what runs as root or steer cgjob
# (CGJOB_PARENT, CGJOB_SOCKET, CGJOB_CGROUP_ROOT, … are cgjob's environment settings). So
# every CGJOB_* variable is dropped, and the settings are these lines.
for v in $(/usr/bin/env | /bin/sed -n 's/^\(CGJOB_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$v"
done
# --- site settings ----------------------------------------------------------------------------
CGJOB=/usr/local/bin/cgjob
# The job cgroups' parent ("" = cgjob's default, <cgroup2 mount>/cgjob).
CGJOB_PARENT_DIR=""
# Flags every job gets at `cgjob job create`, e.g. "--pids-max 8192 --memory-max 64G".
CGJOB_LIMITS=""
# 1: disable the queue instance when something of a job could not be killed.
CGJOB_SGE_DISABLE_QUEUE=0
# Seconds between SIGTERM and SIGKILL on qdel (terminate.sh).
CGJOB_SGE_GRACE=2
# ----------------------------------------------------------------------------------------------
if [ -n "$CGJOB_PARENT_DIR" ]; then
    export CGJOB_PARENT="$CGJOB_PARENT_DIR"
fi
# An array task is a job of its own: <job id>.<task id>.
if [ -n "${SGE_TASK_ID:-}" ] && [ "${SGE_TASK_ID}" != "undefined" ]; then
    CGJOB_ID="${JOB_ID}.${SGE_TASK_ID}"
else
    CGJOB_ID="${JOB_ID}"
fi
log() { printf 'cgjob-sge[%s]: %s\n' "$CGJOB_ID" "$*" >&2; }
