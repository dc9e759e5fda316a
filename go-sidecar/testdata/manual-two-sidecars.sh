#!/bin/sh
# Manual check of the built wg-wrap-sidecar, as root: two sidecars, each in
# its own network namespace (unshare -n) but on a UDP socket opened on the
# host's loopback before the unshare, configured over UAPI with socat,
# addressed and set up with ip(8), then ping(8) across, IPv4 and IPv6.
# Everything it starts is stopped on exit; the namespaces die with the
# sidecars. Usage: sudo sh testdata/manual-two-sidecars.sh [path/to/sidecar]
set -eu

sidecar=$(realpath "${1:-../build/wg-wrap-sidecar}")
work=$(mktemp -d /tmp/wg-wrap-manual.XXXXXX)
pids=""
cleanup() {
	for pid in $pids; do kill "$pid" 2>/dev/null || true; done
	for pid in $pids; do
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

# start NAME: opens a dual-stack socket on the host, then unshare -n and exec
# the sidecar with the socket and a ready pipe; prints "pid port".
start() {
	python3 - "$sidecar" "$work/$1.sock" "$work/$1.log" <<'EOF'
import os, socket, subprocess, sys
sidecar, uapi, log = sys.argv[1:]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
r, w = os.pipe()
env = dict(os.environ, WG_WRAP_HOST_SOCKET_FD=str(s.fileno()), WG_WRAP_READY_FD=str(w))
p = subprocess.Popen(["unshare", "-n", "--", sidecar, "--uapi", uapi, "-v"],
                     env=env, pass_fds=(s.fileno(), w), stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                     start_new_session=True)
os.close(w)
port = s.getsockname()[1]
s.close()  # the sidecar has its own copy
line = os.read(r, 200).decode()
if line != "READY\n":
    sys.exit(f"sidecar said {line!r}")
print(p.pid, port)
EOF
}

keypair() { k=$(wg genkey); echo "$k $(echo "$k" | wg pubkey)"; }
hex() { echo "$1" | base64 -d | od -An -tx1 | tr -d ' \n'; }
uapi() { printf 'set=1\n%s\n\n' "$2" | socat -t 2 - "UNIX-CONNECT:$1"; }
set -- $(start a); pid_a=$1 port_a=$2; pids="$pids $pid_a"
set -- $(start b); pid_b=$1 port_b=$2; pids="$pids $pid_b"
echo "[#] sidecars: a pid $pid_a udp $port_a, b pid $pid_b udp $port_b"

set -- $(keypair); priv_a=$1 pub_a=$2
set -- $(keypair); priv_b=$1 pub_b=$2
uapi "$work/a.sock" "private_key=$(hex "$priv_a")
public_key=$(hex "$pub_b")
endpoint=127.0.0.1:$port_b
allowed_ip=10.77.0.2/32
allowed_ip=fd77::2/128"
uapi "$work/b.sock" "private_key=$(hex "$priv_b")
public_key=$(hex "$pub_a")
endpoint=[::1]:$port_a
allowed_ip=10.77.0.1/32
allowed_ip=fd77::1/128"

n=1
for pid in $pid_a $pid_b; do
	nsenter -t "$pid" -n ip addr add "10.77.0.$n/24" dev tun0
	nsenter -t "$pid" -n ip -6 addr add "fd77::$n/64" dev tun0 nodad
	nsenter -t "$pid" -n ip link set tun0 up
	nsenter -t "$pid" -n ip -br link show tun0
	n=2
done

echo "[#] ping a -> b"
nsenter -t "$pid_a" -n ping -c 3 -W 2 10.77.0.2
nsenter -t "$pid_a" -n ping -6 -c 3 -W 2 fd77::2
echo "[#] ping b -> a"
nsenter -t "$pid_b" -n ping -c 3 -W 2 10.77.0.1
nsenter -t "$pid_b" -n ping -6 -c 3 -W 2 fd77::1

echo "[#] UAPI get on b"
printf 'get=1\n\n' | socat -t 2 - "UNIX-CONNECT:$work/b.sock" | grep -v private_key
ls -l "$work"/*.sock
echo "[#] SIGTERM"
kill "$pid_a" "$pid_b"
sleep 1
ls "$work"
