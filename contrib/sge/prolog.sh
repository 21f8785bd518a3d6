#!/bin/sh
# Grid Engine prolog (queue setting `prolog root@/path/to/prolog.sh`), run as root by the job's
# shepherd before the job. Makes the job's cgroup and moves the shepherd (our parent) into it,
# so that the job the shepherd starts next is born inside: a starter_method cannot do that, it
# runs as the job user, who may not move processes between root's cgroups (cgroup v2).
#
# Exit status: 0; 100 when the job could not be contained (the job goes to error state Eqw
# rather than running uncontained).
. "$(/usr/bin/dirname "$0")/common.sh"
uid=$(/usr/bin/id -u "${USER:-nobody}" 2>/dev/null || echo 0)
# shellcheck disable=SC2086 # CGJOB_LIMITS is a list of flags
if ! "$CGJOB" job create --job-id "$CGJOB_ID" --scheduler sge --uid "$uid" $CGJOB_LIMITS; then
    log "cannot create the job cgroup"
    exit 100
fi
if ! "$CGJOB" job attach --job-id "$CGJOB_ID" --pid "$PPID"; then
    log "cannot move the shepherd (pid $PPID) into the job cgroup"
    exit 100
fi
exit 0
