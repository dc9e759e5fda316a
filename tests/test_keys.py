"""Keys: public keys come from the sidecar (Go crypto/ecdh), checked against
RFC 7748, against `wg pubkey`, and for how the private key gets there.
(The sidecar's own tests check X25519 against all of RFC 7748's vectors.)"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Stage, need_interop_tools

from wg_wrap import keys


@pytest.fixture
def installed_sidecar(stage: Stage, monkeypatch: pytest.MonkeyPatch) -> Path:
    """keys.public_key runs the staged sidecar."""
    monkeypatch.setenv("WG_WRAP_LIBEXEC_DIR", str(stage.libexec))
    return stage.sidecar


def test_public_keys_of_rfc7748_section_6_1(installed_sidecar: Path) -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_pub = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    bob_pub = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    assert keys.public_key(alice).hex() == alice_pub
    assert keys.public_key(bob).hex() == bob_pub


def test_the_private_key_reaches_the_sidecar_only_through_its_stdin(
    stage: Stage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in libexec directory whose sidecar records its argv and
    environment, then runs the real one."""
    record = tmp_path / "record"
    (tmp_path / "wg-wrap-sidecar").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {record}; env >> {record}\n'
        f'exec {stage.sidecar} "$@"\n'
    )
    (tmp_path / "wg-wrap-sidecar").chmod(0o755)
    os.symlink(stage.launcher, tmp_path / "wg-wrap-launcher")
    monkeypatch.setenv("WG_WRAP_LIBEXEC_DIR", str(tmp_path))
    private = keys.generate_private_key()
    public = keys.public_key(private)
    assert len(public) == 32
    seen = record.read_text()
    assert seen.startswith("pubkey\n")
    assert keys.encode(private) not in seen and private.hex() not in seen


@pytest.mark.interop
def test_public_keys_agree_with_wg_pubkey(installed_sidecar: Path) -> None:
    need_interop_tools()
    wg = shutil.which("wg")
    assert wg is not None
    for _ in range(5):
        private = keys.generate_private_key()
        theirs = subprocess.run([wg, "pubkey"], input=keys.encode(private) + "\n",
                                capture_output=True, text=True, check=True, timeout=10)
        assert keys.encode(keys.public_key(private)) == theirs.stdout.strip()


def test_generated_keys_are_clamped_and_encode_like_wg() -> None:
    k = keys.generate_private_key()
    assert k[0] & 7 == 0 and k[31] & 128 == 0 and k[31] & 64
    text = keys.encode(k)
    assert len(text) == 44 and base64.b64decode(text) == k

