"""Compare ladle with plain PyTorch, mergekit and the machine's I/O ceiling, same bytes.

Generates (or reuses) Llama-shaped bf16 checkpoints, then, per input count and cache
state, runs every tool in its own child process (peak RSS / RssAnon sampled from /proc
every ~10 ms) and prints wall time, GB/s = (bytes read + written) / wall and ratios.
Each tool is timed from process start (interpreter and imports included) until its
output is on disk (ladle and the torch recipe fsync; mergekit is followed by
``sync -f``; the ceiling's ``dd`` uses ``conv=fsync``). Outputs are checked tensor by
tensor against ladle's.

Example:
    python benchmarks/compare.py --size 1GB --inputs 2 4 --json bench-work/compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
from llama_checkpoints import checkpoint_files, generate_checkpoints
from memwatch import run_measured

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:
    import ladle
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(REPO / "python"))
    import ladle
from ladle.engine._units import format_size, parse_size

LADLE_PYTHONPATH = str(Path(ladle.__file__).resolve().parent.parent)
_ITEM_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: ladle importable, no hub access."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (LADLE_PYTHONPATH,
                                                    env.get("PYTHONPATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    # Every tool runs as installed, its modules byte-compiled once (the first run
    # writes __pycache__): a shell that sets PYTHONDONTWRITEBYTECODE would otherwise
    # add recompiling every module to every measured run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def weights_for(n: int) -> list[float]:
    """WiSE-FT alpha=0.5 for two inputs, a uniform soup otherwise."""
    return [1.0 / n] * n


def ladle_cmd(inputs: list[Path], out: Path) -> list[str]:
    """The ladle CLI: ``merge --alpha 0.5`` for two inputs, ``soup`` for more."""
    base = [sys.executable, "-m", "ladle"]
    if len(inputs) == 2:
        return base + ["merge", str(inputs[0]), str(inputs[1]), "--alpha", "0.5", "-o", str(out)]
    return base + ["soup", *map(str, inputs), "-o", str(out)]


def torch_cmd(inputs: list[Path], out: Path) -> list[str]:
    """The plain-PyTorch recipe (benchmarks/torch_merge.py)."""
    weights = [repr(w) for w in weights_for(len(inputs))]
    return [sys.executable, str(HERE / "torch_merge.py"), *map(str, inputs),
            "--weights", *weights, "-o", str(out)]


def mergekit_cmd(inputs: list[Path], out: Path, workdir: Path) -> list[str] | None:
    """``mergekit-yaml`` linear merge followed by ``sync -f``; None if not installed."""
    exe = shutil.which("mergekit-yaml")
    if exe is None:
        return None
    lines = ["merge_method: linear", "dtype: bfloat16", "models:"]
    for path, w in zip(inputs, weights_for(len(inputs))):
        lines += [f"  - model: {path}", "    parameters:", f"      weight: {w!r}"]
    config = workdir / f"mergekit-{len(inputs)}.yaml"
    config.write_text("\n".join(lines) + "\n")
    script = '"$0" "$1" "$2" --no-copy-tokenizer && sync -f "$2"'
    return ["sh", "-c", script, exe, str(config), str(out)]


def warm_up(files: list[Path]) -> None:
    """Read every file once so its pages are in the page cache."""
    buf = bytearray(16 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def drop_caches(files: list[Path]) -> str:
    """Evict ``files`` from the page cache: ``drop_caches`` if permitted, else fadvise.

    Returns:
        How it was done ("drop_caches" or "fadvise").
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"


def remove(path: Path) -> None:
    """Delete a file or directory (and ladle's partial directory beside it)."""
    for p in (path, path.with_name(path.name + ".ladle-partial")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def dir_bytes(path: Path) -> int:
    """Bytes of the ``*.safetensors`` files of a checkpoint."""
    return sum(f.stat().st_size for f in checkpoint_files(path))


def compare_outputs(reference: Path, other: Path) -> dict:
    """Compare two checkpoints tensor by tensor, byte for byte.

    Returns:
        dict(n_tensors, n_equal, mismatched=[(name, n_differing_elems)], missing=[names]).
    """
    a, b = ladle.open(reference), ladle.open(other)
    mismatched, missing, n_equal = [], sorted(set(a.tensors) ^ set(b.tensors)), 0
    for name, ta in a.tensors.items():
        tb = b.tensors.get(name)
        if tb is None:
            continue
        if (ta.dtype, ta.shape) != (tb.dtype, tb.shape):
            mismatched.append((name, -1))
            continue
        xa = np.fromfile(ta.file, np.uint8, ta.n_bytes, offset=ta.offset)
        xb = np.fromfile(tb.file, np.uint8, tb.n_bytes, offset=tb.offset)
        if np.array_equal(xa, xb):
            n_equal += 1
            continue
        item = _ITEM_BYTES.get(ta.dtype, 1)
        diff = (xa != xb).reshape(-1, item).any(axis=1)
        mismatched.append((name, int(diff.sum())))
    return {"n_tensors": len(a.tensors), "n_equal": n_equal, "mismatched": mismatched,
            "missing": missing}


def self_seconds(stdout: str) -> float | None:
    """The time a tool reports for its own work (without interpreter start and imports):
    ladle's summary line or torch_merge.py's JSON; None if absent."""
    m = re.search(r" in ([0-9.]+) s \(", stdout)
    if m:
        return float(m.group(1))
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line).get("seconds", "nan"))
    return None


