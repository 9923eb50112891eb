"""Merges and soups across ``torch.distributed`` ranks (torchrun, or any launcher that
sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``); collectives go over a
gloo group, so CPU-only nodes work and GPU jobs need no NCCL tensors.

Merge: the plan's output shards are partitioned across ranks, balanced by bytes
(read + written) with a deterministic greedy (largest shard first, to the least
loaded rank). Rank 0 takes the destination's lock and creates (or, with resume,
checks) ``<dest>.ladle-partial/`` on the shared file system; every rank streams its
own shards into it and records them in its own manifest
(``.ladle-manifest.rank00003.json``); the ranks then exchange a status and their
finished shards, and only when every rank succeeded does rank 0 write
``model.safetensors.index.json`` and the extra files and commit with one rename.
The output is byte-identical to a single-process merge of the same plan.

Soups: every rank holds a replica of the live model and evaluates it on its own
slice of the held-out data; ``evaluate`` returns a float (the mean over the local
slice) or ``(mean, weight)`` (e.g. the local example count) and the ranks agree on
the weighted mean, so every rank takes the same greedy decision. The learned
soup's per-tensor dot products (and the loss and ∂L/∂β) are all-reduced the same way.

``import ladle`` does not import torch; this module imports ``torch.distributed``
only when a distributed run starts.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendError, LadleError, LadleValueError
from ..scores import as_score
from .output import MANIFEST_NAME, OutputDir, file_crc32c
from .output import is_manifest_name as _is_manifest

RANK_MANIFEST = ".ladle-manifest.rank{:05d}.json"
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailedError(LadleError, RuntimeError):
    """Another rank of a distributed merge or soup failed; this rank stopped with it."""


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def wanted(distributed: bool | None) -> bool:
    """``distributed=None`` (auto): True when launched with WORLD_SIZE > 1 or when
    torch.distributed is already initialised with more than one rank."""
    if distributed is not None:
        return bool(distributed)
    if env_world_size() > 1:
        return True
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1)


class Group:
    """The ranks of this job and the few collectives ladle needs (over gloo)."""

    def __init__(self, dist: Any, pg: Any):
        self.dist = dist
        self.pg = pg
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier(group=self.pg)

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(out, obj, group=self.pg)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=src, group=self.pg)
        return box[0]

    def sum_f64(self, values: Sequence[float]) -> list[float]:
        """All-reduce (sum) in fp64; rank 0's result is broadcast so every rank
        holds the same bits whatever the reduction order."""
        import torch

        t = torch.tensor(list(values), dtype=torch.float64)
        self.dist.all_reduce(t, group=self.pg)
        self.dist.broadcast(t, src=0, group=self.pg)
        return t.tolist()

    def check(self, error: BaseException | None) -> None:
        """Every rank reports whether its step failed; if any did, every rank
        raises (the failing one its own error, the others RankFailedError)."""
        status = None if error is None else f"{type(error).__name__}: {error}"
        statuses = self.all_gather(status)
        if error is not None:
            raise error
        failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
        if failed:
            rank, text = failed[0]
            raise RankFailedError(f"rank {rank} of {self.world_size} failed: {text}")

    # -- soups ---------------------------------------------------------------------

    def mean_evaluate(self, evaluate: Callable[[Any], Any]) -> Callable[[Any], float]:
        """Wrap ``evaluate(module) -> mean | (mean, weight)`` on the local slice into
        the weighted mean over all ranks (the same float on every rank)."""

        def wrapped(module: Any) -> float:
            error, mean, weight = None, 0.0, 0.0
            try:
                mean, weight = split_score(evaluate(module))
            except Exception as e:  # noqa: BLE001 - reported to every rank by check()
                error = e
            self.check(error)
            total, weights = self.sum_f64([mean * weight, weight])
            if not weights > 0:
                raise LadleValueError(f"evaluation weights sum to {weights} over "
                                      f"{self.world_size} ranks; they must be positive")
            return total / weights

        return wrapped

    def on_rank0(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; every rank gets its result or raises its error."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - reported to every rank by check()
                error = e
        self.check(error)
        return self.broadcast(result)


_GROUP: Group | None = None


def group() -> Group:
    """The job's gloo group, initialising torch.distributed from the environment
    when nobody has yet."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    try:
        import torch.distributed as dist
    except ImportError as e:
        raise BackendError("distributed runs need torch (torch.distributed)") from e
    if not dist.is_available():
        raise BackendError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [v for v in _ENV if v not in os.environ]
        if missing:
            raise LadleValueError(f"distributed=True but torch.distributed is not initialised "
                                  f"and {', '.join(missing)} not set: launch with torchrun or "
                                  f"call torch.distributed.init_process_group first")
        dist.init_process_group("gloo")
        atexit.register(_shutdown, dist)
    pg = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    _GROUP = Group(dist, pg)
    return _GROUP


