#!/usr/bin/env python3
"""Rewrite a wheel or an sdist so that its bytes depend on its contents only.

    SOURCE_DATE_EPOCH=… python scripts/repack.py wheel IN.whl OUT.whl
    SOURCE_DATE_EPOCH=… python scripts/repack.py sdist IN.tar.gz OUT.tar.gz

`make wheel` and `make sdist` end here, so that a build from another clone,
at another path, under another umask or at another time gives the same bytes
(as `make dist` does for its tarball): entries sorted by name (a wheel's
.dist-info last and its RECORD at the very end, as the wheel format
recommends), every date SOURCE_DATE_EPOCH, modes 0644 or 0755 (0755 when any
execute bit was set), owner 0 without user or group names, no timestamp or
file name in the gzip header. The contents are not changed; a wheel's RECORD
must list every other file with its hash and size, or the repack fails.

The standard library only: it runs with whichever Python builds the wheel.
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import io
import os
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest date a zip entry can hold


class RepackError(Exception):
    pass


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value.isdigit():
        raise RepackError(
            f"SOURCE_DATE_EPOCH must be a number of seconds (got {value!r}); "
            "the Makefile takes it from the last commit"
        )
    return int(value)


def normal_mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- wheels -------------------------------------------------------------------


def record_digest(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def check_record(files: dict[str, bytes], record_name: str) -> None:
    """RECORD lists every other file of the wheel with its hash and size."""
    rows = list(csv.reader(io.StringIO(files[record_name].decode())))
    listed = {row[0]: row[1:] for row in rows if row}
    if set(listed) != set(files):
        missing, extra = sorted(set(files) - set(listed)), sorted(set(listed) - set(files))
        raise RepackError(f"RECORD does not match the wheel: unlisted {missing}, absent {extra}")
    for name, data in files.items():
        if name == record_name:
            continue
        digest, size = listed[name]
        if digest != record_digest(data) or size != str(len(data)):
            raise RepackError(f"RECORD's hash or size of {name} is not the file's")


def wheel_order(names: Iterable[str], dist_info: str) -> list[str]:
    """Sorted, with the .dist-info directory last and its RECORD at the end."""
    record = f"{dist_info}/RECORD"
    return sorted(names, key=lambda n: (n.startswith(dist_info + "/"), n == record, n))


def repack_wheel(source: Path, dest: Path, epoch: int) -> None:
    date_time = time.gmtime(max(epoch, ZIP_EPOCH))[:6]
    with zipfile.ZipFile(source) as wheel:
        entries = [i for i in wheel.infolist() if not i.is_dir()]
        files = {i.filename: wheel.read(i) for i in entries}
        modes = {i.filename: (i.external_attr >> 16) & 0o7777 for i in entries}
    dist_infos = {n.split("/", 1)[0] for n in files if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        raise RepackError(f"{source.name}: expected one .dist-info directory, found {dist_infos}")
    (dist_info,) = dist_infos
    check_record(files, f"{dist_info}/RECORD")

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as wheel:
        for name in wheel_order(files, dist_info):
            info = zipfile.ZipInfo(name, date_time)
            info.create_system = 3  # Unix: the mode below is meant
            info.external_attr = (stat.S_IFREG | normal_mode(modes[name])) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, files[name], compresslevel=9)
    write_atomically(dest, out.getvalue())


# ---- sdists -------------------------------------------------------------------


def repack_sdist(source: Path, dest: Path, epoch: int) -> None:
    with tarfile.open(source, "r:gz") as tar:
        members = sorted(tar.getmembers(), key=lambda m: m.name)
        contents = {}
        for member in members:
            if not (member.isfile() or member.isdir()):
                raise RepackError(f"{source.name}: {member.name} is neither a file nor a directory")
            if member.isfile():
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise RepackError(f"{source.name}: cannot read {member.name}")
                contents[member.name] = extracted.read()

    out = io.BytesIO()
    # No file name and no date in the gzip header; the tar inside in pax
    # format, as the sdist format asks.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.mode = 0o755 if member.isdir() else normal_mode(member.mode)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            data = contents.get(member.name)
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    write_atomically(dest, out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("wheel", "sdist"))
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        epoch = source_date_epoch()
        if args.kind == "wheel":
            repack_wheel(args.source, args.dest, epoch)
        else:
            repack_sdist(args.source, args.dest, epoch)
    except (RepackError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        print(f"repack: {args.source}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
