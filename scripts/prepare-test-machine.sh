#!/bin/sh
# Make a machine look like a standard distribution for the end-to-end tests,
# saying what it changes: /dev/net/tun mode 0666 (as distributions ship it;
# some containers and VMs don't) and the unprivileged user the tests run
# wg-wrap as. Needs root; `make test` runs it when it is root, .ci/run always.
set -eu
user=${WG_WRAP_TEST_USER:-wgwrap-test}
if [ "$(id -u)" != 0 ]; then
	echo "prepare-test-machine: needs root" >&2
	exit 1
fi
if [ ! -e /dev/net/tun ]; then
	echo "  [#] mknod -m 0666 /dev/net/tun c 10 200"
	mkdir -p /dev/net
	mknod -m 0666 /dev/net/tun c 10 200
elif [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
	echo "  [#] chmod 0666 /dev/net/tun   (as distributions ship it)"
	chmod 0666 /dev/net/tun
fi
if ! id "$user" >/dev/null 2>&1; then
	echo "  [#] useradd --system $user   (the unprivileged user tests run wg-wrap as)"
	useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin "$user"
fi
