# Shared by the Grid Engine prolog, epilog and terminate_method. Sourced with an absolute path.
# Grid Engine runs them with the job's TMPDIR first in PATH (a directory the job user owns):
# every command is called by its absolute path.
CGJOB=${CGJOB:-/usr/local/bin/cgjob}
# An array task is a job of its own: <job id>.<task id>.
if [ -n "${SGE_TASK_ID:-}" ] && [ "${SGE_TASK_ID}" != "undefined" ]; then
    CGJOB_ID="${JOB_ID}.${SGE_TASK_ID}"
else
    CGJOB_ID="${JOB_ID}"
fi
log() { printf 'cgjob-sge[%s]: %s\n' "$CGJOB_ID" "$*" >&2; }