def _shutdown(dist: Any) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def split_score(value: Any) -> tuple[float, float]:
    """``mean`` or ``(mean, weight)`` -> (mean, weight) as floats."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise LadleValueError(f"evaluate must return a float or (mean, weight), got {value!r}")
        return (as_score(value[0], "evaluate(module) (the mean of a (mean, weight) pair)"),
                as_score(value[1], "evaluate(module) (the weight of a (mean, weight) pair)"))
    return as_score(value, "evaluate(module) on this rank"), 1.0


def soup_group(distributed: bool | None) -> Group | None:
    """The group of a distributed soup, or None for a single-process one."""
    return group() if wanted(distributed) else None


def reduce_gradient(g: Group, dots: dict[str, list[float]], loss: float, beta_grad: float,
                    weight: float) -> tuple[dict[str, list[float]], float, float]:
    """Weighted mean over ranks of the learned soup's per-tensor dot products
    ⟨∂L/∂θ_t, θ_{k,t}⟩, its loss and ∂L/∂β (each rank's on its own batch)."""
    names = sorted(dots)
    layout = json.dumps([[n, len(dots[n])] for n in names])
    if len(set(g.all_gather(layout))) != 1:
        raise LadleValueError("ranks computed gradients for different tensors")
    flat = [v * weight for n in names for v in dots[n]] + [loss * weight, beta_grad * weight,
                                                         weight]
    total = g.sum_f64(flat)
    w = total[-1]
    if not w > 0:
        raise LadleValueError(f"batch weights sum to {w} over the ranks; they must be positive")
    out, i = {}, 0
    for n in names:
        k = len(dots[n])
        out[n] = [v / w for v in total[i:i + k]]
        i += k
    return out, total[-3] / w, total[-2] / w


def default_batch_weight(batch: Any) -> float:
    """Examples in a batch ``(x, y)`` (len of its last element), else 1."""
    if isinstance(batch, (tuple, list)) and batch and hasattr(batch[-1], "__len__"):
        return float(len(batch[-1]))
    return 1.0


# -- merge -------------------------------------------------------------------------

def partition(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Deterministic greedy (LPT): items largest first (ties: lower index) to the
    least loaded rank (ties: lower rank); each rank's items in increasing order.

    Example:
        >>> partition([5, 1, 4, 2], 2)
        [[0, 1], [2, 3]]
    """
    loads = [0] * world_size
    parts: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        parts[r].append(i)
        loads[r] += sizes[i]
    return [sorted(p) for p in parts]


def shard_costs(plan: Any) -> list[int]:
    """Bytes each output shard reads and writes."""
    costs = [s.n_bytes for s in plan.shards]
    for t in plan.tensors:
        costs[t.shard] += sum(info.n_bytes for info, w in t.inputs if w != 0.0 or t.op != "sum")
    return costs


def _read_manifests(partial: Path, plan_hash: str) -> dict[str, dict] | None:
    """Union of the shards recorded in the main and per-rank manifests; None when
    none is readable; LadleValueError when one belongs to another merge."""
    recorded: dict[str, dict] = {}
    found = False
    for entry in sorted(partial.iterdir()):
        if not _is_manifest(entry.name) or not entry.is_file():
            continue
        try:
            manifest = json.loads(entry.read_bytes())
            shards, old_hash = manifest["shards"], manifest["plan_hash"]
            if not isinstance(shards, dict) or not isinstance(old_hash, str):
                continue
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
        if old_hash != plan_hash:
            raise LadleValueError(f"{partial}: cannot resume, it belongs to a different merge "
                                  f"(plan hash {old_hash[:12]}, this merge {plan_hash[:12]}: "
                                  f"inputs, weights or options changed); rerun without "
                                  f"--resume to start over")
        found = True
        for name, info in shards.items():
            if isinstance(info, dict):
                recorded[name] = info
    return recorded if found else None


def _prepare(output: OutputDir, shard_names: set[str], plan_hash: str,
             resume: bool) -> dict[str, dict]:
    """Rank 0, under the lock: create the partial directory, or keep a resumable
    one (its manifests merged into the main one, other files removed). Returns
    the shards recorded as finished (checked later by the ranks that own them)."""
    output.check_destination()
    partial = output.partial
    if resume and partial.is_dir() and not partial.is_symlink():
        recorded = _read_manifests(partial, plan_hash)
        if recorded is not None:
            keep = {n: i for n, i in recorded.items() if n in shard_names}
            output.plan_hash, output.finished = plan_hash, keep
            output._write_manifest()  # claims, not yet verified: each owner re-checks
            for entry in partial.iterdir():
                if entry.name != MANIFEST_NAME and entry.name not in keep:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            return keep
    output.create(plan_hash)
    return {}


def _keep_for_resume(output: OutputDir, plan_hash: str) -> None:
    """After an interruption: merge every rank's manifest into the main one and keep
    the finished shards for ``resume`` (remove everything when none finished)."""
    try:
        recorded = _read_manifests(output.partial, plan_hash) or {}
        output.plan_hash = plan_hash
        output.finished = {n: i for n, i in recorded.items()
                           if "/" not in n and output.shard_path(n).is_file()}
        if output.finished:
            output._write_manifest()
    except (OSError, LadleError):
        output.finished = {}
    output.abort(keep_finished=True)


def _verify_own(output: OutputDir, claims: dict[str, dict]) -> dict[str, dict]:
    finished = {}
    for name, info in claims.items():
        path = output.shard_path(name)
        try:
            if (path.is_file() and not path.is_symlink()
                    and path.stat().st_size == info.get("n_bytes")
                    and file_crc32c(path) == info.get("crc32c")):
                finished[name] = {"n_bytes": info["n_bytes"], "crc32c": info["crc32c"]}
                continue
            path.unlink(missing_ok=True)
        except OSError:
            pass
    return finished


def run_merge(plan: Any, ckpts: Sequence[Any], output: OutputDir, *, plan_hash: str,
              resume: bool, execute: Callable[..., dict],
              finish: Callable[[OutputDir], None]) -> dict:
    """Run ``plan`` across the ranks of :func:`group` (see the module docstring).

    ``execute(plan, ckpts, output, only=shard indices)`` writes shards and returns
    the engine's stats; ``finish(output)`` writes index.json and the extra files
    on rank 0. Returns the same dict on every rank: dest, bytes_read (total),
    rank_bytes_read, seconds, threads, chunk_elems, kernel, world_size.
    """
    g = group()
    t0 = time.perf_counter()
    hashes = g.all_gather(plan_hash)
    if len(set(hashes)) != 1:
        raise LadleValueError(f"ranks planned different merges (plan hashes "
                              f"{[h[:12] for h in hashes]}): do all ranks see the same inputs "
                              f"on a shared file system, with the same options?")
    parts = partition(shard_costs(plan), g.world_size)
    mine = parts[g.rank]
    names = {s.file_name for s in plan.shards}
    locked = prepared = False
    try:
        # 1. rank 0 creates (or checks, for resume) the partial directory under the lock.
        claims: dict[str, dict] = {}
        error = None
        if g.rank == 0:
            try:
                output.check_destination()
                output.lock()
                locked = True
                claims = _prepare(output, names, plan_hash, resume)
            except Exception as e:  # noqa: BLE001 - reported to every rank by check()
                error = e
        g.check(error)
        claims = g.broadcast(claims)
        prepared = True
        # 2. every rank checks the finished shards it owns and writes the rest.
        view = OutputDir(output.dest, overwrite=output.overwrite)
        view.manifest_name = RANK_MANIFEST.format(g.rank)
        view.plan_hash = plan_hash
        stats: dict = {"bytes_read": 0, "threads": 0, "chunk_elems": 0, "kernel": ""}
        error = None
        try:
            own = {plan.shards[i].file_name for i in mine}
            view.finished = _verify_own(view, {n: i for n, i in claims.items() if n in own})
            view._write_manifest()
            stats = execute(plan, ckpts, view, only=mine)
        except BaseException as e:  # noqa: BLE001 - reported to every rank below
            error = e
        status = None if error is None else (f"{type(error).__name__}: {error}",
                                             isinstance(error, KeyboardInterrupt))
        gathered = g.all_gather((status, view.finished, stats))
        failed = [(r, s) for r, (s, _, _) in enumerate(gathered) if s is not None]
        finished = {n: i for _, f, _ in gathered for n, i in f.items()}
        if failed:
            if g.rank == 0:
                if any(s[1] for _, s in failed):  # interrupted: keep finished shards
                    _keep_for_resume(output, plan_hash)
                else:
                    output.abort()
            if error is not None:
                raise error
            rank, (text, _) = failed[0]
            raise RankFailedError(f"rank {rank} of {g.world_size} failed: {text}")
        # 3. rank 0 writes the index and extra files and commits; all wait for it.
        dest, error = None, None
        if g.rank == 0:
            try:
                output.finished = finished
                for entry in output.partial.iterdir():
                    if _is_manifest(entry.name) and entry.name != MANIFEST_NAME:
                        entry.unlink()
                output._write_manifest()
                finish(output)
                dest = output.commit()
            except Exception as e:  # noqa: BLE001 - reported to every rank by check()
                output.abort()
                error = e
        g.check(error)
        dest, seconds = g.broadcast((dest, time.perf_counter() - t0))
    except BaseException:
        if g.rank == 0 and prepared and output.partial.is_dir():
            _keep_for_resume(output, plan_hash)  # a lost peer is an interruption
        raise
    finally:
        if locked:
            output.unlock()
    engines = [s for _, _, s in gathered if s.get("threads")] or [gathered[0][2]]
    return {"dest": dest, "bytes_read": sum(s["bytes_read"] for _, _, s in gathered),
            "rank_bytes_read": [s["bytes_read"] for _, _, s in gathered],
            "rank_shards": [[plan.shards[i].file_name for i in p] for p in parts],
            "seconds": seconds, "threads": engines[0]["threads"],
            "chunk_elems": engines[0]["chunk_elems"], "kernel": engines[0]["kernel"],
            "world_size": g.world_size}
