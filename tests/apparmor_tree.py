"""A fake machine for AppArmor detection: the files it reads, below a root."""

from __future__ import annotations

from pathlib import Path

from wg_wrap import apparmor


class Machine:
    """The files AppArmor detection reads, below a fake root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "etc/apparmor.d").mkdir(parents=True)

    def write(self, path: str, text: str) -> Path:
        full = self.root / path.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
        return full

    def ubuntu(self, *, enabled: str = "Y", restriction: str = "1", abi_4: bool = True) -> Machine:
        self.write(apparmor.ENABLED_FILE, enabled + "\n")
        self.write(apparmor.RESTRICT_FILE, restriction + "\n")
        if abi_4:
            self.write(apparmor.ABI_4_FILE, "abi/4.0 features\n")
        return self

    def launcher(self, path: str) -> str:
        self.write(path, "#!/bin/false\n")
        return path

    def profile(self, filename: str, text: str) -> None:
        self.write(f"/etc/apparmor.d/{filename}", text)

    def loaded(self, *lines: str) -> None:
        self.write(apparmor.LOADED_FILE, "".join(f"{line}\n" for line in lines))

    def detect(self, launcher: str) -> apparmor.Report:
        return apparmor.detect(launcher, str(self.root))
