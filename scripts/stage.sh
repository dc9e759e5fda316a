#!/bin/sh
# Stage a world-readable install of wg-wrap for tests and the demo:
# a virtual environment (from Debian's /usr/bin/python3, reachable by every
# user) with the dependencies, and `make install` into it.
set -eu
STAGE=${STAGE:-/var/tmp/wg-wrap-stage}
PYTHON=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$STAGE/venv
# shtab and argparse-manpage write the committed completions and man page
# (make docs); pinned, since tests/test_docs.py compares their output byte for byte.
reqs="pyroute2>=0.7 psutil>=5.9 tomli-w>=1.0 pytest>=7 hypothesis>=6 pytest-timeout>=2 wheel setuptools>=61 ruff mypy shtab==1.13.0 argparse-manpage==4.8"

mkdir -p "$STAGE"
chmod 0755 "$STAGE"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.reqs" 2>/dev/null)" != "$reqs" ]; then
	echo "  VENV    $venv"
	rm -rf "$venv"
	"$PYTHON" -m venv "$venv"
	# shellcheck disable=SC2086
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $reqs
	echo "$reqs" > "$venv/.reqs"
fi
echo "  INSTALL $venv"
make -s -C "$here" install PREFIX="$venv" PYTHON="$venv/bin/python" DESTDIR=
chmod -R a+rX "$STAGE"
