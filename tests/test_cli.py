"""The ``ladle`` command line, run in-process through ``ladle.cli.cli.main`` and once
as ``python -m ladle`` in a subprocess.

Outputs are checked against the Python API (byte for byte where the call is the
same) and against numpy references.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import ladle
from ladle.cli.cli import main

from child_env import child_env

INDEX = "model.safetensors.index.json"


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """fp32 values with at most 20 significant bits, so (a + b) / 2 is exact in fp32."""
    return (rng.integers(-(2**20), 2**20, size=shape) / 2.0**12).astype(np.float32)


@pytest.fixture
def models(tmp_path: Path) -> list[Path]:
    """Three single-file checkpoints with the same tensors and a shared int tensor."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"m{i}.safetensors"
        save_file({"w": _rand(rng, 4, 8), "b": _rand(rng, 8),
                   "step": np.array([7, 11], np.int64)},
                  str(path), metadata={"origin": f"model-{i}"})
        paths.append(path)
    return paths


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run ``ladle ARGS`` in-process; returns (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_subprocess(*args: str | Path) -> subprocess.CompletedProcess:
    """Run ``python -m ladle ARGS`` with the imported ladle package on PYTHONPATH."""
    env = child_env()
    env.pop("LADLE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ladle", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_error(rc: int, err: str, pattern: str) -> None:
    assert rc == 2, f"exit code {rc}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("ladle: error: "), lines[0]
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"


# ------------------------------------------------------------------ merge / soup


def test_merge_alpha_equals_interpolate(tmp_path: Path, models: list[Path], capsys):
    a, b = str(models[0]), str(models[1])
    out = tmp_path / "cli.safetensors"
    rc, stdout, stderr = run_cli(capsys, "merge", a, b, "--alpha", "0.5", "-o", out)
    assert rc == 0, stderr
    assert stdout.startswith(f"wrote {out}: 3 tensors in 1 shard(s)")
    ref = tmp_path / "api.safetensors"
    ladle.interpolate(a, b, 0.5, ref, progress=False)
    assert out.read_bytes() == ref.read_bytes()
    got, xa, xb = load_file(str(out)), load_file(a), load_file(b)
    for name in ("w", "b"):
        np.testing.assert_array_equal(got[name], (xa[name] + xb[name]) / 2)
    np.testing.assert_array_equal(got["step"], [7, 11])
    assert ladle.open(out).metadata["ladle_method"] == "wise-ft alpha=0.5"


def test_merge_alpha_directory_output(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "wiseft"
    rc, _, stderr = run_cli(capsys, "merge", models[0], models[1], "--alpha", "0.25",
                            "-o", out, "--quiet")
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    xa, xb = load_file(str(models[0])), load_file(str(models[1]))
    got = load_file(str(out / "model.safetensors"))
    expected = (np.float32(0.75) * xa["w"] + np.float32(0.25) * xb["w"])
    np.testing.assert_allclose(got["w"], expected, rtol=1e-6)


def test_package_exports_are_the_lazy_table():
    """ladle/__init__ names each export three times (the lazy table, the imports for
    type checkers, __all__): they agree, and every name resolves."""
    lazy = set(ladle._EXPORTS) | set(ladle._SUBMODULES) | {"build_info"}
    assert set(ladle.__all__) == lazy - {"analysis"}
    tree = ast.parse(Path(ladle.__file__).read_text())
    typed = {a.asname or a.name for node in tree.body if isinstance(node, ast.If)
             for imp in node.body if isinstance(imp, ast.ImportFrom) for a in imp.names}
    assert typed == lazy - {"analysis", "build_info"}
    for name in sorted(lazy):
        assert getattr(ladle, name) is not None, name


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "slerp", "model_stock"])
def test_cli_merge_loads_no_numpy(tmp_path: Path, models: list[Path], method: str):
    """`import ladle` loads its exports lazily and a merge whose method needs no numpy
    does not load it (~70 ms of every run; its OpenBLAS threads would also spin on
    the merge's cores): the run's whole cost is the merge."""
    recipe = tmp_path / "r.yml"
    params = {"linear": "{weight: 0.5}", "slerp": "{}", "model_stock": "{}"}.get(
        method, "{weight: 0.5, density: 0.5}")
    chosen = models[1:2] if method == "slerp" else models[1:]
    entries = "".join(f"  - model: {m}\n    parameters: {params}\n" for m in chosen)
    extra = "parameters: {t: 0.3}\n" if method == "slerp" else ""
    recipe.write_text(f"merge_method: {method}\nbase_model: {models[0]}\nmodels:\n{entries}"
                      + extra)
    code = ("import sys, ladle\n"
            "assert 'numpy' not in sys.modules, 'import ladle'\n"
            "from ladle.cli.cli import main\n"
            f"assert main(['merge', '--config', {str(recipe)!r}, '-o', {str(tmp_path / 'o')!r},"
            " '--quiet']) == 0\n"
            "print('numpy' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert ladle.open(tmp_path / "o").tensors["w"].shape == (4, 8)


def test_merge_with_weights(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "out.safetensors"
    rc, _, stderr = run_cli(capsys, "merge", *models, "--weights", "0.2", "0.3", "0.5",
                            "-o", out, "--quiet")
    assert rc == 0, stderr
    ref = tmp_path / "ref.safetensors"
    ladle.merge([str(m) for m in models], [0.2, 0.3, 0.5], ref, progress=False)
    assert out.read_bytes() == ref.read_bytes()
    xs = [load_file(str(m)) for m in models]
    expected = 0.2 * xs[0]["w"].astype(np.float64) + 0.3 * xs[1]["w"] + 0.5 * xs[2]["w"]
    np.testing.assert_allclose(load_file(str(out))["w"], expected, rtol=1e-5, atol=1e-6)


def test_merge_with_negative_weights(tmp_path: Path, models: list[Path], capsys):
    """Task arithmetic: 2·θ1 − θ0 (weights need not be positive or sum to one)."""
    out = tmp_path / "out.safetensors"
    rc, _, stderr = run_cli(capsys, "merge", models[0], models[1], "--weights", "-1", "2",
                            "-o", out, "--quiet")
    assert rc == 0, stderr
    xa, xb = load_file(str(models[0])), load_file(str(models[1]))
    np.testing.assert_array_equal(load_file(str(out))["w"], 2 * xb["w"] - xa["w"])


def test_soup_uniform(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "soup.safetensors"
    rc, _, stderr = run_cli(capsys, "soup", *models, "-o", out, "--quiet")
    assert rc == 0, stderr
    ref = tmp_path / "ref.safetensors"
    ladle.soup([str(m) for m in models], ref, progress=False)
    assert out.read_bytes() == ref.read_bytes()
    xs = [load_file(str(m)) for m in models]
    got = load_file(str(out))
    for name in ("w", "b"):
        np.testing.assert_allclose(got[name], np.mean([x[name] for x in xs], axis=0),
                                   rtol=1e-6, atol=1e-6)
    assert ladle.open(out).metadata["ladle_method"] == "uniform-soup"


def test_soup_weighted_is_normalised(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "soup.safetensors"
    rc, _, stderr = run_cli(capsys, "soup", models[0], models[1], "--weights", "1", "3",
                            "-o", out, "--quiet")
    assert rc == 0, stderr
    xa, xb = load_file(str(models[0])), load_file(str(models[1]))
    np.testing.assert_allclose(load_file(str(out))["w"], 0.25 * xa["w"] + 0.75 * xb["w"],
                               rtol=1e-6, atol=1e-6)
    meta = ladle.open(out).metadata
    assert meta["ladle_method"] == "weighted-soup"
    assert json.loads(meta["ladle_weights"]) == [0.25, 0.75]


# ----------------------------------------------------------------------- inspect


def test_inspect_lists_tensors_dtypes_shapes_metadata(models: list[Path], capsys):
    rc, out, err = run_cli(capsys, "inspect", models[0])
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{models[0]}: 3 tensors in 1 file(s), 176 bytes of tensor data")
    assert "  metadata origin = model-0" in lines
    rows = {line.split()[0]: line.split() for line in lines[1:] if "metadata" not in line}
    assert rows["w"][:2] == ["w", "F32"]
    assert "[4, 8]" in " ".join(rows["w"]) and rows["w"][-2:] == ["128", "m0.safetensors"]
    assert rows["b"][1] == "F32" and "[8]" in rows["b"] and rows["b"][-2] == "32"
    assert rows["step"][1] == "I64" and "[2]" in rows["step"] and rows["step"][-2] == "16"


def test_inspect_sharded_directory(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "sharded"
    assert run_cli(capsys, "merge", *models[:2], "--alpha", "0.5", "-o", out, "--quiet",
                   "--max-shard-size", "100")[0] == 0
    rc, stdout, _ = run_cli(capsys, "inspect", out)
    assert rc == 0
    assert stdout.startswith(f"{out}: 3 tensors in 2 file(s)")
    assert re.search(r"^\s+w\s+F32\s+\[4, 8\]\s+128\s+model-0000[12]-of-00002\.safetensors$",
                     stdout, re.MULTILINE)
    assert "metadata ladle_method = wise-ft alpha=0.5" in stdout


def test_inspect_bad_file(tmp_path: Path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01\x02")
    rc, out, err = run_cli(capsys, "inspect", bad)
    assert out == ""
    assert_one_line_error(rc, err, re.escape(f"{bad}: truncated: 2 bytes"))


# ------------------------------------------------------------ dry run / shards


def test_dry_run_prints_plan_and_writes_nothing(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "out"
    before = sorted(tmp_path.iterdir())
    rc, stdout, stderr = run_cli(capsys, "merge", models[0], models[1], "--alpha", "0.25",
                                 "-o", out, "--dry-run", "--int-policy", "error")
    assert rc == 0, stderr
    assert sorted(tmp_path.iterdir()) == before
    lines = stdout.splitlines()
    assert re.fullmatch(r"3 tensors -> 1 shard\(s\); reads 352 bytes, writes \d+ bytes", lines[0])
    assert re.fullmatch(r"  model\.safetensors: 3 tensors, \d+ bytes", lines[1])
    rows = {}
    # issue 15: the pre-flight report (dtype plan, output size, ...) follows the plan
    assert "dtype plan: 2 tensor(s) F32 -> F32" in lines and lines[-1] == "ok"
    for line in [ln for ln in lines[2:] if ln.startswith("    ")]:
        m = re.fullmatch(r"    (\w+) (\w+)\[([\d, ]*)\] (\w+)\((.*)\) -> model\.safetensors@(\d+)",
                         line)
        assert m, line
        rows[m[1]] = (m[2], m[3], m[4], m[5], int(m[6]))
    assert {n: r[:4] for n, r in rows.items()} == {
        "w": ("F32", "4, 8", "sum", "0.75, 0.25"),
        "b": ("F32", "8", "sum", "0.75, 0.25"),
        "step": ("I64", "2", "copy", "identical copy"),
    }
    # The planned offsets tile the data buffer without holes or overlaps.
    sizes = {"w": 128, "b": 32, "step": 16}
    spans = sorted((r[4], r[4] + sizes[n]) for n, r in rows.items())
    assert spans[0][0] == 0 and all(x[1] == y[0] for x, y in itertools.pairwise(spans))
    assert not any(line.startswith("wrote") for line in lines)


def test_max_shard_size_writes_hf_sharded_layout(tmp_path: Path, capsys):
    rng = np.random.default_rng(1)
    names = [f"layers.{i}.weight" for i in range(4)]
    inputs = []
    for k in range(2):
        path = tmp_path / f"in{k}.safetensors"
        save_file({n: _rand(rng, 16, 16) for n in names}, str(path))
        inputs.append(path)
    out = tmp_path / "out"
    rc, _, stderr = run_cli(capsys, "merge", *inputs, "--alpha", "0.5", "-o", out,
                            "--max-shard-size", "1.5KB", "--quiet")
    assert rc == 0, stderr
    shard_names = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*shard_names, INDEX])
    index = json.loads((out / INDEX).read_text())
    assert index["metadata"]["total_size"] == 4 * 16 * 16 * 4
    assert index["weight_map"] == dict(zip(names, shard_names))
    xa, xb = load_file(str(inputs[0])), load_file(str(inputs[1]))
    for name, shard in index["weight_map"].items():
        tensors = load_file(str(out / shard))
        assert list(tensors) == [name]
        np.testing.assert_array_equal(tensors[name], (xa[name] + xb[name]) / 2)
    assert sorted(ladle.open(out).tensors) == sorted(names)


# ------------------------------------------------------------------- bad input


def test_bad_input_one_line_error(tmp_path: Path, models: list[Path], capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops}  ")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "merge", models[0], bad, "--alpha", "0.5", "-o", out)
    assert stdout == ""
    assert_one_line_error(rc, err, re.escape(f"{bad}: header: invalid JSON at byte 1"))
    assert not out.exists() and not (tmp_path / "out.ladle-partial").exists()


@pytest.mark.parametrize(("args", "pattern"), [
    (["soup", "{m0}", "{missing}"], r"\[Errno 2\] .*nope\.safetensors: no such file"),
    (["merge", "{m0}", "{m1}", "--weights", "1"], r"got 1 weight\(s\) for 2 input\(s\)"),
    (["merge", "{m0}", "{m1}", "--weights", "nan", "1"], r"weights must be finite"),
    (["soup", "{m0}", "{m1}", "--weights", "1", "-1"], r"soup weights sum to zero"),
    (["merge", "{m0}", "{m1}", "--alpha", "0.5", "--dtype", "int8"],
     r"unsupported output dtype 'int8'"),
    (["merge", "{m0}", "{m1}", "--alpha", "0.5", "--max-shard-size", "5XB"],
     r"cannot parse size '5XB'"),
    (["merge", "{m0}", "{m1}", "--alpha", "0.5", "--include", "nothing*"],
     r"no tensors selected"),
    (["merge", "{m0}", "{m1}", "--alpha", "0.5", "--kernel", "sse"],
     r"kernel must be one of auto, scalar, avx2, avx512, not 'sse'"),
    (["soup", "{m0}", "{m1}", "--greedy", "--kernel", "scalar"],
     r"--kernel applies to merges and soups, not to --greedy"),
])
def test_bad_arguments_one_line_error(tmp_path: Path, models: list[Path], capsys,
                                      args: list[str], pattern: str):
    subs = {"m0": models[0], "m1": models[1], "missing": tmp_path / "nope.safetensors"}
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, *[a.format(**subs) for a in args], "-o", out)
    assert stdout == ""
    assert_one_line_error(rc, err, pattern)
    assert not out.exists() and not (tmp_path / "out.ladle-partial").exists()


def test_kernel_option_writes_the_same_bytes(tmp_path: Path, models: list[Path], capsys):
    """--kernel picks the CPU kernels of a merge, a soup and a recipe; every set this
    CPU runs writes the scalar reference's bytes."""
    info = ladle.build_info()
    kernels = ["auto", *(["avx2"] if info["avx2_cpu"] else []),
               *(["avx512"] if info["avx512_cpu"] else [])]
    recipe = tmp_path / "dare.yml"
    recipe.write_text(json.dumps({
        "merge_method": "dare_ties", "base_model": str(models[0]), "dtype": "float32",
        "models": [{"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}}
                   for m in models[1:]]}))
    for name, args in (("merge", ["merge", *models, "--weights", "0.2", "0.3", "0.5"]),
                       ("soup", ["soup", *models]),
                       ("recipe", ["merge", "--config", recipe])):
        want = tmp_path / f"{name}-scalar"
        rc, _, err = run_cli(capsys, *args, "-o", want, "--quiet", "--kernel", "scalar")
        assert rc == 0, err
        for kernel in kernels:
            out = tmp_path / f"{name}-{kernel}"
            rc, _, err = run_cli(capsys, *args, "-o", out, "--quiet", "--kernel", kernel)
            assert rc == 0, err
            assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in want.iterdir())
            for p in want.iterdir():
                assert (out / p.name).read_bytes() == p.read_bytes(), (name, kernel, p.name)


def test_engine_failure_one_line_error(tmp_path: Path, capsys):
    """A failure inside the engine (int tensors differ) also ends in one line, no output."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": np.ones(4, np.float32), "step": np.array([1, 2], np.int64)}, str(a))
    save_file({"w": np.ones(4, np.float32), "step": np.array([1, 3], np.int64)}, str(b))
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "merge", a, b, "--alpha", "0.5", "-o", out, "--int-policy",
                         "error")
    assert_one_line_error(rc, err, r"tensor 'step' \(I64\) differs between .* at element 1")
    assert not out.exists() and not (tmp_path / "out.ladle-partial").exists()


def test_alpha_with_three_inputs_is_an_error(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "merge", *models, "--alpha", "0.5", "-o", out)
    assert stdout == ""
    assert_one_line_error(rc, err, r"--alpha takes exactly two checkpoints "
                                   r"\(THETA0 THETA1\), got 3")
    assert not out.exists()


def test_weights_and_alpha_are_exclusive(tmp_path: Path, models: list[Path], capsys):
    with pytest.raises(SystemExit) as info:
        main(["merge", str(models[0]), str(models[1]), "--alpha", "0.5", "--weights", "1", "1",
              "-o", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_overwrite(tmp_path: Path, models: list[Path], capsys):
    out = tmp_path / "out.safetensors"
    base = ["merge", models[0], models[1], "-o", out, "--quiet"]
    assert run_cli(capsys, *base, "--alpha", "0")[0] == 0
    first = out.read_bytes()
    rc, _, err = run_cli(capsys, *base, "--alpha", "1")
    assert_one_line_error(rc, err, re.escape(f"{out}: destination exists (use overwrite=True "
                                             f"/ --overwrite to replace it)"))
    assert out.read_bytes() == first
    rc, _, err = run_cli(capsys, *base, "--alpha", "1", "--overwrite")
    assert rc == 0, err
    np.testing.assert_array_equal(load_file(str(out))["w"], load_file(str(models[1]))["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [m.name for m in models] + [out.name])


def test_quiet_prints_nothing(tmp_path: Path, models: list[Path], capsys):
    rc, stdout, stderr = run_cli(capsys, "soup", *models, "-o", tmp_path / "out", "--quiet")
    assert rc == 0
    assert stdout == "" and stderr == ""
    assert (tmp_path / "out" / "model.safetensors").is_file()
    rc, stdout, _ = run_cli(capsys, "soup", *models, "-o", tmp_path / "out2")
    assert rc == 0
    assert re.fullmatch(rf"wrote {re.escape(str(tmp_path / 'out2'))}: 3 tensors in 1 shard\(s\)"
                        r", read .* in [0-9.]+ s \(.* GB/s, \d+ threads, \w+ kernels\)\n", stdout)


# ------------------------------------------------------------- dtype / filters


def _bf16_rne(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits with round-to-nearest-even (finite inputs)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _raw_tensor(path: Path, name: str) -> np.ndarray:
    info = ladle.open(path).tensors[name]
    return np.fromfile(info.file, dtype=np.uint16, count=info.n_bytes // 2, offset=info.offset)


def test_dtype_bf16_converts(tmp_path: Path, models: list[Path], capsys):
    # Exact ties in bf16: 1 + 2^-8 rounds down to 1 (even), 1 + 3·2^-8 up to 1 + 2^-6.
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.0], np.float32)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    xa, xb = load_file(str(models[0])), load_file(str(models[1]))
    save_file({"w": xa["w"], "ties": ties, "step": xa["step"]}, str(a))
    save_file({"w": xb["w"], "ties": ties, "step": xb["step"]}, str(b))
    out = tmp_path / "out.safetensors"
    rc, _, err = run_cli(capsys, "merge", a, b, "--alpha", "0.5", "--dtype", "bf16", "-o", out,
                         "--quiet")
    assert rc == 0, err
    tensors = ladle.open(out).tensors
    assert {n: t.dtype for n, t in tensors.items()} == {"w": "BF16", "ties": "BF16",
                                                        "step": "I64"}
    assert tensors["w"].n_bytes == 4 * 8 * 2
    exact = (xa["w"] + xb["w"]) / 2  # exact in fp32 by construction of the inputs
    np.testing.assert_array_equal(_raw_tensor(out, "w"), _bf16_rne(exact).ravel())
    np.testing.assert_array_equal(_raw_tensor(out, "ties"),
                                  np.array([0x3F80, 0x3F82, 0xBF80, 0x4040], np.uint16))
    with safe_open(str(out), framework="np") as f:
        np.testing.assert_array_equal(f.get_tensor("step"), [7, 11])


def test_include_exclude_filter_tensors(tmp_path: Path, capsys):
    names = ["layer.0.weight", "layer.0.bias", "layer.1.weight", "layer.1.bias", "head.weight"]
    inputs = []
    for k in range(2):
        path = tmp_path / f"in{k}.safetensors"
        save_file({n: np.full(3, float(k), np.float32) for n in names}, str(path))
        inputs.append(path)
    out = tmp_path / "out.safetensors"
    rc, _, err = run_cli(capsys, "soup", *inputs, "-o", out, "--quiet",
                         "--include", "layer.*", "--exclude", "*.bias")
    assert rc == 0, err
    got = load_file(str(out))
    assert sorted(got) == ["layer.0.weight", "layer.1.weight"]
    np.testing.assert_array_equal(got["layer.1.weight"], np.full(3, 0.5, np.float32))
    out2 = tmp_path / "out2.safetensors"
    rc, _, err = run_cli(capsys, "soup", *inputs, "-o", out2, "--quiet",
                         "--include", "head.*", "--include", "*.0.bias")
    assert rc == 0, err
    assert sorted(load_file(str(out2))) == ["head.weight", "layer.0.bias"]


def test_filters_apply_before_matching_inputs(tmp_path: Path, capsys):
    """A tensor present in only one input is fine when excluded."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": np.ones(2, np.float32), "only_a": np.ones(2, np.float32)}, str(a))
    save_file({"w": np.ones(2, np.float32)}, str(b))
    rc, _, err = run_cli(capsys, "soup", a, b, "-o", tmp_path / "x.safetensors", "--quiet")
    assert_one_line_error(rc, err, r"missing 1 tensor\(s\) of .*: 'only_a'")
    rc, _, err = run_cli(capsys, "soup", a, b, "-o", tmp_path / "x.safetensors", "--quiet",
                         "--exclude", "only_*")
    assert rc == 0, err
    assert list(load_file(str(tmp_path / "x.safetensors"))) == ["w"]


# ------------------------------------------------------------- directory inputs


def test_config_and_tokenizer_files_are_copied(tmp_path: Path, capsys):
    rng = np.random.default_rng(2)
    extras = {"config.json": '{"model_type": "llama"}',
              "generation_config.json": '{"do_sample": false}',
              "tokenizer.json": '{"version": "1.0"}',
              "tokenizer_config.json": '{"bos_token": "<s>"}',
              "special_tokens_map.json": "{}"}
    dirs = []
    for k in range(2):
        d = tmp_path / f"model{k}"
        d.mkdir()
        if k == 0:  # HF sharded input with an index, a stale .bin and a hidden file
            save_file({"w": _rand(rng, 4)}, str(d / "model-00001-of-00002.safetensors"))
            save_file({"b": _rand(rng, 2)}, str(d / "model-00002-of-00002.safetensors"))
            (d / INDEX).write_text(json.dumps({"metadata": {"total_size": 24}, "weight_map": {
                "w": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors"}}))
            (d / "pytorch_model.bin").write_bytes(b"stale weights")
            (d / ".hidden").write_text("x")
            for name, text in extras.items():
                (d / name).write_text(text)
        else:
            save_file({"w": _rand(rng, 4), "b": _rand(rng, 2)}, str(d / "model.safetensors"))
            (d / "config.json").write_text('{"model_type": "other"}')
        dirs.append(d)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "merge", *dirs, "--alpha", "0.5", "-o", out, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([*extras, "model.safetensors"])
    for name, text in extras.items():
        assert (out / name).read_text() == text  # from the first input
    # A single-file output gets only the weights.
    single = tmp_path / "single.safetensors"
    rc, _, err = run_cli(capsys, "merge", *dirs, "--alpha", "0.5", "-o", single, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model0", "model1", "out",
                                                          "single.safetensors"]
    merged = load_file(str(out / "model.safetensors"))
    shard1 = load_file(str(dirs[0] / "model-00001-of-00002.safetensors"))
    other = load_file(str(dirs[1] / "model.safetensors"))
    np.testing.assert_array_equal(merged["w"], (shard1["w"] + other["w"]) / 2)
    np.testing.assert_array_equal(load_file(str(single))["w"], merged["w"])


# ---------------------------------------------------------------- subprocess


def test_subprocess_merge_and_error(tmp_path: Path, models: list[Path]):
    out = tmp_path / "cli.safetensors"
    proc = run_subprocess("merge", models[0], models[1], "--alpha", "0.5", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: 3 tensors in 1 shard(s)")
    assert "Traceback" not in proc.stderr
    ref = tmp_path / "api.safetensors"
    ladle.interpolate(str(models[0]), str(models[1]), 0.5, ref, progress=False)
    assert out.read_bytes() == ref.read_bytes()

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((2**40).to_bytes(8, "little"))
    proc = run_subprocess("soup", models[0], bad, "-o", tmp_path / "soup")
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr,
                          re.escape(f"{bad}: header length 1099511627776 exceeds the 100 MB"))
    assert not (tmp_path / "soup").exists()
    assert not (tmp_path / "soup.ladle-partial").exists()

    proc = run_subprocess("inspect", out)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "metadata ladle_method = wise-ft alpha=0.5" in proc.stdout
