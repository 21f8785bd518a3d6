#!/bin/sh
# /init of the pure cgroup v2 guest (busybox sh as PID 1; see run.sh, which fills in the test
# executable's path). Prints VM-LANE-* tokens on the console for the host to find, then powers
# off. If this script dies, the kernel panics and QEMU (panic=-1, -no-reboot) ends at once.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev
# Without a /dev/console in the archive (built as non-root) the kernel gave us no console.
exec </dev/console >/dev/console 2>&1
echo "VM-LANE-BOOTED"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666,newinstance devpts /dev/pts &&
    ln -sf pts/ptmx /dev/ptmx
# As systemd mounts it on a pure v2 host.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup ||
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
# What systemd enables at the root; the tests enable them further down in their own cgroups.
for c in cpu cpuset io memory pids; do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control ||
        echo "VM-LANE-NOTE=cannot-enable-$c"
done
echo "VM-LANE-KERNEL=$(uname -r)"
echo "VM-LANE-CGROUP=$(grep -c ' - cgroup ' /proc/self/mountinfo)xv1,$(grep -c ' - cgroup2 ' /proc/self/mountinfo)xv2"
echo "VM-LANE-CONTROLLERS=$(tr ' ' ',' </sys/fs/cgroup/cgroup.subtree_control)"

cd /tmp || exit 1
# CGJOB_TEST_LIMITS_VIA makes every limit test assert where its limits went.
{
    CI=true HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1 CGJOB_TEST_LIMITS_VIA=cgroup-v2 \
        "@TEST_EXE@" @FILTER@ --test-threads=1 --nocapture
    echo $? >/tmp/vm-lane-status
} 2>&1 | tee /tmp/vm-lane-output
status=$(cat /tmp/vm-lane-status 2>/dev/null || echo 255)
# The output again, in one piece: kernel messages (the OOM report…) interleave with the live copy.
echo "VM-LANE-OUTPUT-BEGIN"
cat /tmp/vm-lane-output
echo "VM-LANE-OUTPUT-END"
if [ "$status" = 0 ]; then result=ok; else result=fail; fi
echo "VM-LANE-STATUS=$status"
echo "VM-LANE-RESULT=$result"
sync
poweroff -f