def run_tool(name: str, cmd: list[str], out: Path, inputs: list[Path], mode: str,
             repeat: int) -> dict:
    """Run one tool ``repeat`` times in ``mode`` (warm/cold); median wall, max peaks."""
    runs = []
    cold_method = None
    files = [f for p in inputs for f in checkpoint_files(p)]
    for _ in range(repeat):
        remove(out)
        if mode == "warm":
            warm_up(files)
            os.sync()
        else:
            cold_method = drop_caches(files)
        r = run_measured(cmd, env=child_env())
        r["self_s"] = self_seconds(r["stdout"])
        runs.append(r)
        if r["rc"] != 0:
            print(f"  {name} failed (rc {r['rc']}):\n{r['stderr'][-2000:]}", file=sys.stderr)
            break
    ok = [r for r in runs if r["rc"] == 0]
    return {
        "tool": name, "cmd": cmd, "ok": len(ok) == len(runs), "runs": runs,
        "cold_method": cold_method,
        "wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
        "self_s": statistics.median(r["self_s"] for r in ok) if ok and all(
            r["self_s"] is not None for r in ok) else None,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "peak_rss_anon_bytes": max(r["peak_rss_anon_bytes"] for r in runs),
    }


def run_ceiling(inputs: list[Path], out: Path, n_out_bytes: int, mode: str,
                repeat: int) -> dict:
    """Read all inputs (``cat > /dev/null``), then write + fsync a file of the output's
    size (``dd conv=fsync``): the least time the same traffic takes on this machine."""
    files = [str(f) for p in inputs for f in checkpoint_files(p)]
    read = run_tool("read", ["sh", "-c", 'cat "$@" > /dev/null', "sh", *files], out,
                    inputs, mode, repeat)
    write = run_tool("write", ["dd", "if=/dev/zero", f"of={out}", "bs=16M",
                               f"count={n_out_bytes}", "iflag=count_bytes", "conv=fsync"],
                     out, inputs, mode, repeat)
    remove(out)
    ok = read["ok"] and write["ok"]
    return {
        "tool": "ceiling (cat+dd)", "ok": ok, "parts": [read, write],
        "read_s": read["wall_s"], "write_s": write["wall_s"],
        "wall_s": read["wall_s"] + write["wall_s"] if ok else None,
        "peak_rss_bytes": max(read["peak_rss_bytes"], write["peak_rss_bytes"]),
        "peak_rss_anon_bytes": max(read["peak_rss_anon_bytes"], write["peak_rss_anon_bytes"]),
    }


def run_suite(inputs: list[Path], mode: str, workdir: Path, repeat: int,
              keep: bool) -> dict:
    """All tools on one set of inputs in one cache state; outputs verified vs ladle."""
    n = len(inputs)
    n_read = sum(dir_bytes(p) for p in inputs)
    n_written = dir_bytes(inputs[0])  # same dtypes and tensors as any input
    outs = {t: workdir / f"out-{t}-{n}" for t in ("ladle", "torch", "mergekit", "ceiling")}
    rows = [run_ceiling(inputs, outs["ceiling"], n_written, mode, repeat),
            run_tool("ladle", ladle_cmd(inputs, outs["ladle"]), outs["ladle"], inputs, mode,
                     repeat),
            run_tool("torch", torch_cmd(inputs, outs["torch"]), outs["torch"], inputs, mode,
                     repeat)]
    mk = mergekit_cmd(inputs, outs["mergekit"], workdir)
    if mk is None:
        rows.append({"tool": "mergekit", "ok": False, "skipped": "mergekit-yaml not installed",
                     "wall_s": None})
    else:
        rows.append(run_tool("mergekit", mk, outs["mergekit"], inputs, mode, repeat))
    if rows[1]["ok"]:
        n_written = dir_bytes(outs["ladle"])
        for row in rows[2:]:
            if row["ok"]:
                row["verify"] = compare_outputs(outs["ladle"], outs[row["tool"]])
    if not keep:
        for t in ("ladle", "torch", "mergekit"):
            remove(outs[t])
    return {"n_inputs": n, "mode": mode, "bytes_read": n_read, "bytes_written": n_written,
            "rows": rows}


