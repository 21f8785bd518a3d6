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

# Site settings: common.sh, beside this script.

PHASE=epilog
. "${0%/*}/common.sh"

run_cgjob job cleanup --sweep --grace "$GRACE"

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
