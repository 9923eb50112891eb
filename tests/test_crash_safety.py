# ruff: noqa: PLW1510
"""Crash safety, resume, concurrency and fault injection.

- SIGKILL a child ``ladle merge`` at many random points: the destination is
  always either its previous content or the complete new output, never
  partial, and ``resume=True`` then finishes with the same bytes as an
  uninterrupted run. ``LADLE_KILL_POINTS`` sets how many points (CI: 10).
- SIGINT stops the CLI with a clean message, exit 130 and no output.
- Resume keeps finished shards (same inode and mtime), rewrites a corrupted one,
  refuses a different plan.
- Two merges into one destination: one wins, the other fails cleanly.
- ENOSPC (in-process hook and a real tmpfs), an input truncated under its
  mapping (SIGBUS), a read-only destination, unreadable inputs.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ladle
from ladle import _core
from ladle.engine.output import MANIFEST_NAME, OutputDir
from ladle.errors import LadleError, LadleIOError, LadleValueError

from child_env import child_env
from st_io import write_old_ladle_output

ROOT = Path(__file__).resolve().parent.parent
PARTIAL = ".ladle-partial"
KILL_POINTS = int(os.environ.get("LADLE_KILL_POINTS", "10"))


def make_inputs(directory: Path, n_tensors: int = 8, n_elems: int = 1 << 18) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        tensors = {f"layer{i}.weight": rng.standard_normal(n_elems).astype(np.float32)
                   for i in range(n_tensors)}
        tensors["step"] = np.array([7], np.int64)
        path = directory / f"in{k}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def merge_quiet(inputs, out, **kw):
    kw.setdefault("progress", False)
    return ladle.merge(inputs, [0.25, 0.75], out, **kw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Uninterrupted outputs: 'dir' (4 shards) and 'file' (one file)."""
    d = tmp_path_factory.mktemp("ref")
    merge_quiet(inputs, d / "out", max_shard_size="2MB")
    merge_quiet(inputs, d / "out.safetensors")
    return {"dir": tree(d / "out"), "file": tree(d / "out.safetensors")}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ladle", *args]


# ------------------------------------------------------------------ SIGKILL


def test_sigkill_at_random_points(inputs, reference, tmp_path: Path):
    rng = random.Random(int(os.environ.get("LADLE_KILL_SEED", "8")))
    # --overwrite replaces only a directory ladle wrote (issue 14): the old one is ladle's.
    old_dir = write_old_ladle_output(tmp_path / "old-example")
    old = {"dir": {"model.safetensors": old_dir}, "file": {"": b"previous"}}
    argv = {"dir": ["--max-shard-size", "2MB"], "file": []}
    # Time one uninterrupted run to spread the kill points over it.
    t0 = time.perf_counter()
    subprocess.run(cli("merge", *map(str, inputs), "--weights", "0.25", "0.75", "-o",
                       str(tmp_path / "timing"), "--quiet", "--threads", "1",
                       "--max-shard-size", "2MB"), env=child_env(), check=True)
    duration = time.perf_counter() - t0
    survived = {"old": 0, "new": 0, "resumed": 0}
    phases: list = []  # finished shards in the manifest at each kill ('-': not started)
    for point in range(KILL_POINTS):
        kind = "dir" if point % 2 == 0 else "file"
        dest = tmp_path / f"k{point}" / ("out" if kind == "dir" else "out.safetensors")
        dest.parent.mkdir()
        if kind == "dir":
            write_old_ladle_output(dest)
        else:
            dest.write_bytes(b"previous")
        child = subprocess.Popen(
            cli("merge", *map(str, inputs), "--weights", "0.25", "0.75", "-o", str(dest),
                "--overwrite", "--quiet", "--threads", "1", *argv[kind]),
            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3 * duration, duration * 1.1))
        child.send_signal(signal.SIGKILL)
        child.wait()
        partial = dest.with_name(dest.name + PARTIAL)
        manifest = partial / MANIFEST_NAME
        try:
            phases.append(len(json.loads(manifest.read_text())["shards"]))
        except (OSError, ValueError):
            phases.append("-" if not partial.exists() else "?")
        now = tree(dest) if dest.exists() else None
        assert now in (old[kind], reference[kind]), f"point {point}: partial destination"
        survived["new" if now == reference[kind] else "old"] += 1
        # Whatever the kill left, resume finishes with the uninterrupted bytes.
        if now == old[kind]:
            merge_quiet(inputs, dest, overwrite=True, resume=True, **(
                {"max_shard_size": "2MB"} if kind == "dir" else {}))
            assert tree(dest) == reference[kind]
            survived["resumed"] += 1
        assert not dest.with_name(dest.name + PARTIAL).exists() or now == reference[kind]
    print(f"kill points survived: {KILL_POINTS} ({survived}; shards finished at each "
          f"kill: {phases})")


