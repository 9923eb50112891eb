"""Numeric options out of range (threads, memory budget, shard size, step counts)
are refused with one clear error by the CLI and the Python API, before any file
is touched; the C++ core refuses them too when called directly (never aborts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ladle
from ladle import _core
from ladle.errors import LadleValueError

from child_env import child_env


def make_pair(tmp_path: Path, n: int = 3, shape: tuple[int, ...] = (4, 8)) -> list[Path]:
    """Two single-file checkpoints with tensors t0..t{n-1}."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        path = tmp_path / f"in{k}.safetensors"
        save_file({f"t{i}": rng.standard_normal(shape).astype(np.float32) for i in range(n)},
                  str(path))
        paths.append(path)
    return paths


def run_ladle(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = child_env()
    env.pop("LADLE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ladle", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_cli_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit 2, exactly one stderr line ``ladle: error: ...`` matching, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ladle: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0], (pattern, lines[0])


def assert_nothing_left(tmp_path: Path, inputs: list[Path]) -> None:
    """Only the inputs remain: no output, lock or partial directory."""
    assert sorted(tmp_path.iterdir()) == sorted(inputs)


BAD_OPTIONS = [
    (["--threads", "-1"], "threads must be"),
    (["--threads", "1.5"], "threads must be a whole number"),
    (["--threads", "1000000000"], "threads must be from 0"),
    (["--threads", "99999999999999999999"], "threads must be from 0"),
    (["--threads", "nan"], "threads must be"),
    (["--memory-budget", "0"], "at least 1 byte"),
    (["--memory-budget", "-5"], "cannot parse"),
    (["--memory-budget", "1e30"], "cannot parse"),
    (["--memory-budget", "99999999999999999999GB"], "out of range"),
    (["--memory-budget", "99999999999999999999EB"], "out of range"),
    (["--memory-budget", "nan"], "cannot parse"),
    (["--memory-budget", "5XB"], "cannot parse"),
    (["--max-shard-size", "0"], "at least 1 byte"),
    (["--max-shard-size", "0.1"], "at least 1 byte"),
    (["--max-shard-size", "2EiB"], "out of range"),
    (["--max-shard-size", "1ZB"], "cannot parse"),
]


@pytest.mark.parametrize("command,option,pattern", [
    ("merge", ["--threads", "1.5"], "threads must be a whole number"),
    ("soup", ["--memory-budget", "1e30"], "cannot parse"),
    ("convert", ["--max-shard-size", "0"], "at least 1 byte"),
])
def test_cli_refuses_out_of_range_option(tmp_path: Path, command: str, option: list[str],
                                         pattern: str):
    inputs = make_pair(tmp_path)
    args = {"merge": [*inputs, "--alpha", "0.5"], "soup": inputs, "convert": inputs[:1]}[command]
    proc = run_ladle(command, *args, "-o", tmp_path / "out", "--quiet", *option)
    assert_cli_error(proc, pattern)
    assert_nothing_left(tmp_path, inputs)


@pytest.mark.parametrize("option,pattern", BAD_OPTIONS)
def test_cli_refuses_out_of_range_option_in_process(tmp_path: Path, capsys, option: list[str],
                                                    pattern: str):
    from ladle.cli.cli import main

    inputs = make_pair(tmp_path)
    try:  # argparse exits for --threads; sizes are checked by the API (returns 2)
        rc = main(["merge", *map(str, inputs), "--alpha", "0.5", "-o",
                   str(tmp_path / "out.safetensors"), "--quiet", *option])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("ladle: error: ") and pattern in err, err
    assert_nothing_left(tmp_path, inputs)


@pytest.mark.parametrize("options,pattern", [
    ({"threads": 10**9}, "threads must be from 0"),
    ({"threads": -1}, "threads must be from 0"),
    ({"threads": 1.5}, "threads must be a whole number"),
    ({"threads": True}, "threads must be a whole number"),
    ({"memory_budget": 0}, "at least 1 byte"),
    ({"memory_budget": 10**30}, "out of range"),
    ({"memory_budget": float("nan")}, "must be a byte count"),
    ({"max_shard_size": 0}, "at least 1 byte"),
    ({"max_shard_size": "99999999999999999999EB"}, "out of range"),
])
@pytest.mark.parametrize("entry", ["merge", "live", "merge_models"])
def test_api_refuses_out_of_range_option(tmp_path: Path, options: dict, pattern: str,
                                         entry: str):
    inputs = make_pair(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match=pattern):
        if entry == "merge":
            ladle.merge(inputs, [0.5, 0.5], out, progress=False, **options)
        elif entry == "live":  # dicts of tensors take the writer's path
            from safetensors.torch import load_file

            ladle.merge([load_file(str(p)) for p in inputs], [0.5, 0.5], out, progress=False,
                        **options)
        else:
            ladle.methods.methods.merge_models("linear", inputs, out, progress=False,
                                       model_parameters=[{"weight": 1.0}] * 2, **options)
    assert_nothing_left(tmp_path, inputs)


@pytest.mark.parametrize("threads", [-1, 1025, 2**31 - 1])
def test_core_refuses_thread_counts_without_aborting(threads: int):
    """The engine, the dot products and the method runner raise, never abort."""
    with pytest.raises(LadleValueError, match="threads must be from 0"):
        _core.run(_core.Plan(), threads=threads)
    with pytest.raises(LadleValueError, match="threads must be from 0"):
        _core.run(_core.Plan(), kinds=[_core.JobKind.dot], threads=threads)


def test_valid_extremes_still_work(tmp_path: Path):
    """1 byte of budget, 1-byte shards, 1024 threads: slow maybe, but correct."""
    inputs = make_pair(tmp_path)
    ladle.merge(inputs, [0.5, 0.5], tmp_path / "a", progress=False, memory_budget=1,
                max_shard_size=1, threads=1024)
    ladle.merge(inputs, [0.5, 0.5], tmp_path / "b", progress=False, max_shard_size="1")
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 3
    assert ((tmp_path / "a" / "model-00002-of-00003.safetensors").read_bytes()
            == (tmp_path / "b" / "model-00002-of-00003.safetensors").read_bytes())


def test_sweep_without_alphas_is_an_error(tmp_path: Path):
    proc = run_ladle("sweep", "a", "b", "--model", "m:f", "--evaluate", "m:g", "--alphas")
    assert_cli_error(proc, "--alphas: expected at least one argument")
    proc = run_ladle("sweep", "a", "b", "--model", "m:f", "--evaluate", "m:g", "--alphas", "nan")
    assert_cli_error(proc, "must be a finite number")


def test_api_zero_steps_are_errors(tmp_path: Path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(LadleValueError, match="alphas is empty"):
        ladle.wiseft_sweep(model, state, state, [], lambda m: 0.0)
    with pytest.raises(LadleValueError, match="epochs must be"):
        ladle.learned_soup(model, [state, state], [(torch.zeros(1, 2), torch.zeros(1).long())],
                           epochs=0)
    with pytest.raises(LadleValueError, match="no held-out batches"):
        ladle.learned_soup(model, [state, state], [])


@pytest.mark.parametrize("option", [["--n", "0"], ["--bins", "-3"], ["--threads", "2.5"]])
def test_analyze_counts_are_checked(tmp_path: Path, option: list[str]):
    sub = "calibration" if option[0] == "--bins" else "plane" if option[0] == "--n" else "angle"
    args = {"calibration": ["x.npz"], "plane": ["a", "b", "c", "--model", "m:f", "--evaluate",
                                                "m:g"], "angle": ["a", "b", "c"]}[sub]
    proc = run_ladle("analyze", sub, *args, *option)
    assert_cli_error(proc, "argument " + option[0])


# ------------------------------------------------------------- open-file limit

_LOW_FD_SCRIPT = r"""
import os, resource, sys
from pathlib import Path
import ladle
from ladle import _core
from safetensors.numpy import load_file

resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
tmp = Path(sys.argv[1])
a, b = tmp / "in0.safetensors", tmp / "in1.safetensors"
ladle.merge([a, b], [0.5, 0.5], tmp / "files", max_shard_size=1, progress=False)
ladle.merge([tmp / "files", tmp / "files"], [0.5, 0.5], tmp / "from_many", max_shard_size=1,
            progress=False)
live = load_file(str(a))
ladle.merge([live, live], [0.5, 0.5], tmp / "live", max_shard_size=1, progress=False)
ladle.methods.methods.merge_models("linear", [a, b], tmp / "method", max_shard_size=1, progress=False,
                           model_parameters=[{"weight": 0.5}] * 2)
_core._set_enospc_fault_after(int(sys.argv[2]))
try:
    ladle.merge([a, b], [0.5, 0.5], tmp / "failed", max_shard_size=1, progress=False)
except ladle.errors.LadleIOError as e:
    print("failed as expected:", e)
"""


def test_many_output_shards_under_a_low_open_file_limit(tmp_path: Path):
    """100 one-tensor shards with RLIMIT_NOFILE = 32: every writer path finishes
    (file inputs, a 200-file input, live tensors, a method recipe), and a disk
    that fills up mid-run still leaves no partial directory behind."""
    inputs = make_pair(tmp_path, n=100, shape=(16,))
    script = tmp_path / "low_fd.py"
    script.write_text(_LOW_FD_SCRIPT)
    fault_after = 100 * 64 + 100 * 200 + 2000  # past preallocation, inside the data writes
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(fault_after)],
                          env=child_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "failed as expected" in proc.stdout and "disk full" in proc.stdout, proc.stdout
    for name in ("files", "from_many", "live", "method"):
        shards = sorted((tmp_path / name).glob("model-*.safetensors"))
        assert len(shards) == 100, name
        index = ladle.open(tmp_path / name)
        assert len(index.tensors) == 100
    from safetensors.numpy import load_file

    xa, xb = load_file(str(inputs[0])), load_file(str(inputs[1]))
    for name, want in (("files", 0.5 * xa["t7"] + 0.5 * xb["t7"]), ("live", xa["t7"])):
        got = ladle.open(tmp_path / name).tensors["t7"].file
        np.testing.assert_array_equal(load_file(str(got))["t7"], want)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("failed")]


