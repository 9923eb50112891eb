"""One rank of the distributed tests (launched by torch.distributed.run from
test_distributed.py). ``python dist_worker.py WORKDIR SCENARIO...``: reads
``WORKDIR/job.json`` and writes what it saw to ``WORKDIR/<scenario>.rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ladle
from ladle.engine import distributed
from ladle.engine.output import OutputDir

RANK = int(os.environ.get("RANK", "0"))  # the test imports method_options too
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


def report(r) -> dict:
    return {"out": str(r.out), "bytes_read": r.bytes_read, "bytes_written": r.bytes_written,
            "rank_bytes_read": r.rank_bytes_read, "world_size": r.world_size,
            "n_shards": r.n_shards}


def merge(job: dict) -> dict:
    r = ladle.merge(job["inputs"], job["weights"], job["out"] + f".w{WORLD}",
                    max_shard_size=job["shard"], threads=1, progress=False)  # auto: WORLD_SIZE
    return report(r)


def _fail_on_rank(rank: int, exc: BaseException, after: int):
    """Make ``rank`` raise ``exc`` once it has recorded ``after`` shards."""
    original = OutputDir.record_shard
    seen = [0]

    def record(self, name, crc32c=None):
        original(self, name, crc32c)
        seen[0] += 1
        if RANK == rank and seen[0] >= after:
            raise exc

    OutputDir.record_shard = record
    return lambda: setattr(OutputDir, "record_shard", original)


def error(job: dict) -> dict:
    out = job["out"] + ".error"
    restore = _fail_on_rank(1, ladle.LadleIOError(28, "disk full (injected)"), 1)
    try:
        ladle.merge(job["inputs"], job["weights"], out, max_shard_size=job["shard"],
                    threads=1, progress=False, distributed=True)
        raised = None
    except Exception as e:  # noqa: BLE001
        raised = f"{type(e).__name__}: {e}"
    finally:
        restore()
    distributed.group().barrier()
    return {"raised": raised, "dest_exists": Path(out).exists(),
            "partial_exists": Path(out + ".ladle-partial").exists()}


def _interrupted_then_resumed(out: str, run) -> dict:
    """``run(out)`` interrupted on rank 1, then ``run(out, resume=True)``: which
    finished shards the interrupted run kept, and their inode/mtime afterwards."""
    partial = Path(out + ".ladle-partial")
    restore = _fail_on_rank(1, KeyboardInterrupt(), 1)
    try:
        run(out)
        raised = None
    except BaseException as e:  # noqa: BLE001
        raised = type(e).__name__
    finally:
        restore()
    g = distributed.group()
    g.barrier()
    kept = {p.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in partial.iterdir()
            if p.suffix == ".safetensors"} if partial.is_dir() else {}
    g.barrier()
    r = run(out, resume=True)
    after = {name: [(Path(out) / name).stat().st_ino, (Path(out) / name).stat().st_mtime_ns]
             for name in kept}
    return {"raised": raised, "kept": kept, "after": after, **report(r)}


def resume(job: dict) -> dict:
    def run(out: str, **extra):
        return ladle.merge(job["inputs"], job["weights"], out, max_shard_size=job["shard"],
                           threads=1, progress=False, distributed=True, **extra)

    return _interrupted_then_resumed(job["out"] + ".resume", run)


def method_options(job: dict, method: str) -> dict:
    """merge_models arguments of the method scenarios (the test runs them in one
    process too)."""
    base, *models = job["inputs"]
    options = {"base_model": base, "max_shard_size": job["shard"], "threads": 1,
               "progress": False}
    if method == "slerp":
        return {"models": models[:1], "parameters": {"t": job["slerp_t"]}, **options}
    return {"models": models, "model_parameters": job["ties_models"], "seed": 3, **options}


def _merge_method(job: dict, method: str, out: str, **extra):
    from ladle.methods.methods import merge_models

    options = method_options(job, method)
    return merge_models(method, options.pop("models"), out, **options, **extra)


def ties(job: dict) -> dict:  # auto-distributed under torchrun, like merge
    return report(_merge_method(job, "ties", job["out"] + f".ties.w{WORLD}"))


def slerp(job: dict) -> dict:
    return report(_merge_method(job, "slerp", job["out"] + f".slerp.w{WORLD}",
                                distributed=True))


def recipe(job: dict) -> dict:
    from ladle.cli.cli import main as cli_main

    out = job["out"] + f".recipe.w{WORLD}"
    rc = cli_main(["merge", "--config", job["recipe"], "-o", out, "--quiet", "--distributed",
                   "--max-shard-size", job["shard"], "--threads", "1"])
    return {"rc": rc, "out": out}


def ties_resume(job: dict) -> dict:
    return _interrupted_then_resumed(job["out"] + ".ties-resume",
                                     lambda out, **extra: _merge_method(job, "ties", out,
                                                                        **extra))


def bin_inputs(job: dict) -> dict:
    """A linear merge and TIES of the .bin copies of the inputs, distributed."""
    from ladle.methods.methods import merge_models

    base, *models = job["bin_inputs"]
    common = {"max_shard_size": job["shard"], "threads": 1, "progress": False,
              "distributed": True}
    linear = ladle.merge(job["bin_inputs"], job["weights"], job["out"] + f".bin.w{WORLD}",
                         **common)
    ties = merge_models("ties", models, job["out"] + f".bin-ties.w{WORLD}", base_model=base,
                        model_parameters=job["ties_models"], seed=3, **common)
    return {"merge": report(linear), "ties": report(ties)}


def greedy(job: dict) -> dict:
    import torch

    from toy_models import data, mlp

    x, y = data()
    xs, ys = x[RANK::WORLD], y[RANK::WORLD]

    def evaluate(module):
        with torch.no_grad():
            return -torch.nn.functional.cross_entropy(module(xs), ys).item(), len(ys)

    res = ladle.greedy_soup(mlp(9), job["soup_inputs"], evaluate, out=job["out"] + ".greedy",
                            distributed=True)
    return {"history": res.history, "counts": res.counts, "score": res.score,
            "individual": res.individual_scores, "out": str(res.out)}


def learned(job: dict) -> dict:
    from toy_models import data, mlp

    x, y = data()
    res = ladle.learned_soup(mlp(9), job["soup_inputs"][:3],
                             [(x[RANK::WORLD], y[RANK::WORLD])], epochs=3, lr=0.1,
                             distributed=True)
    return {"alphas": res.alphas, "beta": res.beta, "losses": res.losses}


def main() -> None:
    workdir = Path(sys.argv[1])
    job = json.loads((workdir / "job.json").read_text())
    for scenario in sys.argv[2:]:
        result = globals()[scenario](job)
        (workdir / f"{scenario}.rank{RANK}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