# ------------------------------------------------------------------- SIGINT


def test_sigint_stops_cleanly(tmp_path: Path):
    inputs = make_inputs(tmp_path, n_tensors=64, n_elems=1 << 19)  # 128 MiB per input
    dest = tmp_path / "out"
    child = subprocess.Popen(
        cli("merge", *map(str, inputs), "--weights", "0.5", "0.5", "-o", str(dest), "--quiet",
            "--threads", "1", "--memory-budget", "1MiB"),
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = dest.with_name(dest.name + PARTIAL)
    deadline = time.monotonic() + 20
    while not partial.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # inside the engine's chunk loop
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    if child.returncode == 0:
        pytest.skip("merge finished before SIGINT arrived (machine too fast)")
    assert child.returncode == 130, err
    assert "ladle: interrupted; no output was written" in err
    assert "Traceback" not in err
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".ladle-lock").exists()


# ------------------------------------------------------------------- resume


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_after(monkeypatch, n_shards: int) -> None:
    real = OutputDir.record_shard
    count = {"n": 0}

    def record(self, file_name, crc32c=None):
        real(self, file_name, crc32c)
        count["n"] += 1
        if count["n"] == n_shards:
            raise Interrupt

    monkeypatch.setattr(OutputDir, "record_shard", record)


def interrupted_merge(inputs, dest: Path, monkeypatch, n_shards: int) -> Path:
    """Merge into ``dest`` in 2 MB shards, interrupted after ``n_shards`` are recorded;
    returns the partial directory left behind."""
    interrupt_after(monkeypatch, n_shards)
    with pytest.raises(KeyboardInterrupt):
        merge_quiet(inputs, dest, max_shard_size="2MB")
    monkeypatch.undo()
    return dest.parent / (dest.name + PARTIAL)