# ------------------------------------------------------------------ header size


def _long_named_tensors(n: int, name_bytes: int) -> dict:
    return {f"{i:06d}" + "x" * (name_bytes - 6): np.zeros(1, np.float32) for i in range(n)}


def test_single_file_header_over_the_format_limit_is_refused_before_writing(tmp_path: Path):
    """110 tensors with 1 MB names need a ~110 MB header: more than safetensors
    allows (100 MB). A single-file output is refused while planning; nothing is
    written, locked or left behind."""
    tensors = _long_named_tensors(110, 1_000_000)
    with pytest.raises(LadleValueError, match="over the safetensors format's limit"):
        ladle.save(tensors, tmp_path / "big.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_directory_output_splits_shards_before_the_header_limit(monkeypatch):
    """Into a directory, shards are split so that no header nears the limit
    (here lowered to 2.5 MB so the test stays small), whatever max_shard_size."""
    from ladle.engine import plan

    monkeypatch.setattr(plan, "HEADER_SPLIT_BYTES", 2_500_000)
    outputs = [plan.OutputTensor(f"{i:06d}" + "x" * 99_994, "F32", (1,), "copy", [], 4, 1)
               for i in range(100)]
    shards, _ = plan.layout_shards(outputs, 5 * 10**9, single_file=False, metadata={"k": "v"})
    assert len(shards) >= 3
    assert all(len(s.header) <= 2_500_000 for s in shards)
    assert [t.name for s in shards for t in s.tensors] == [t.name for t in outputs]
