#!/usr/bin/env bash
# The pure cgroup v2 lane: boots a small QEMU guest whose /sys/fs/cgroup is cgroup2 with every
# controller on it (no v1 hierarchy at all), and runs the resource-limit integration tests
# (`limits::`) and the containment tests of `cgjob run` (`escapes::`, `run::`) in it as root.
# This is the only place the pure-v2 limit path (controllers enabled in the job parent's
# subtree, limits written into the v2 job cgroup), and containment on the layout of most
# production nodes, meet a real kernel when the host is hybrid (memory, pids, cpu, cpuset on
# cgroup v1).
#
#   bash tests/vm/run.sh            # from anywhere; exit 0 only when the guest's tests passed
#
# Debian packages it needs (CI installs them; this script installs nothing):
#   qemu-system-x86 (--no-install-recommends is enough), cpio, busybox-static, xz-utils, python3
# and, always present on Debian: apt (apt-get download), dpkg, coreutils, perl-base, bash, grep.
# Missing any of them is an error, also outside CI: a lane that skips proves nothing.
#
# How: the kernel is Debian's (the package behind linux-image-amd64, resolved now, downloaded
# once into the cache, e.g. target/vm-cache) and booted as the ELF vmlinux inside its bzImage
# (the kernel has a PVH entry; booting it skips the in-guest XZ decompression, which TCG makes
# slow). The initramfs holds busybox (/init and the tools), the test executable and cgjob at
# their absolute host paths (the test executable has cgjob's path compiled in), what the
# tests execute (bash, perl with perl-base's modules, python3, coreutils, setpriv) and their shared libraries at
# the same paths. Software emulation (TCG): /dev/kvm here is not a stock KVM.
#
# Knobs: CGJOB_VM_CACHE (kernel cache dir), CGJOB_VM_KERNEL (a vmlinuz/vmlinux to boot instead
# of Debian's), CGJOB_VM_TIMEOUT (seconds for the guest, default 600), CGJOB_VM_MEM (MiB, 1024),
# CGJOB_VM_APPEND (more kernel command line), CGJOB_VM_FILTER (the test filter, default
# `limits:: escapes:: run:: job:: daemon:: daemon_policy::` and a few skips). The last guest
# console is kept in
# <cache>/last-serial.log.
set -euo pipefail

t0=${EPOCHREALTIME/[.,]/}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${CGJOB_VM_CACHE:-$repo/target/vm-cache}
guest_timeout=${CGJOB_VM_TIMEOUT:-600}
guest_mem=${CGJOB_VM_MEM:-1024}

die() {
    printf 'vm-lane: FAIL: %s\n' "$*" >&2
    exit 1
}
# Seconds since the start, to a tenth.
elapsed() {
    local us=$((${EPOCHREALTIME/[.,]/} - t0))
    printf '%d.%d' "$((us / 1000000))" "$((us / 100000 % 10))"
}
note() {
    printf 'vm-lane: [%5ss] %s\n' "$(elapsed)" "$*" >&2
}

