"""The attack corpus (tests/data/attacks): every malicious file and directory
must raise a ladle error that names the file and the offending number, must not
read outside the file or the checkpoint directory, and must leave an existing
destination byte for byte unchanged with no partial directory or lock behind.
Also runs the ASan/UBSan C++ driver over the corpus when it has been built
(``make sanitize``).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ladle
from ladle.errors import LadleError

from st_io import write_old_ladle_output

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = ROOT / "tests" / "data" / "attacks"
TABLE = json.loads((ATTACKS / "attacks.json").read_text())
INDEX = "model.safetensors.index.json"


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file({"w": np.ones(4, np.float32)}, str(path))
    return path


@pytest.fixture
def old_dest(tmp_path: Path) -> Path:
    """An existing destination directory whose bytes must survive every attack
    (ladle's own, since --overwrite replaces nothing else)."""
    dest = tmp_path / "dest"
    write_old_ladle_output(dest, b"previous model bytes")
    return dest


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def assert_untouched(dest: Path, before: dict[str, bytes]) -> None:
    assert snapshot(dest) == before
    for suffix in (".ladle-partial", ".ladle-lock"):
        assert not dest.with_name(dest.name + suffix).exists()


def test_corpus_matches_its_generator(tmp_path: Path):
    sys.path.insert(0, str(ATTACKS))
    try:
        import make_attacks
    finally:
        sys.path.pop(0)
    made = make_attacks.attacks()
    assert sorted(f"{n}.safetensors" for n in made) == sorted(TABLE)
    for name, (data, _, _) in made.items():
        assert (ATTACKS / f"{name}.safetensors").read_bytes() == data, name


@pytest.mark.parametrize("name", sorted(TABLE))
def test_attack_file_is_refused(name: str, good: Path, old_dest: Path):
    path = ATTACKS / name
    spec = TABLE[name]
    with pytest.raises(LadleError) as info:
        ladle.open(path)
    message = str(info.value)
    assert type(info.value).__name__ == spec["error"], message
    assert str(path) in message
    for fragment in spec["mentions"]:
        assert re.search(fragment, message), f"{fragment!r} not in {message!r}"
    before = snapshot(old_dest)
    with pytest.raises(LadleError):
        ladle.merge([good, path], [0.5, 0.5], old_dest, overwrite=True, progress=False)
    assert_untouched(old_dest, before)


def test_header_over_limit_in_a_sparse_file(tmp_path: Path):
    path = tmp_path / "huge_header.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100_000_001) + b'{"__metadata__":{"a":"')
        f.truncate(100_000_100)  # sparse: nothing of it is read
    with pytest.raises(ladle.FormatError, match=re.escape(
            f"{path}: header length 100000001 exceeds the 100 MB limit")):
        ladle.open(path)


# ----------------------------------------------------------------- index.json


def _sharded(directory: Path, weight_map: dict, index_text: str | None = None) -> Path:
    directory.mkdir()
    save_file({"w": np.ones(4, np.float32)}, str(directory / "model-1.safetensors"))
    text = index_text if index_text is not None else json.dumps({"weight_map": weight_map})
    (directory / INDEX).write_text(text)
    return directory


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.safetensors"
    save_file({"w": np.full(4, 7.0, np.float32)}, str(secret))
    return secret


INDEX_ATTACKS = {
    "dotdot": lambda d, s: _sharded(d, {"w": "../secret.safetensors"}),
    "dotdot_inside": lambda d, s: _sharded(d, {"w": "sub/../../secret.safetensors"}),
    "absolute": lambda d, s: _sharded(d, {"w": str(s)}),
    "absolute_etc": lambda d, s: _sharded(d, {"w": "/etc/passwd"}),
    "symlinked_shard": lambda d, s: (_sharded(d, {"w": "link.safetensors"}),
                                     os.symlink(s, d / "link.safetensors"))[0],
    "symlinked_dir": lambda d, s: (_sharded(d, {"w": "sub/secret.safetensors"}),
                                   os.symlink(s.parent, d / "sub"))[0],
    "symlink_to_dev_zero": lambda d, s: (_sharded(d, {"w": "z.safetensors"}),
                                         os.symlink("/dev/zero", d / "z.safetensors"))[0],
    "nul_in_name": lambda d, s: _sharded(d, {"w": "model-1.safetensors\0x"}),
    "deeply_nested": lambda d, s: _sharded(d, {}, '{"weight_map":' + "[" * 100_000),
    "weight_map_list": lambda d, s: _sharded(d, {}, '{"weight_map":["model-1.safetensors"]}'),
    "weight_map_int": lambda d, s: _sharded(d, {"w": 5}),
    "not_utf8": lambda d, s: (_sharded(d, {}, ""),
                              (d / INDEX).write_bytes(b'{"weight_map":{"w":"\xff"}}'))[0],
    "missing_shard": lambda d, s: _sharded(d, {"w": "model-9.safetensors"}),
    "wrong_shard": lambda d, s: (_sharded(d, {"w": "model-2.safetensors"}),
                                 save_file({"x": np.ones(1, np.float32)},
                                           str(d / "model-2.safetensors")))[0],
    "shard_is_directory": lambda d, s: (_sharded(d, {"w": "dir.safetensors"}),
                                        (d / "dir.safetensors").mkdir())[0],
}


@pytest.mark.parametrize("name", sorted(INDEX_ATTACKS))
def test_index_attack_is_refused(name: str, tmp_path: Path, good: Path, old_dest: Path):
    secret = _outside(tmp_path)
    ckpt = INDEX_ATTACKS[name](tmp_path / "ckpt", secret)
    with pytest.raises(LadleError) as info:
        ladle.open(ckpt)
    message = str(info.value)
    assert "ckpt" in message, message  # names the checkpoint (its index or shard)
    before = snapshot(old_dest)
    with pytest.raises(LadleError):
        ladle.merge([good, ckpt], [0.5, 0.5], old_dest, overwrite=True, progress=False)
    assert_untouched(old_dest, before)


# ------------------------------------------------------------ sanitizer driver


def _driver() -> Path | None:
    env = os.environ.get("LADLE_TEST_DRIVER")
    if env:
        return Path(env)
    for candidate in (ROOT / "build" / "sanitize" / "ladle_test_driver",):
        if candidate.exists():
            return candidate
    return None


def test_sanitizer_driver_over_the_corpus(tmp_path: Path):
    driver = _driver()
    if driver is None:
        pytest.skip("sanitizer driver not built (make sanitize, or set LADLE_TEST_DRIVER)")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    env.pop("LD_PRELOAD", None)
    result = subprocess.run([str(driver), "--attacks", str(ATTACKS), "--valid",  # noqa: PLW1510
                             str(ROOT / "tests" / "data" / "fuzz" / "seeds"), "--workdir",
                             str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"parser: {len(TABLE)} attack files refused" in result.stdout
    assert "0 failures" in result.stdout