def format_table(suite: dict) -> str:
    """The printed table of one suite."""
    traffic = suite["bytes_read"] + suite["bytes_written"]
    rows = suite["rows"]
    walls = {r["tool"]: r["wall_s"] for r in rows if r.get("ok")}
    ceiling = rows[0]["wall_s"] if rows[0]["ok"] else None
    head = (f"{suite['n_inputs']} inputs, {suite['mode']}: read {format_size(suite['bytes_read'])}"
            f" + write {format_size(suite['bytes_written'])} = {traffic / 1e9:.2f} GB")
    method = next((r.get("cold_method") for r in rows if r.get("cold_method")), None)
    if method == "drop_caches":
        head += " (page cache dropped before each run)"
    elif method == "fadvise":
        head += (" (drop_caches not permitted: inputs evicted with posix_fadvise(DONTNEED)"
                 " before each run)")
    cols = f"{'tool':<18}{'wall s':>8}{'self s':>8}{'GB/s':>7}{'peak RSS':>12}{'peak anon':>12}" \
           f"{'of ceil':>9}{'vs torch':>10}{'vs mergekit':>13}"
    lines = [head, cols, "-" * len(cols)]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"{r['tool']:<18}  {r.get('skipped', 'failed')}")
            continue
        wall = r["wall_s"]

        def ratio(base: float | None, w: float = wall) -> str:
            return f"{base / w:.2f}x" if base else "-"

        own = f"{r['self_s']:.2f}" if r.get("self_s") is not None else "-"
        lines.append(f"{r['tool']:<18}{wall:>8.2f}{own:>8}{traffic / wall / 1e9:>7.2f}"
                     f"{format_size(r['peak_rss_bytes']):>12}"
                     f"{format_size(r['peak_rss_anon_bytes']):>12}"
                     f"{ratio(ceiling):>9}{ratio(walls.get('torch')):>10}"
                     f"{ratio(walls.get('mergekit')):>13}")
    c = rows[0]
    if c.get("ok"):
        lines.append(f"  ceiling = read {c['read_s']:.2f} s + write/fsync {c['write_s']:.2f} s"
                     f" (sequential); 'of ceil' = ceiling wall / tool wall, 'vs X' = X wall /"
                     f" tool wall")
    for r in rows[2:]:
        v = r.get("verify")
        if v is None:
            continue
        if not v["mismatched"] and not v["missing"]:
            lines.append(f"  verify: {r['tool']} output == ladle output, all "
                         f"{v['n_tensors']} tensors byte-identical")
        else:
            lines.append(f"  verify: {r['tool']} differs from ladle: {len(v['mismatched'])} "
                         f"tensor(s) {v['mismatched'][:5]}, missing {v['missing'][:5]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="2GB", help="approximate size of each checkpoint")
    p.add_argument("--workdir", type=Path, default=REPO / "bench-work" / "compare")
    p.add_argument("--inputs", type=int, nargs="+", default=[2, 4], help="input counts")
    p.add_argument("--cold", action="store_true", help="also run with inputs not cached")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool (median wall)")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--keep-outputs", action="store_true", help="keep merged outputs")
    args = p.parse_args(argv)
    if min(args.inputs) < 2:
        p.error("--inputs: at least 2")
    size = parse_size(args.size)
    args.workdir.mkdir(parents=True, exist_ok=True)
    n_max = max(args.inputs)
    print(f"generating/reusing {n_max} checkpoints of ~{format_size(size)} in {args.workdir}",
          flush=True)
    ckpts = generate_checkpoints(args.workdir / "inputs", n_max, size)
    if shutil.which("mergekit-yaml") is None:
        print("note: mergekit-yaml not installed; mergekit is skipped "
              "(pip install mergekit to include it)")
    modes = ["warm", "cold"] if args.cold else ["warm"]
    suites = []
    for n in args.inputs:
        for mode in modes:
            print(f"running {n} inputs, {mode} ...", flush=True)
            suite = run_suite(ckpts[:n], mode, args.workdir, args.repeat, args.keep_outputs)
            suites.append(suite)
            print(format_table(suite) + "\n", flush=True)
    if args.json:
        info = {"size": size, "cpus": os.cpu_count(), "ladle": ladle.build_info(),
                "checkpoints": [str(c) for c in ckpts], "suites": suites}
        args.json.write_text(json.dumps(info, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