# --- prerequisites ------------------------------------------------------------------------
missing=()
for tool in qemu-system-x86_64 cpio busybox xz apt-get apt-cache dpkg-deb perl bash timeout setpriv; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "missing: ${missing[*]} (apt-get install --no-install-recommends qemu-system-x86 cpio busybox-static xz-utils)"
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- the kernel -----------------------------------------------------------------------------
# An ELF vmlinux from a bzImage: the payload is the XZ stream after the first XZ magic.
extract_vmlinux() {
    local img=$1 out=$2 off
    off=$(LC_ALL=C grep -obUaP -m1 '\xFD7zXZ\x00' "$img" | head -n1 | cut -d: -f1) || true
    [[ -n $off ]] || return 1
    # xz stops with an error at the data after the stream; the stream itself is complete.
    tail -c "+$((off + 1))" "$img" | xz -dc >"$out.tmp" 2>/dev/null || true
    if [[ $(head -c4 "$out.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
        mv "$out.tmp" "$out"
    else
        rm -f "$out.tmp"
        return 1
    fi
}

if [[ -n ${CGJOB_VM_KERNEL:-} ]]; then
    [[ -r $CGJOB_VM_KERNEL ]] || die "CGJOB_VM_KERNEL=$CGJOB_VM_KERNEL is not readable"
    kernel=$CGJOB_VM_KERNEL
    note "kernel: $kernel (CGJOB_VM_KERNEL)"
else
    # One apt-cache call (they cost ~1 s each): the meta package depends on exactly one
    # version of the kernel package, e.g. `Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)`.
    read -r pkg ver < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        sed -nE 's/^Depends:.*(linux-image-[^ ,]+) \(= ([^)]+)\).*/\1 \2/p' | head -n1) || true
    [[ -n ${pkg:-} && -n ${ver:-} ]] ||
        die "cannot resolve the kernel package behind linux-image-amd64 (apt-cache show linux-image-amd64; was apt-get update run?)"
    kdir=$cache/kernel/$pkg-${ver//:/%3a}
    if [[ ! -s $kdir/vmlinuz ]]; then
        note "downloading $pkg $ver"
        rm -rf "$kdir" "$kdir.part" && mkdir -p "$kdir.part"
        (cd "$kdir.part" && apt-get download -q "$pkg=$ver" >/dev/null 2>"$work/apt.err") ||
            die "apt-get download $pkg=$ver: $(tr '\n' ' ' <"$work/apt.err")"
        deb=$(ls "$kdir.part"/*.deb)
        # Only ./boot: the modules are not needed (everything the lane uses is built in).
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir.part" --wildcards './boot/vmlinuz-*' ./boot/config-\* ||
            die "cannot unpack the kernel from $deb"
        mv "$kdir.part"/boot/vmlinuz-* "$kdir.part/vmlinuz"
        mv "$kdir.part"/boot/config-* "$kdir.part/config"
        rm -rf "$kdir.part/boot" "$deb"
        for opt in CONFIG_MEMCG CONFIG_CGROUP_PIDS CONFIG_CFS_BANDWIDTH CONFIG_CPUSETS \
            CONFIG_BLK_DEV_INITRD CONFIG_DEVTMPFS CONFIG_SERIAL_8250_CONSOLE; do
            grep -qx "$opt=y" "$kdir.part/config" || die "$pkg: $opt is not built in"
        done
        extract_vmlinux "$kdir.part/vmlinuz" "$kdir.part/vmlinux" ||
            note "no XZ-compressed ELF kernel inside the bzImage: booting the bzImage (slower)"
        mv "$kdir.part" "$kdir"
        # Older kernels, from before Debian moved linux-image-amd64 on.
        find "$cache/kernel" -mindepth 1 -maxdepth 1 ! -path "$kdir" -exec rm -rf {} +
    fi
    kernel=$kdir/vmlinuz
    [[ -s $kdir/vmlinux ]] && kernel=$kdir/vmlinux
    note "kernel: $pkg $ver ($(basename "$kernel"), cached in ${kdir#"$repo"/})"
fi

# --- the binaries ---------------------------------------------------------------------------
# The same build `cargo test` makes: the integration test executable and the cgjob binary whose
# absolute path it has compiled in (env!("CARGO_BIN_EXE_cgjob")).
note "cargo test --no-run --test integration"
(cd "$repo" && cargo test --no-run --test integration --message-format=json-render-diagnostics) \
    >"$work/cargo.json" || die "cargo test --no-run --test integration failed"
executables=$(grep -o '"executable":"[^"]*"' "$work/cargo.json" | cut -d'"' -f4)
test_exe=$(grep -E '/deps/integration-[0-9a-f]+$' <<<"$executables" | tail -n1) || true
cgjob_exe=$(grep -E '/cgjob$' <<<"$executables" | tail -n1) || true
[[ -x $test_exe ]] || die "no integration test executable in cargo's output"
[[ -x $cgjob_exe ]] || die "no cgjob executable in cargo's output"
grep -qaF "$cgjob_exe" "$test_exe" ||
    die "$test_exe does not name $cgjob_exe (where does it look for cgjob?)"

# --- the initramfs --------------------------------------------------------------------------
note "initramfs"
root=$work/root
mkdir -p "$root"/{dev,proc,sys,tmp,root,etc}
# The host's merged-/usr links, so that every path resolves in the guest as on the host.
for d in bin sbin lib lib32 lib64 libx32; do
    if [[ -L /$d ]]; then
        ln -s "$(readlink "/$d")" "$root/$d"
        mkdir -p "$root$(realpath -m "/$d")"
    fi
done

# Copy a host file into the tree at the same path (its directory canonicalized, so it lands
# behind the merged-/usr links too). Symlinks stay symlinks unless -L.
add() {
    local deref=() dir
    if [[ $1 == -L ]]; then
        deref=(-L)
        shift
    fi
    dir=$(realpath -e -- "$(dirname -- "$1")")
    mkdir -p "$root$dir"
    cp -a "${deref[@]}" -- "$1" "$root$dir/"
}
# An executable and the shared libraries it loads.
add_exe() {
    local f lib
    for f in "$@"; do
        add -L "$f"
        # A static executable: ldd says so and fails.
        while read -r lib; do
            [[ -e $root$lib ]] || add -L "$lib"
        done < <(ldd "$f" 2>/dev/null | grep -oE '(^|[[:space:]])/[^ ]+' | tr -d ' \t' || true)
    done
}

add_exe "$test_exe" "$cgjob_exe"
# Debug builds carry ~60 MB of DWARF; the guest has no use for it (symbols stay, so panics
# still have backtraces with function names).
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$root$test_exe" "$root$cgjob_exe"
fi
# What the tests execute: bash, `perl -e` (with %! → Errno.pm from perl-base), and coreutils
# (sleep, nohup, dd, …: busybox's applets pick their behaviour by argv[0], which breaks
# `exec -a NAME sleep`, and differ in small ways).
add_exe "$(command -v bash)" "$(command -v perl)"
mapfile -t coreutils < <(dpkg -L coreutils | grep -E '^(/usr)?/s?bin/[^/]+$')
add_exe "${coreutils[@]}"
# util-linux's setpriv (the tests run cgjob as another user with it; busybox's lacks options).
add_exe "$(command -v setpriv)"
# (One tar for its ~700 files; perl-base's paths are under /usr, the same on merged-/usr hosts.)
while read -r f; do
    case $f in /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/*) continue ;; esac
    if [[ ! -d $f ]] && [[ -f $f || -L $f ]]; then printf '%s\n' "${f#/}"; fi
done < <(dpkg -L perl-base) >"$work/perl-base.list"
tar -C / -cf - --no-recursion -T "$work/perl-base.list" | tar -C "$root" -xf - --skip-old-files
# python3 (a few tests script escapes with it): the interpreter and its standard library, and
# what ctypes loads.
py_pkgs=$(dpkg-query -W -f='${Package}\n' 'python3*-minimal' 'libpython3*-minimal' 'libpython3*-stdlib' 2>/dev/null |
    grep -E '^(python3(\.[0-9]+)?-minimal|libpython3\.[0-9]+-(minimal|stdlib))$' || true)
[[ -n $py_pkgs ]] || die "python3 is not installed (apt-get install python3)"
while read -r f; do
    case $f in /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/* | */test/* | */tests/*) continue ;; esac
    if [[ ! -d $f ]] && [[ -f $f || -L $f ]]; then printf '%s\n' "${f#/}"; fi
done < <(dpkg -L $py_pkgs) >"$work/python.list"
tar -C / -cf - --no-recursion -T "$work/python.list" | tar -C "$root" -xf - --skip-old-files
add_exe "$(readlink -f /usr/bin/python3)" /usr/lib/python3*/lib-dynload/_ctypes*.so
# busybox for everything else (/init's shell, mount, cat, grep, poweroff…): every applet that
# has no real file in the tree.
busybox=$(command -v busybox)
add_exe "$busybox"
bb=$(realpath -e "$busybox")
# (One perl for the ~270 links: a fork per link costs seconds.)
"$busybox" --list-full | perl -e '
    my ($root, $bb) = @ARGV;
    while (my $a = <STDIN>) {
        chomp $a;
        my $p = "$root/$a";
        next if -e $p || -l $p;
        (my $d = $p) =~ s{/[^/]+$}{};
        -d $d or system("mkdir", "-p", $d) == 0 or die "mkdir $d\n";
        symlink($bb, $p) or die "symlink $p: $!\n";
    }' "$root" "$bb"
# The kernel gives /init the console it finds at /dev/console; as non-root there is none in the
# archive and /init opens it itself once devtmpfs is mounted.
if [[ $(id -u) -eq 0 ]]; then mknod -m 600 "$root/dev/console" c 5 1; fi

# The tests run in the guest: the limit tests (the point of the lane: the pure-v2 limit path),
# and the containment tests of `cgjob run`, the scheduler-job commands and the daemon, on the
# layout of most production nodes. (modes::, pid1::, errors:: and tty:: pass there too but for
# a few tests that time python under emulation: CGJOB_VM_FILTER=modes:: … runs them.)
# Skipped, with why:
skips=(
    process_that_makes_itself_a_subreaper # python needs longer to start than its 0.3 s here
    unkillable_process_is_reported cleanup_reports_unkillable a_create_that_must_kill # v1 freezer
    systemd_unit                          # systemd-analyze
    sge_style                             # reads contrib/ from the source tree
    a_half_closed_client                  # counts CPU ticks: emulation is ~10x slower
)
default_filter="limits:: escapes:: run:: job:: daemon:: daemon_policy::$(printf ' --skip %s' "${skips[@]}")"
filter=${CGJOB_VM_FILTER:-$default_filter}
sed -e "s|@TEST_EXE@|$test_exe|" -e "s|@FILTER@|$filter|" "$repo/tests/vm/init.sh" >"$root/init"
chmod 755 "$root/init"
# Uncompressed: QEMU loads it straight into guest memory, and decompressing in an emulated CPU
# costs more than the copy.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0) \
    >"$work/initramfs.cpio" || die "cpio failed"
note "initramfs: $(du -m "$work/initramfs.cpio" | cut -f1) MB"

# --- the guest ------------------------------------------------------------------------------
log=$work/serial.log
note "booting the guest (TCG, timeout ${guest_timeout}s)"
boot_start=${EPOCHREALTIME/[.,]/}
set +e
timeout --kill-after=10 "$guest_timeout" qemu-system-x86_64 \
    -accel tcg -machine pc -m "$guest_mem" -smp 2 \
    -nodefaults -no-user-config -display none -no-reboot -nic none \
    -serial stdio \
    -kernel "$kernel" -initrd "$work/initramfs.cpio" \
    -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all mitigations=off ${CGJOB_VM_APPEND:-}" \
    </dev/null >"$log" 2>"$work/qemu.err"
qemu_status=$?
set -e
boot_us=$((${EPOCHREALTIME/[.,]/} - boot_start))
boot_secs=$((boot_us / 1000000)).$((boot_us / 100000 % 10))
tr -d '\r' <"$log" >"$log.txt"
# Kept for a look after the run (the work directory goes).
kept_log=$cache/last-serial.log
cp "$log.txt" "$kept_log"

# What the tests printed, as /init printed it again after they ended (no kernel messages in it).
sed -n '/VM-LANE-OUTPUT-BEGIN/,/VM-LANE-OUTPUT-END/p' "$log.txt" | sed '1d;$d' >"$work/tests.txt"

show_serial() {
    if [[ -s $work/tests.txt ]]; then
        # The tests' output is printed whole already: add what the kernel said, and the markers.
        printf -- '--- guest kernel messages and markers (whole console: %s) ---\n' "$kept_log" >&2
        grep -aoE '\[ *[0-9]+\.[0-9]+\] .*|VM-LANE-[A-Z-]+(=[^ ]*)?' "$log.txt" | sed 's/^/guest| /' >&2 || true
    else
        printf -- '--- guest serial console (also in %s) ---\n' "$kept_log" >&2
        sed 's/^/guest| /' "$log.txt" >&2
    fi
    if [[ -s $work/qemu.err ]]; then
        printf -- '--- qemu stderr ---\n' >&2
        cat "$work/qemu.err" >&2
    fi
    printf -- '--- end ---\n' >&2
}
fail() {
    show_serial
    die "$*"
}

# Tokens, not lines: kernel messages can land in the middle of a console line.
token() { grep -aoE "$1" "$log.txt" | tail -n1; }
result=$(token 'VM-LANE-RESULT=[a-z]+' | cut -d= -f2) || true
status=$(token 'VM-LANE-STATUS=[0-9]+' | cut -d= -f2) || true

if [[ $qemu_status -eq 124 || $qemu_status -eq 137 ]]; then
    fail "the guest did not power off within ${guest_timeout}s (timeout; result marker: ${result:-none})"
fi
[[ $qemu_status -eq 0 ]] || fail "qemu exited with status $qemu_status"
grep -qa 'VM-LANE-BOOTED' "$log.txt" || fail "the guest never reached /init (no VM-LANE-BOOTED marker)"
[[ -n $result ]] || fail "the guest ended without a result marker (did /init or the kernel die?)"

printf -- '--- guest test output (%s %s --test-threads=1 --nocapture) ---\n' "$(basename "$test_exe")" "$filter"
cat "$work/tests.txt"
printf -- '--- end of guest test output ---\n'
grep -aoE 'VM-LANE-(KERNEL|CGROUP|CONTROLLERS)=[^ ]*' "$log.txt" | sed 's/^/guest: /' || true

[[ $result == ok && $status == 0 ]] || fail "tests failed in the guest (test exit status ${status:-?})"

# The lane must have tested the v2 path: every limit record said cgroup-v2, none cgroup-v1.
v2=$(grep -c 'applied via "cgroup-v2"' "$work/tests.txt" || true)
v1=$(grep -c 'applied via "cgroup-v1"' "$work/tests.txt" || true)
passed=$(grep -oE 'test result: ok\. [0-9]+ passed' "$work/tests.txt" | grep -oE '[0-9]+ passed' | cut -d' ' -f1) || true
[[ ${passed:-0} -gt 0 ]] || fail "no 'test result: ok. N passed' line in the guest's test output"
[[ $v1 -eq 0 ]] || fail "$v1 limit record(s) in the guest say cgroup-v1"
if [[ $filter == *limits::* ]]; then
    [[ $v2 -gt 0 ]] || fail "no limit record in the guest says 'applied via \"cgroup-v2\"'"
    grep -q 'pure v2 host: tested the missing-v1 path' "$work/tests.txt" ||
        fail "the missing-controller test did not take its pure-v2 branch"
fi

note "PASS: $passed tests passed in a pure cgroup v2 guest ($v2 limit records applied via cgroup-v2); guest ${boot_secs}s, total $(elapsed)s"