def test_resume_keeps_finished_shards(inputs, reference, tmp_path: Path, monkeypatch):
    dest = tmp_path / "out"
    partial = interrupted_merge(inputs, dest, monkeypatch, 2)
    assert not dest.exists()
    manifest = json.loads((partial / MANIFEST_NAME).read_text())
    kept = sorted(manifest["shards"])
    assert len(kept) == 2 and sorted(p.name for p in partial.iterdir()) == sorted(
        [*kept, MANIFEST_NAME])
    stats = {n: (partial / n).stat() for n in kept}
    seen = {}
    real = OutputDir.record_shard
    monkeypatch.setattr(OutputDir, "record_shard",
                        lambda self, f, crc=None: (seen.setdefault(f, (self.partial / f).stat()),
                                                   real(self, f, crc))[1])
    merge_quiet(inputs, dest, max_shard_size="2MB", resume=True)
    assert not set(seen) & set(kept), "resume rewrote a finished shard"
    for name, st in stats.items():
        now = (dest / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert tree(dest) == reference["dir"]


def test_resume_rewrites_a_corrupted_shard(inputs, reference, tmp_path: Path, monkeypatch):
    dest = tmp_path / "out"
    partial = interrupted_merge(inputs, dest, monkeypatch, 3)
    victim = sorted(json.loads((partial / MANIFEST_NAME).read_text())["shards"])[1]
    with open(partial / victim, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x42")
    merge_quiet(inputs, dest, max_shard_size="2MB", resume=True)
    assert tree(dest) == reference["dir"]


def test_resume_refuses_a_different_plan(inputs, tmp_path: Path, monkeypatch):
    dest = tmp_path / "out"
    interrupted_merge(inputs, dest, monkeypatch, 1)
    with pytest.raises(LadleValueError, match="belongs to a different merge"):
        ladle.merge(inputs, [0.5, 0.5], dest, max_shard_size="2MB", resume=True, progress=False)
    merge_quiet(inputs, dest, max_shard_size="2MB")  # without resume: starts over
    assert not dest.with_name("out" + PARTIAL).exists()


def test_cli_resume_and_verify(inputs, reference, tmp_path: Path):
    dest = tmp_path / "out"
    partial = tmp_path / ("out" + PARTIAL)
    partial.mkdir()  # a stale partial, manifest cut short: nothing to keep, starts over
    (partial / "model-00001-of-00008.safetensors").write_bytes(b"junk")
    (partial / MANIFEST_NAME).write_bytes(b'{"shards": {"model-0')  # ladle's (issue 14)
    args = ["merge", *map(str, inputs), "--weights", "0.25", "0.75", "-o", str(dest), "--quiet",
            "--max-shard-size", "2MB"]
    r = subprocess.run(cli(*args, "--resume"), env=child_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert tree(dest) == reference["dir"]
    r = subprocess.run(cli("verify", str(dest), "--sample", "-1", "--check-finite"),
                       env=child_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "8 checksum(s) matched, 9 tensor(s) recomputed" in r.stdout
    # One flipped value: the checksum and the recomputation both catch it.
    shard = dest / "model-00002-of-00008.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    r = subprocess.run(cli("verify", str(dest), "--sample", "-1"), env=child_env(),
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "CRC-32" in r.stderr and "differs from the value recomputed" in r.stderr


def test_verify_single_file_with_explicit_recipe(inputs, tmp_path: Path):
    from ladle.engine.verify import verify

    dest = tmp_path / "out.safetensors"
    merge_quiet(inputs, dest)
    assert verify(dest, sample=-1).ok
    wrong = verify(dest, inputs=[str(p) for p in inputs], weights=[0.75, 0.25], sample=3)
    assert not wrong.ok and "differs from the value recomputed" in wrong.problems[0]


# -------------------------------------------------------------- concurrency


def test_second_merge_into_locked_destination_fails(inputs, tmp_path: Path):
    dest = tmp_path / "out"
    holder = OutputDir(dest)
    holder.lock()
    try:
        with pytest.raises(LadleIOError, match="another ladle merge is writing") as info:
            merge_quiet(inputs, dest)
        assert info.value.errno == 16
        assert not dest.exists() and not (tmp_path / ("out" + PARTIAL)).exists()
    finally:
        holder.unlock()
    merge_quiet(inputs, dest)


def test_two_concurrent_merges_one_wins(inputs, reference, tmp_path: Path):
    dest = tmp_path / "out"
    args = cli("merge", *map(str, inputs), "--weights", "0.25", "0.75", "-o", str(dest),
               "--quiet", "--max-shard-size", "2MB", "--threads", "1")
    children = [subprocess.Popen(args, env=child_env(), stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    results = [(c.wait(), c.stderr.read()) for c in children]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "another ladle merge is writing" in loser or "destination exists" in loser
    assert tree(dest) == reference["dir"]
    assert not (tmp_path / ("out" + PARTIAL)).exists()
    assert not (tmp_path / "out.ladle-lock").exists()
    _ = fcntl  # the lock is flock(2) on <dest>.ladle-lock


# ----------------------------------------------------------- fault injection


@pytest.fixture
def fault():
    yield _core._set_enospc_fault_after
    _core._set_enospc_fault_after(0)


@pytest.mark.parametrize("budget", [100, 3_000_000, 6_000_000])
def test_enospc_hook_leaves_destination_intact(inputs, tmp_path: Path, fault, budget: int):
    dest = tmp_path / "out"
    previous = write_old_ladle_output(dest)  # --overwrite replaces only ladle's directories
    fault(budget)
    with pytest.raises(LadleIOError, match="disk full") as info:
        merge_quiet(inputs, dest, overwrite=True, max_shard_size="2MB")
    assert info.value.errno == 28
    assert tree(dest) == {"model.safetensors": previous}
    assert not (tmp_path / ("out" + PARTIAL)).exists()


def test_enospc_on_a_real_tmpfs(inputs, tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        dest = mnt / "out"
        with pytest.raises(LadleIOError, match="disk full") as info:
            merge_quiet(inputs, dest, max_shard_size="2MB")
        assert info.value.errno == 28
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _mapped_then_truncated(path: Path, n_elems: int) -> tuple[_core.Plan, int, int]:
    """A plan mapping a one-tensor file ``w`` of n_elems fp32, then the file cut to 3
    pages. Returns (plan, source index, data start)."""
    save_file({"w": np.ones(n_elems, np.float32)}, str(path))
    header = _core.read_header(str(path))
    plan = _core.Plan()
    src = plan.add_file_source(str(path), header["file_n_bytes"])
    os.truncate(path, 3 * 4096)
    return plan, src, header["data_start"]


def test_input_truncated_while_mapped_is_an_error(tmp_path: Path):
    plan, src, start = _mapped_then_truncated(tmp_path / "a.safetensors", 1 << 21)
    out = np.zeros(1 << 21, np.float32)
    sink = plan.add_memory_sink("out", out.ctypes.data, out.nbytes)
    plan.add_job("w", _core.JobKind.sum, 1 << 21, sink, 0, "F32",
                 [_core.Input(src, start, "F32", 2.0)])
    with pytest.raises(LadleIOError, match=r"a\.safetensors: tensor 'w': input changed while "
                                           r"being read \(bus error at byte 12288") as info:
        # One thread: the first fault is then always the first page past the new end;
        # with two, the thread on the next chunk may fault first, at that chunk's start.
        _core.run(plan, threads=1, chunk_elems=4096)
    assert info.value.errno == 5


def _truncate_before(monkeypatch, kind: str, path: Path) -> None:
    """Make the first _core.run of `kind` jobs truncate `path` (already mapped by then)."""
    real = _core.run

    def truncating(plan, *args, **kwargs):
        if plan.count(_core.JobKind.__members__[kind]):
            os.truncate(path, 3 * 4096)
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(_core, "run", truncating)


TRUNCATED = r"m1\.safetensors: tensor 'w': input changed while being read \(bus error"


@pytest.mark.parametrize("method,kind", [("ties", "task"), ("slerp", "gram")])
def test_input_truncated_during_a_method_merge_is_an_error(tmp_path: Path, monkeypatch,
                                                          method, kind):
    paths = []
    for i, name in enumerate(("base", "m1", "m2")):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file({"w": np.full(1 << 20, i + 1, np.float32)}, str(paths[-1]))
    _truncate_before(monkeypatch, kind, paths[1])
    out = tmp_path / "out"
    with pytest.raises(LadleIOError, match=TRUNCATED) as info:
        if method == "ties":
            ladle.methods.methods.ties(paths[0], paths[1:], out, weights=[0.5, 0.5], progress=False)
        else:
            ladle.methods.methods.slerp(paths[0], paths[1], 0.5, out, progress=False)
    assert info.value.errno == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "m1.safetensors",
                                                          "m2.safetensors"]


def test_input_truncated_during_dot_products_is_an_error(tmp_path: Path):
    plan, src, start = _mapped_then_truncated(tmp_path / "m1.safetensors", 1 << 20)
    x = _core.Input(src, start, "F32")
    plan.add_dot("w", 1 << 20, x, [x])
    with pytest.raises(LadleIOError, match=TRUNCATED):
        _core.run(plan, kinds=[_core.JobKind.dot], threads=1, chunk_elems=16384)


def _ro_tmpfs(tmp_path: Path) -> Path | None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                       capture_output=True)
    return mnt if r.returncode == 0 else None


def test_read_only_destination(inputs, tmp_path: Path):
    if os.geteuid() != 0:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    else:
        parent = _ro_tmpfs(tmp_path)
        if parent is None:
            pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        with pytest.raises(LadleError) as info:
            merge_quiet(inputs, parent / "out")
        assert isinstance(info.value, LadleIOError) and info.value.errno in (13, 30)
        assert str(parent) in str(info.value)
        assert list(parent.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(parent)], check=False)
        else:
            parent.chmod(0o755)


def test_unreadable_input(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root reads files regardless of their mode")
    a, b = make_inputs(tmp_path, n_tensors=1, n_elems=16)
    b.chmod(0)
    with pytest.raises(LadleIOError, match="Permission denied"):
        merge_quiet([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()
