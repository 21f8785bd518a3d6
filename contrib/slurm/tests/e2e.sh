#!/usr/bin/env bash
# End-to-end test of cgjob's Slurm integration (prolog.sh, the SPANK plugin, epilog.sh) on a
# real one-node Slurm started here: Debian's Slurm 22.05 with MUNGE, daemons started by hand
# (no systemd needed), everything under a temporary directory, stopped by pid at the end.
#
#   sudo contrib/slurm/tests/e2e.sh          (as root, on Debian 12; installs packages with apt)
#
# Phases, each with its own slurm.conf (daemons restarted in between):
#   A  no cgjob at all: the escape job must leave survivors (so the test proves something)
#   B  the SPANK plugin alone (with a `parent=` argument), job cgroups made by this script:
#      batch and srun tasks land in the job cgroup; without a job cgroup the task is refused
#      (job FAILED, node not drained)
#   C  prolog + plugin + epilog: (b) a batch job, (c) an srun step in an allocation, (d)
#      scancel, (e) a time limit — each leaves nothing behind, the epilog names the leftovers,
#      the node stays idle; (f) every task and escapee was in the job cgroup
# The time-limit job dominates the run time (~90 s): Slurm's limits are whole minutes and
# slurmctld enforces them every 30 s. The whole run takes about 2 minutes, plus the build.
#
# Environment: CGJOB_BIN / CGJOB_SPANK_SO use prebuilt files instead of `cargo build --release`;
# CGJOB_E2E_QUICK=1 skips the time-limit scenario (says so; for development);
# CGJOB_E2E_KEEP=1 keeps the work directory (logs; kept anyway when a check fails);
# CGJOB_E2E_TIMEOUT (s, default 420) bounds the whole run; CGJOB_E2E_SLURMCTLD_PORT /
# CGJOB_E2E_SLURMD_PORT (default 6817 / 6818).
# Output: PASS:/FAIL: lines, and `N passed, M failed` last. Exit status: 0 when every check
# passed; 1 when one failed or the test could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
CONTRIB=$REPO/contrib/slurm
E2E_USER=cgjobe2e
TIMEOUT_S=${CGJOB_E2E_TIMEOUT:-420}
CTLD_PORT=${CGJOB_E2E_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${CGJOB_E2E_SLURMD_PORT:-6818}
SYS_PATH=/usr/sbin:/usr/bin:/sbin:/bin
APT_PACKAGES=(munge slurmctld slurmd slurm-client libslurm-dev procps)

passed=0
failed=0
WORK=
WATCHDOG=
MUNGED_PID=
SLURMCTLD_PID=
SLURMD_PID=
CREATED_USER=
CREATED_CGROUPS=() # parent cgroups this script made (removed at the end, if empty)
JOBS=() # every job id submitted, for the cleanup

log() { printf '[%3ds] %s\n' "$SECONDS" "$*"; }
pass() {
    passed=$((passed + 1))
    printf 'PASS: %s\n' "$*"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL: %s\n' "$*"
}
die() {
    printf 'e2e: %s\n' "$*" >&2
    exit 2
}
# check PASS-MESSAGE FAIL-MESSAGE COMMAND...: PASS when COMMAND succeeds, else FAIL.
check() {
    local ok=$1 ko=$2
    shift 2
    if "$@"; then pass "$ok"; else fail "$ko"; fi
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it starts slurmd and slurmctld)"

# ---------------------------------------------------------------------------------------------
# Cleanup: always runs. Cancels our jobs, stops the daemons we started (by pid), kills what our
# jobs left (by pid: processes of the test user carrying one of our job ids), removes the job
# cgroups of our job ids, the test user if we created it, and the work directory.
# ---------------------------------------------------------------------------------------------
stop_pid() { # pid name: TERM, wait up to 10 s, then KILL
    local pid=$1 name=$2 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        # Our own child: reap it, or it lingers as a zombie that kill -0 still sees.
        wait "$pid" 2>/dev/null || true
        sleep 0.1
    done
    log "$name ($pid) ignored SIGTERM for 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? id pid cg
    set +eu
    trap - TERM INT
    if [[ -n $SLURMCTLD_PID ]] && kill -0 "$SLURMCTLD_PID" 2>/dev/null && ((${#JOBS[@]})); then
        slurm scancel "${JOBS[@]}" 2>/dev/null
        for ((i = 0; i < 100; i++)); do
            [[ -z $(slurm squeue -h -j "$(IFS=,; echo "${JOBS[*]}")" -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$SLURMCTLD_PID" slurmctld
    for id in "${JOBS[@]}"; do
        # slurmstepd of our jobs (root; they outlive slurmd), then what the jobs left.
        for pid in $(stepd_pids "$id") $(job_pids "$id"); do
            log "cleanup: killing leftover $pid ($(cmdline "$pid")) of job $id"
            kill -KILL "$pid" 2>/dev/null
        done
        remove_job_cgroup "$id" "$CG_PARENT"
        remove_job_cgroup "$id" "$P_PARENT"
    done
    stop_pid "$MUNGED_PID" munged
    for cg in "${CREATED_CGROUPS[@]}"; do rmdir "$cg" 2>/dev/null || log "cleanup: could not remove $cg"; done
    if [[ -n $CREATED_USER ]]; then userdel "$E2E_USER" 2>/dev/null || log "cleanup: userdel $E2E_USER failed"; fi
    if [[ -n $WORK ]]; then
        if [[ ${CGJOB_E2E_KEEP:-0} == 1 || $failed -gt 0 || $rc -ne 0 ]]; then
            log "logs kept in $WORK/log (work directory $WORK)"
        else
            rm -rf "$WORK"
        fi
    fi
    if [[ -n $WATCHDOG ]]; then kill -TERM "$WATCHDOG" 2>/dev/null; wait "$WATCHDOG" 2>/dev/null; fi
    if [[ $rc -ne 0 ]]; then
        printf 'FAIL: e2e aborted (exit %d) before all checks ran\n' "$rc"
        failed=$((failed + 1))
    fi
    printf '%d passed, %d failed\n' "$passed" "$failed"
    ((failed == 0)) && exit 0
    exit 1
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped by SIGTERM (deadline of ${TIMEOUT_S}s?)"; exit 124' TERM

# Bound the whole run: every wait below has its own deadline; this catches the rest.
(
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$TIMEOUT_S" &
    s=$!
    wait "$s"
    echo "e2e: deadline of ${TIMEOUT_S}s reached" >&2
    kill -TERM $$
) &
WATCHDOG=$!

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
slurm() { timeout 30 env -i PATH=$SYS_PATH SLURM_CONF="$WORK/etc/slurm.conf" "$@"; }
as_user() {
    timeout 60 runuser -u "$E2E_USER" -- env -i PATH=$SYS_PATH HOME=/ LANG=C \
        SLURM_CONF="$WORK/etc/slurm.conf" "$@"
}
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline"; }

# Pids of the test user's processes that belong to job $1: SLURM_JOB_ID=$1 in the environment
# or the job's marker in the command line.
job_pids() {
    local id=$1 pid
    [[ -n ${E2E_UID:-} ]] || return 0
    for pid in $(pgrep -u "$E2E_UID"); do
        if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qx "SLURM_JOB_ID=$id" ||
            cmdline "$pid" | grep -q "^e2e-$id-"; then
            echo "$pid"
        fi
    done
}
stepd_pids() {
    pgrep -x -f "slurmstepd: \[$1\.[a-z0-9]*\]" || true
}
describe_pids() { # one "pid cmdline" per line
    local pid
    for pid in "$@"; do echo "    $pid $(cmdline "$pid")"; done
}

cgroup2_mount() {
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
        /proc/self/mountinfo
}
job_cgroup() { echo "${2:-$CG_PARENT}/job-$1"; } # job [parent]
remove_job_cgroup() {                             # job parent
    local cg
    [[ -n ${2:-} ]] || return 0
    cg=$(job_cgroup "$1" "$2")
    [[ -d $cg ]] || return 0
    log "removing job cgroup $cg"
    echo 1 >"$cg/cgroup.kill" 2>/dev/null
    for ((i = 0; i < 50; i++)); do rmdir "$cg" 2>/dev/null && return 0; sleep 0.1; done
    log "cleanup: could not remove $cg"
}

job_field() { # job field
    slurm scontrol -o show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}
# Wait until job $1 has ended and its epilog finished (state not PENDING/RUNNING/COMPLETING);
# prints the final state.
wait_job_end() {
    local id=$1 limit=${2:-60} state="" t0=$SECONDS
    while ((SECONDS - t0 < limit)); do
        state=$(job_field "$id" JobState)
        case $state in
        PENDING | RUNNING | COMPLETING | CONFIGURING | SUSPENDED | "") sleep 0.2 ;;
        *)
            echo "$state"
            return 0
            ;;
        esac
    done
    echo "TIMEOUT-WAITING(${state:-unknown})"
}
wait_file() {
    local t0=$SECONDS
    while ((SECONDS - t0 < ${2:-30})); do
        [[ -s $1 ]] && return 0
        sleep 0.2
    done
    return 1
}
node_state() { slurm sinfo -h -o %T | head -1; }
wait_node_idle() {
    local t0=$SECONDS s=""
    while ((SECONDS - t0 < ${1:-30})); do
        s=$(node_state 2>/dev/null || true)
        [[ $s == idle ]] && return 0
        sleep 0.2
    done
    log "node state: ${s:-none}"
    return 1
}
submit() { # sbatch args... -> job id in $id (not a $(...): JOBS must be updated here)
    id=$(as_user sbatch --parsable --chdir="$WORK/jobs" -o "$WORK/jobs/%j.out" "$@")
    id=${id%%;*}
    [[ $id =~ ^[0-9]+$ ]] || die "sbatch printed '$id'"
    JOBS+=("$id")
}
# Check that nothing of job $1 is left; print what is.
assert_nothing_left() {
    local id=$1 what=$2 left
    left=$(job_pids "$id")
    if [[ -z $left ]]; then
        pass "$what: nothing left"
    else
        # shellcheck disable=SC2086
        fail "$what: $(wc -w <<<"$left") processes left:"$'\n'"$(describe_pids $left)"
    fi
    if [[ -d $(job_cgroup "$id") ]]; then
        fail "$what: job cgroup $(job_cgroup "$id") still exists"
    else
        pass "$what: job cgroup removed"
    fi
}
assert_not_drained() {
    local s
    s=$(node_state)
    if [[ $s == *drain* || $s == down* || -z $s ]]; then
        fail "$1: node is '$s' ($(slurm sinfo -h -R -o '%E' | head -1))"
    else
        pass "$1: node not drained ($s)"
    fi
}
# Lines "cgroup: 0::<path>" in a job's output must name the job cgroup.
assert_in_job_cgroup() { # job output what [parent]
    local id=$1 out=$2 what=$3 parent lines bad
    parent=$(basename "${4:-$CG_PARENT}")
    lines=$(grep '^cgroup: ' "$out" || true)
    bad=$(grep -v "^cgroup: 0::.*/$parent/job-$id\$" <<<"$lines" || true)
    if [[ -n $lines && -z $bad ]]; then
        pass "$what: $(wc -l <<<"$lines") task(s) ran in cgroup $parent/job-$id"
    else
        fail "$what: tasks not in the job cgroup: ${lines:-no cgroup line in $out}"
    fi
}

# ---------------------------------------------------------------------------------------------
# Install, build, set up
# ---------------------------------------------------------------------------------------------
# One run at a time on a machine: the test owns the node name, the ports and the test user.
exec 9>/run/cgjob-slurm-e2e.lock
flock -n 9 || die "another cgjob Slurm e2e run holds /run/cgjob-slurm-e2e.lock"

t_start=$SECONDS
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -q >/dev/null
    timeout 300 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
for c in munged slurmctld slurmd sbatch salloc srun scontrol sinfo squeue scancel setpriv runuser flock perl pgrep; do
    command -v "$c" >/dev/null || die "$c not found"
done
log "packages ready ($((SECONDS - t_start))s); $(slurmd -V)"

CG_MOUNT=$(cgroup2_mount)
[[ -n $CG_MOUNT ]] || die "no cgroup2 filesystem mounted"
CG_PARENT=$CG_MOUNT/cgjob # cgjob's default parent
P_PARENT=                 # phase B's parent (the plugin's parent= argument)

WORK=$(mktemp -d /tmp/cgjob-slurm-e2e.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK"/{bin,lib,etc,log,run,state,spool,jobs,munge}

t0=$SECONDS
if [[ -n ${CGJOB_BIN:-} || -n ${CGJOB_SPANK_SO:-} ]]; then
    [[ -n ${CGJOB_BIN:-} && -n ${CGJOB_SPANK_SO:-} ]] || die "set both CGJOB_BIN and CGJOB_SPANK_SO"
else
    log "building cgjob and the SPANK plugin (cargo build --release)"
    (cd "$REPO" && cargo build --release -q -p cgjob -p cgjob-spank)
    CGJOB_BIN=$REPO/target/release/cgjob
    CGJOB_SPANK_SO=$REPO/target/release/libcgjob_spank.so
fi
# World-readable copies: sbatch, salloc and srun load the plugin as the user.
install -m 755 "$CGJOB_BIN" "$WORK/bin/cgjob"
install -m 644 "$CGJOB_SPANK_SO" "$WORK/lib/libcgjob_spank.so"
# The scripts as shipped, with their site settings pointed at this run.
CGJOB_LOG=$WORK/log/cgjob-slurm.log
install -m 755 "$CONTRIB/prolog.sh" "$CONTRIB/epilog.sh" "$WORK/bin/"
sed -e "s|^CGJOB=.*|CGJOB=$WORK/bin/cgjob|" -e "s|^LOG=[^ ]*|LOG=$CGJOB_LOG|" \
    "$CONTRIB/common.sh" >"$WORK/bin/common.sh"
grep -qx "CGJOB=$WORK/bin/cgjob" "$WORK/bin/common.sh" || die "common.sh has no CGJOB= line to point at the build"
grep -q "^LOG=$CGJOB_LOG " "$WORK/bin/common.sh" || die "common.sh has no LOG= line to point at the work directory"
# Not named plugstack.conf: Slurm reads <slurm.conf's directory>/plugstack.conf by default,
# and phase A must run without the plugin.
sed "s|^required .*libcgjob_spank.so|required $WORK/lib/libcgjob_spank.so|" "$CONTRIB/plugstack.conf" \
    >"$WORK/etc/cgjob-plugstack.conf"
grep -q "^required $WORK/lib/libcgjob_spank.so\$" "$WORK/etc/cgjob-plugstack.conf" ||
    die "plugstack.conf has no 'required .../libcgjob_spank.so' line"
chmod 644 "$WORK/etc/cgjob-plugstack.conf"
log "build ready ($((SECONDS - t0))s)"
HAVE_JOB_CMDS=1
"$WORK/bin/cgjob" job create --help >/dev/null 2>&1 || HAVE_JOB_CMDS=0
"$WORK/bin/cgjob" job cleanup --help >/dev/null 2>&1 || HAVE_JOB_CMDS=0

if ! id "$E2E_USER" >/dev/null 2>&1; then
    useradd --no-create-home --home-dir / --shell /bin/bash "$E2E_USER"
    CREATED_USER=1
fi
E2E_UID=$(id -u "$E2E_USER")
chown "$E2E_USER:" "$WORK/jobs"
chown slurm: "$WORK/state" "$WORK/log"
chown munge: "$WORK/munge"

# The escape job: six processes that try to outlive the job (each named e2e-<job>-<how>),
# then either exits (`exit`) or waits to be ended by Slurm (`wait`).
cat >"$WORK/bin/escape.sh" <<'EOF'
#!/bin/bash
t="e2e-$SLURM_JOB_ID"
echo "cgroup: $(grep '^0::' /proc/self/cgroup)"
(exec -a "$t-plain" sleep 600) &
nohup bash -c "exec -a $t-nohup sleep 600" >/dev/null 2>&1 &
perl -e 'setpgrp(0, 0); exec { "sleep" } $ARGV[0], 600 or die' "$t-pgrp" </dev/null >/dev/null 2>&1 &
setsid bash -c "exec -a $t-setsid sleep 600" </dev/null >/dev/null 2>&1 &
setsid -f bash -c "(exec -a $t-daemon sleep 600 &)" </dev/null >/dev/null 2>&1
setsid bash -c "trap '' TERM; exec -a $t-noterm sleep 600" </dev/null >/dev/null 2>&1 &
for ((i = 0; i < 100; i++)); do
    n=$(pgrep -c -u "$(id -u)" -f "^$t-")
    ((n >= 6)) && break
    sleep 0.05
done
echo "escapees: $n"
if [[ ${1:-exit} == wait ]]; then
    echo ready >"$SLURM_JOB_ID.ready"
    sleep 600
fi
EOF
chmod 755 "$WORK/bin/escape.sh"

# ---------------------------------------------------------------------------------------------
# MUNGE and Slurm
# ---------------------------------------------------------------------------------------------
# Our own munged on our own socket: nothing else on the machine is touched or needed.
MUNGE_SOCKET=$WORK/munge/munge.socket
setsid setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --socket="$MUNGE_SOCKET" --pid-file="$WORK/munge/munged.pid" \
    --log-file="$WORK/munge/munged.log" --seed-file="$WORK/munge/munged.seed" \
    </dev/null >"$WORK/log/munged.out" 2>&1 9>&- &
MUNGED_PID=$!
for ((i = 0; i < 100; i++)); do [[ -S $MUNGE_SOCKET ]] && break; sleep 0.05; done
[[ -S $MUNGE_SOCKET ]] || die "munged did not start: $(cat "$WORK/log/munged.out" "$WORK/munge/munged.log" 2>/dev/null)"

HOST=$(hostname -s)
NODE_HW=$(slurmd -C | head -1 | grep -o 'CPUs=.*RealMemory=[0-9]*')
# Random first job id: job cgroups (job-<id>) cannot collide with anyone else's.
FIRST_JOB_ID=$((100000 + RANDOM * 20 + RANDOM % 20))

write_conf() { # phase: base | plugin | cgjob
    local f=$WORK/etc/slurm.conf
    cat >"$f" <<EOF
ClusterName=cgjobe2e
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmdDebug=debug2
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
# Cores only: with memory consumable each job would take the whole node's memory.
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
KillWait=2
OverTimeLimit=0
InactiveLimit=0
FirstJobId=$FIRST_JOB_ID
PrologEpilogTimeout=120
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HW State=UNKNOWN
PartitionName=e2e Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    case $1 in
    base) ;;
    plugin) echo "PlugStackConfig=$WORK/etc/cgjob-plugstack-parent.conf" >>"$f" ;;
    cgjob)
        cat >>"$f" <<EOF
PlugStackConfig=$WORK/etc/cgjob-plugstack.conf
PrologFlags=Alloc,Contain
Prolog=$WORK/bin/prolog.sh
Epilog=$WORK/bin/epilog.sh
EOF
        ;;
    esac
    chmod 644 "$f"
}

start_slurm() { # phase
    local t0=$SECONDS
    write_conf "$1"
    echo "=== phase $1" >>"$WORK/log/slurmd.log"
    setsid env -i PATH=$SYS_PATH slurmctld -D -f "$WORK/etc/slurm.conf" </dev/null \
        >>"$WORK/log/slurmctld.out" 2>&1 9>&- &
    SLURMCTLD_PID=$!
    setsid env -i PATH=$SYS_PATH slurmd -D -f "$WORK/etc/slurm.conf" </dev/null \
        >>"$WORK/log/slurmd.out" 2>&1 9>&- &
    SLURMD_PID=$!
    if ! wait_node_idle 30; then
        tail -n 20 "$WORK/log/slurmctld.out" "$WORK/log/slurmd.out" "$WORK/log/slurmd.log" 2>/dev/null
        die "phase $1: node not idle 30 s after starting slurmctld ($SLURMCTLD_PID) and slurmd ($SLURMD_PID)"
    fi
    log "phase $1: slurmctld $SLURMCTLD_PID, slurmd $SLURMD_PID, node idle ($((SECONDS - t0))s)"
}
stop_slurm() {
    stop_pid "$SLURMD_PID" slurmd
    stop_pid "$SLURMCTLD_PID" slurmctld
    SLURMD_PID=
    SLURMCTLD_PID=
}

# ---------------------------------------------------------------------------------------------
# Phase A: no cgjob. The escape job must leave survivors.
# ---------------------------------------------------------------------------------------------
start_slurm base
t0=$SECONDS
submit -J e2e-base -t 5 "$WORK/bin/escape.sh" exit
state=$(wait_job_end "$id")
sleep 0.5 # let slurmstepd's last kill land before counting
left=$(job_pids "$id")
n=$(wc -w <<<"$left")
log "a: job $id $state; survivors without cgjob:"
# shellcheck disable=SC2086
describe_pids $left
if ((n > 0)); then
    pass "a: baseline without cgjob: $n of 6 escapees survive job $id (the test can see escapes)"
else
    fail "a: baseline without cgjob left no survivors: the test would prove nothing ($(cat "$WORK/jobs/$id.out"))"
fi
for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
for ((i = 0; i < 50; i++)); do [[ -z $(job_pids "$id") ]] && break; sleep 0.1; done
[[ -z $(job_pids "$id") ]] || fail "a: baseline survivors could not be killed"
log "a: took $((SECONDS - t0))s"
stop_slurm

# ---------------------------------------------------------------------------------------------
# Phase B: the plugin alone (this script makes and removes the job cgroups).
# ---------------------------------------------------------------------------------------------
# The plugin with a parent= argument (relative to the cgroup2 root), under a parent of our own.
P_PARENT=$CG_MOUNT/cgjob-e2e-$FIRST_JOB_ID
mkdir "$P_PARENT"
CREATED_CGROUPS+=("$P_PARENT")
{
    grep -v '^required ' "$WORK/etc/cgjob-plugstack.conf"
    echo "required $WORK/lib/libcgjob_spank.so parent=${P_PARENT#"$CG_MOUNT"/}"
} >"$WORK/etc/cgjob-plugstack-parent.conf"
chmod 644 "$WORK/etc/cgjob-plugstack-parent.conf"
start_slurm plugin
pass "p: slurmd starts with the plugin in plugstack.conf (the plugin loads)"
t0=$SECONDS
# shellcheck disable=SC2016 # expanded by the job's shell
submit -J e2e-plugin -t 5 --hold -n 2 --wrap \
    'echo "cgroup: $(grep ^0:: /proc/self/cgroup)"; srun -n 2 bash -c "echo \"cgroup: \$(grep ^0:: /proc/self/cgroup)\""'
mkdir "$(job_cgroup "$id" "$P_PARENT")"
slurm scontrol release "$id"
state=$(wait_job_end "$id")
check "p: job $id with the plugin COMPLETED" "p: job $id ended $state" test "$state" = COMPLETED
assert_in_job_cgroup "$id" "$WORK/jobs/$id.out" "p: batch script and srun -n 2" "$P_PARENT"
check "p: plugin logged the join in slurmd.log" "p: no 'cgjob: task of job $id joined' in slurmd.log" \
    grep -q "cgjob: task of job $id joined" "$WORK/log/slurmd.log"
remove_job_cgroup "$id" "$P_PARENT"

# No job cgroup: the plugin must refuse the task (required plugin: the job fails, node stays up).
submit -J e2e-plugin-nocg -t 5 --wrap 'echo ran'
state=$(wait_job_end "$id")
if [[ $state == FAILED ]] && ! grep -qx ran "$WORK/jobs/$id.out"; then
    pass "p: without a job cgroup the task is refused (job $id $state, script not run)"
else
    fail "p: without a job cgroup job $id ended $state, output: $(cat "$WORK/jobs/$id.out" 2>/dev/null)"
fi
why=$(grep -o "cgjob: cannot place a task of job $id.*" "$WORK/log/slurmd.log" | head -1 || true)
check "p: plugin logged why: $why" "p: no 'cgjob: cannot place a task of job $id' in slurmd.log" test -n "$why"
assert_not_drained "p"
log "p: took $((SECONDS - t0))s"
stop_slurm

# ---------------------------------------------------------------------------------------------
# Phase C: prolog + plugin + epilog.
# ---------------------------------------------------------------------------------------------
if ((!HAVE_JOB_CMDS)); then
    fail "C: $CGJOB_BIN has no 'job create' / 'job cleanup' subcommands; phase C (scenarios b-f) not run"
    exit 1
fi
start_slurm cgjob
t_c=$SECONDS

# e, submitted first and checked last (a time limit is at least a minute; the partition lets
# jobs share CPUs, so b, c and d run meanwhile). Its escapees, of the same user, must survive
# the other jobs' epilogs: the sweep is per job.
submit -J e2e-timelimit --time=1 "$WORK/bin/escape.sh" wait
id_e=$id
t_e=$SECONDS
log "e: job $id_e submitted with --time=1"
wait_file "$WORK/jobs/$id_e.ready" 30 || fail "e: job $id_e never got ready ($(job_field "$id_e" JobState))"

# b: the escape job, exiting
t0=$SECONDS
submit -J e2e-escape -t 5 "$WORK/bin/escape.sh" exit
state=$(wait_job_end "$id")
log "b: job $id $state ($((SECONDS - t0))s); $(grep '^escapees' "$WORK/jobs/$id.out" || echo 'no escapees line')"
check "b: job $id COMPLETED" "b: job $id ended $state" test "$state" = COMPLETED
assert_nothing_left "$id" "b: escape job $id"
assert_in_job_cgroup "$id" "$WORK/jobs/$id.out" "f: batch script of job $id"
if grep -q "rogue process(es) found for job $id" "$CGJOB_LOG"; then
    pass "b: epilog reported 'rogue process(es) found for job $id'"
else
    fail "b: no 'rogue process(es) found for job $id' in $CGJOB_LOG"
fi
named=$( (grep -o "rogue: e2e-$id-[a-z]*" "$CGJOB_LOG" || true) | sort -u | sed 's/.*-//' | tr '\n' ' ')
if [[ $named == *setsid* && $named == *daemon* ]]; then
    pass "b: epilog named the leftovers: $named"
else
    fail "b: epilog's rogue lines name '${named}' (want at least setsid and daemon)"
fi
assert_not_drained "b"

# c: an srun step in an allocation leaving a setsid daemon
t0=$SECONDS
out=$WORK/jobs/salloc.out
# shellcheck disable=SC2016 # expanded by the tasks' shells
as_user salloc -Q -n 2 -t 5 -J e2e-srun srun -n 2 bash -c \
    'echo "jobid: $SLURM_JOB_ID"; echo "cgroup: $(grep ^0:: /proc/self/cgroup)";
     setsid -f bash -c "exec -a e2e-$SLURM_JOB_ID-srundaemon$SLURM_PROCID sleep 600" </dev/null >/dev/null 2>&1' \
    >"$out" 2>&1 || true
id=$(sed -n 's/^jobid: //p' "$out" | head -1)
if [[ -z $id ]]; then
    fail "c: salloc/srun did not run: $(cat "$out")"
else
    JOBS+=("$id")
    state=$(wait_job_end "$id")
    log "c: job $id $state ($((SECONDS - t0))s)"
    assert_nothing_left "$id" "c: srun step in allocation $id"
    assert_in_job_cgroup "$id" "$out" "f: srun -n 2 tasks of allocation $id"
    check "c: epilog named the srun daemons" "c: no 'rogue: e2e-$id-srundaemon' in $CGJOB_LOG" \
        grep -q "rogue: e2e-$id-srundaemon" "$CGJOB_LOG"
fi

# d: scancel of a running job with escapees
t0=$SECONDS
submit -J e2e-scancel -t 5 "$WORK/bin/escape.sh" wait
if wait_file "$WORK/jobs/$id.ready" 30; then
    in_cg=0 total=0
    for pid in $(job_pids "$id"); do
        [[ $(cmdline "$pid") == e2e-$id-* ]] || continue
        total=$((total + 1))
        grep -qx "0::.*/job-$id" "/proc/$pid/cgroup" 2>/dev/null && in_cg=$((in_cg + 1))
    done
    check "f: all 6 escapees of running job $id are in its cgroup" \
        "f: $in_cg of $total escapees of running job $id are in its cgroup (want 6 of 6)" \
        test "$total:$in_cg" = 6:6
    slurm scancel "$id"
    state=$(wait_job_end "$id")
    log "d: job $id $state ($((SECONDS - t0))s)"
    check "d: job $id CANCELLED" "d: job $id ended $state" test "$state" = CANCELLED
    assert_nothing_left "$id" "d: scancel'd job $id"
else
    fail "d: job $id never got ready ($(job_field "$id" JobState))"
fi
assert_not_drained "d"

# e: wait for the time limit
n=$(pgrep -c -u "$E2E_UID" -f "^e2e-$id_e-" || true)
if ((n == 6)); then
    pass "e: the epilogs of b, c and d left job $id_e's 6 escapees alone (same user, other job)"
else
    fail "e: job $id_e has $n of its 6 escapees after the epilogs of b, c and d"
fi
if [[ ${CGJOB_E2E_QUICK:-0} == 1 ]]; then
    echo "SKIP: e: not waiting for job $id_e's time limit (CGJOB_E2E_QUICK=1); cancelling it instead"
    slurm scancel "$id_e"
    state=$(wait_job_end "$id_e")
    assert_nothing_left "$id_e" "e: (quick) cancelled job $id_e"
else
    state=$(wait_job_end "$id_e" 150)
    log "e: job $id_e $state, $((SECONDS - t_e))s after submission"
    check "e: job $id_e hit its time limit (TIMEOUT)" "e: job $id_e ended $state" test "$state" = TIMEOUT
    assert_nothing_left "$id_e" "e: timed-out job $id_e"
fi

if wait_node_idle 10; then
    pass "C: node idle after all jobs (not drained)"
else
    fail "C: node is '$(node_state)' after all jobs: $(slurm sinfo -h -R -o '%E')"
fi
log "phase C took $((SECONDS - t_c))s; whole run $((SECONDS - t_start))s"
stop_slurm
