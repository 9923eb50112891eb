"""Distributed merges and soups: 2 (and 4) CPU ranks on gloo under torch.distributed.run,
compared with single-process runs byte for byte and decision for decision."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from child_env import child_env

torch = pytest.importorskip("torch", reason="distributed runs need torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import ladle
from ladle.engine.distributed import partition, wanted

from toy_models import data, ingredients, mlp

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
SHARD = "200KB"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir: Path, nproc: int, *scenarios: str) -> list[dict[str, dict]]:
    env = child_env(OMP_NUM_THREADS="1", LADLE_DEBUG="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER),
           str(workdir), *scenarios]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [{s: json.loads((workdir / f"{s}.rank{r}.json").read_text()) for s in scenarios}
            for r in range(nproc)]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    g = torch.Generator().manual_seed(0)
    inputs = []
    for k in range(3):
        d = tmp / f"in{k}"
        d.mkdir()
        tensors = {f"layers.{i}.weight": torch.randn(100 + 37 * i, 300, generator=g)
                   .to(torch.bfloat16) for i in range(8)}
        tensors["step"] = torch.tensor([7, 8], dtype=torch.int64)
        ladle.save(tensors, d / "model.safetensors")
        (d / "config.json").write_text('{"model_type": "toy"}\n')
        inputs.append(str(d))
        b = tmp / f"in{k}-bin"  # the same model as a PyTorch .bin directory
        b.mkdir()
        torch.save(tensors, b / "pytorch_model.bin")
        (b / "config.json").write_text('{"model_type": "toy"}\n')
    soup_inputs = [str(p) for p in ingredients(tmp, 4, mlp(0), noise=0.2, bad=2)]
    recipe = {"merge_method": "dare_ties", "base_model": inputs[0], "dtype": "bfloat16",
              "parameters": {"normalize": True},
              "models": [{"model": m, "parameters": {"weight": 0.8, "density": 0.6}}
                         for m in inputs[1:]]}
    (tmp / "recipe.yml").write_text(json.dumps(recipe))  # JSON is YAML
    spec = {"inputs": inputs, "weights": [0.5, 0.25, 0.25], "shard": SHARD,
            "out": str(tmp / "dist-out"), "soup_inputs": soup_inputs,
            "ties_models": [{"weight": 1.0, "density": 0.5},
                            {"weight": 0.7, "density": [0.9, 0.3]}],
            "slerp_t": [0.0, 0.3, 1.0], "recipe": str(tmp / "recipe.yml"),
            "bin_inputs": [f"{i}-bin" for i in inputs]}
    (tmp / "job.json").write_text(json.dumps(spec))
    ref = ladle.merge(inputs, spec["weights"], tmp / "single", max_shard_size=SHARD,
                      threads=1, progress=False, distributed=False)
    return tmp, spec, ref


def test_partition_is_balanced_and_deterministic():
    assert partition([5, 1, 4, 2], 2) == [[0, 1], [2, 3]]
    assert partition([3, 3, 3], 4) == [[0], [1], [2], []]
    parts = partition([10] * 7 + [1], 3)
    assert sorted(i for p in parts for i in p) == list(range(8))
    assert wanted(False) is False and wanted(True) is True


def test_two_ranks(job):
    tmp, spec, ref = job
    ranks = _launch(tmp, 2, "merge", "error", "resume", "greedy", "learned")
    single = _files(tmp / "single")
    assert ref.n_shards >= 6 and "config.json" in single

    # merge (auto-distributed under torchrun): byte-identical, same report on every rank,
    # each rank read about half of the input bytes.
    reports = [r["merge"] for r in ranks]
    assert reports[0] == reports[1]
    rep = reports[0]
    assert rep["world_size"] == 2 and rep["bytes_read"] == ref.bytes_read
    assert _files(Path(rep["out"])) == single
    for b in rep["rank_bytes_read"]:
        assert 0.35 * ref.bytes_read <= b <= 0.65 * ref.bytes_read, rep["rank_bytes_read"]

    # an error on rank 1 aborts every rank; nothing is left behind
    err = [r["error"] for r in ranks]
    assert err[1]["raised"].startswith("LadleIOError") and "injected" in err[1]["raised"]
    assert err[0]["raised"].startswith("RankFailedError") and "rank 1" in err[0]["raised"]
    assert not any(e["dest_exists"] or e["partial_exists"] for e in err)

    # interrupted on rank 1 after one shard: finished shards of both ranks are kept
    # and reused in place by --resume; output still byte-identical
    res = [r["resume"] for r in ranks]
    assert res[1]["raised"] == "KeyboardInterrupt" and res[0]["raised"] == "RankFailedError"
    assert 0 < len(res[0]["kept"]) < ref.n_shards
    assert res[0]["after"] == res[0]["kept"]
    assert _files(Path(res[0]["out"])) == single
    assert res[0]["bytes_read"] < ref.bytes_read

    # greedy soup on half the held-out data per rank == single process on all of it
    x, y = data()

    def evaluate(module):
        with torch.no_grad():
            return -torch.nn.functional.cross_entropy(module(x), y).item()

    reference = ladle.greedy_soup(mlp(9), spec["soup_inputs"], evaluate, distributed=False)
    g0, g1 = ranks[0]["greedy"], ranks[1]["greedy"]
    assert g0 == g1
    assert g0["counts"] == reference.counts and reference.counts[2] == 0
    assert [(h["candidate"], h["accepted"]) for h in g0["history"]] == \
        [(h["candidate"], h["accepted"]) for h in reference.history]
    assert g0["score"] == pytest.approx(reference.score, abs=1e-6)
    assert (Path(g0["out"]) / "model.safetensors").is_file()

    # learned soup: per-tensor dot products all-reduced == the full-batch gradient
    lref = ladle.learned_soup(mlp(9), spec["soup_inputs"][:3], [(x, y)], epochs=3, lr=0.1,
                              distributed=False)
    l0, l1 = ranks[0]["learned"], ranks[1]["learned"]
    assert l0 == l1
    flat = [a for row in l0["alphas"] for a in row]
    assert flat == pytest.approx([a for row in lref.alphas for a in row], abs=1e-6)
    assert l0["losses"] == pytest.approx(lref.losses, abs=1e-6)


def test_two_ranks_methods_and_recipes(job):
    """TIES, SLERP (Gram statistics on the rank owning each tensor) and a --config
    recipe split across 2 ranks write the bytes of one process; an interrupted
    distributed TIES run resumes from the shards both ranks finished."""
    from dist_worker import method_options

    from ladle.cli.cli import main as cli_main
    from ladle.methods.methods import merge_models

    tmp, spec, _ = job
    ranks = _launch(tmp, 2, "ties", "slerp", "recipe", "ties_resume", "bin_inputs")
    for method in ("ties", "slerp"):
        options = method_options(spec, method)
        single = tmp / f"single-{method}"
        ref = merge_models(method, options.pop("models"), single, distributed=False, **options)
        assert ref.n_shards >= 6
        reports = [r[method] for r in ranks]
        assert reports[0] == reports[1] and reports[0]["world_size"] == 2
        assert reports[0]["bytes_read"] == ref.bytes_read
        assert all(b > 0 for b in reports[0]["rank_bytes_read"]), reports[0]
        assert _files(Path(reports[0]["out"])) == _files(single), method

    single = tmp / "single-recipe"
    assert cli_main(["merge", "--config", spec["recipe"], "-o", str(single), "--quiet",
                     "--max-shard-size", SHARD, "--threads", "1"]) == 0
    assert [r["recipe"]["rc"] for r in ranks] == [0, 0]
    assert _files(Path(ranks[0]["recipe"]["out"])) == _files(single)

    res = [r["ties_resume"] for r in ranks]
    assert res[1]["raised"] == "KeyboardInterrupt" and res[0]["raised"] == "RankFailedError"
    assert 0 < len(res[0]["kept"]) < ranks[0]["ties"]["n_shards"]
    assert res[0]["after"] == res[0]["kept"]  # reused in place, not rewritten
    assert _files(Path(res[0]["out"])) == _files(tmp / "single-ties")

    # PyTorch .bin directories take the same distributed path (linear and TIES),
    # config files included.
    for what, run in (("merge", lambda out: ladle.merge(
            spec["bin_inputs"], spec["weights"], out, max_shard_size=SHARD, threads=1,
            progress=False, distributed=False)),
                      ("ties", lambda out: merge_models(
            "ties", spec["bin_inputs"][1:], out, base_model=spec["bin_inputs"][0],
            model_parameters=spec["ties_models"], seed=3, max_shard_size=SHARD, threads=1,
            progress=False, distributed=False))):
        single = tmp / f"single-bin-{what}"
        assert run(single).n_shards >= 6
        dist = [r["bin_inputs"][what] for r in ranks]
        assert dist[0] == dist[1] and dist[0]["world_size"] == 2
        assert all(b > 0 for b in dist[0]["rank_bytes_read"]), dist[0]
        assert "config.json" in _files(single)
        assert _files(Path(dist[0]["out"])) == _files(single), what


@pytest.mark.skipif((os.cpu_count() or 1) < 4 and not os.environ.get("LADLE_TEST_4RANKS"),
                    reason="4 ranks on fewer than 4 cores take ~16 s (torch start-up); "
                           "set LADLE_TEST_4RANKS=1 to run")
def test_four_ranks_merge(job):
    tmp, _, ref = job
    ranks = _launch(tmp, 4, "merge")
    rep = ranks[0]["merge"]
    assert all(r["merge"] == rep for r in ranks) and rep["world_size"] == 4
    assert _files(Path(rep["out"])) == _files(tmp / "single")
    assert sum(rep["rank_bytes_read"]) == ref.bytes_read
    for b in rep["rank_bytes_read"]:
        assert 0.1 * ref.bytes_read <= b <= 0.4 * ref.bytes_read, rep["rank_bytes_read"]
