#!/bin/sh
# cgjob's Slurm Prolog. slurm.conf:
#   Prolog=/usr/local/lib/cgjob/slurm/prolog.sh
#   PrologFlags=Alloc,Contain     (Alloc: runs at allocation, before any job process exists)
#
# Makes the job's cgroup (`cgjob job create`, with the site's $LIMITS), which cgjob's SPANK
# plugin puts every task of the job into and which the Epilog empties and removes. A stale
# cgroup of an earlier job with the same id is cleaned first and reported. A non-zero exit
# drains the node and requeues the job held: right when the job cannot be contained.
# Site settings: common.sh, beside this script.

PHASE=prolog
. "${0%/*}/common.sh"

# shellcheck disable=SC2086 # LIMITS is a list of flags
run_cgjob job create --scheduler slurm $LIMITS
exit $rc
