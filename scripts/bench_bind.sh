#!/bin/sh
# FDBind against wireguard-go's StdNetBind, side by side in one invocation.
#
#     scripts/bench_bind.sh [-r ROUNDS] [-t BENCHTIME] [-u USER]
#
# Builds the fdbind test binary once, then runs BenchmarkBind ROUNDS times
# (default 5, -benchtime default 2s). Within a round the two Binds alternate
# variant by variant, and every other round FDBind goes first, so drift on a
# noisy machine hits both alike. Prints every round's lines, then the medians
# side by side with the ratio FDBind/StdNetBind.
#
# Runs as root or as a normal user, and needs nothing privileged. Run as
# root, StdNetBind forces 7 MiB socket buffers (SO_RCVBUFFORCE) where the
# Python side, and any unprivileged process, gets net.core.rmem_max; -u USER
# (as root) builds as root and runs the benchmarks as USER, with equal buffers.
set -eu

rounds=5
benchtime=2s
user=
usage() {
	echo "usage: $0 [-r ROUNDS] [-t BENCHTIME] [-u USER]" >&2
	exit 2
}
while getopts r:t:u: opt; do
	case $opt in
	r) rounds=$OPTARG ;;
	t) benchtime=$OPTARG ;;
	u) user=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage
case $rounds in '' | *[!0-9]*) usage ;; esac
[ "$rounds" -ge 1 ] || usage

here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
chmod 755 "$tmp"

(cd "$here/go-sidecar" && go test -c -o "$tmp/fdbind.test" ./fdbind)

runas=env
if [ -n "$user" ]; then
	runas="setpriv --reuid=$user --regid=$user --clear-groups -- env -i PATH=/usr/bin:/bin HOME=/nonexistent"
fi

echo "$(go version), $(nproc) CPUs, kernel $(uname -r), running as ${user:-$(id -un)}"
echo "net.core.rmem_max=$(cat /proc/sys/net/core/rmem_max) wmem_max=$(cat /proc/sys/net/core/wmem_max)"
echo "$rounds rounds of BenchmarkBind, -benchtime $benchtime, the two Binds alternating"
i=1
while [ "$i" -le "$rounds" ]; do
	first=0
	[ $((i % 2)) -eq 0 ] && first=1
	echo "# round $i$( [ $first = 1 ] && echo ', FDBind first')"
	# $runas is a word list on purpose.
	# shellcheck disable=SC2086
	(cd "$tmp" && $runas FDBIND_BENCH_FD_FIRST=$first \
		./fdbind.test -test.run '^$' -test.bench '^BenchmarkBind$' \
		-test.benchtime "$benchtime" -test.count 1) >"$tmp/round.txt" 2>&1 || {
		cat "$tmp/round.txt" >&2
		echo "bench_bind: round $i failed" >&2
		exit 1
	}
	grep '^BenchmarkBind/' "$tmp/round.txt" | tee -a "$tmp/all.txt"
	i=$((i + 1))
done

/usr/bin/python3 - "$tmp/all.txt" <<'EOF'
import re, statistics, sys
from collections import defaultdict

# BenchmarkBind/v4-1452B/FDBind-2  N  v1 unit1  v2 unit2 ...
values = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    fields = line.split()
    m = re.fullmatch(r"BenchmarkBind/([^/]+)/(\w+?)(-\d+)?", fields[0])
    if not m:
        continue
    variant, bind = m.group(1), m.group(2)
    for value, unit in zip(fields[2::2], fields[3::2]):
        values[(variant, unit)][bind].append(float(value))

variants = list(dict.fromkeys(v for v, _ in values))


def median(variant, unit, bind):
    found = values.get((variant, unit), {}).get(bind)
    return statistics.median(found) if found else float("nan")


rows = [("MB/s", "{:12.0f}", True), ("pkts/s", "{:12.0f}", True),
        ("loss%", "{:12.1f}", False), ("ns/op", "{:12.0f}", True),
        ("allocs/op", "{:12.1f}", False)]
print()
print(f"medians of {len(next(iter(values.values()))['FDBind'])} rounds"
      f"       {'StdNetBind':>12} {'FDBind':>12}  FDBind/StdNetBind")
for variant in variants:
    for unit, fmt, ratio in rows:
        std, fd = (median(variant, unit, bind) for bind in ("StdNetBind", "FDBind"))
        line = f"{variant + ' ' + unit:<26} {fmt.format(std)} {fmt.format(fd)}"
        if ratio and std:
            line += f"  {fd / std:6.2f}"
        print(line)
    setup = []
    for bind in ("StdNetBind", "FDBind"):
        gso, gro, buf = (median(variant, u, bind) for u in ("gso", "gro", "rcvbuf-MiB"))
        setup.append(f"{bind}: gso={gso:.0f} gro={gro:.0f} rcvbuf={buf:.0f} MiB")
    print(f"{variant + ' setup':<26} " + ", ".join(setup))
EOF
