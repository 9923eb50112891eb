"""The public merge API: ``merge`` (any linear combination), ``interpolate``
(WiSE-FT) and ``soup`` (normalised average), all on one streaming engine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .. import _core
from ..engine._units import engine_options
from ..engine.cuda import parse_device, rank_device
from ..engine.fp8_blocks import (
    SCALES_OP,
    add_input_scales,
    add_output_scales,
    drop_quantization_config,
)
from ..engine.kinds import Kernel, parse_kind
from ..engine.merge_report import MergeReport
from ..engine.output import OutputDir, checked_output, write_atomically
from ..engine.plan import (
    MergePlan,
    OutputTensor,
    build_plan,
    check_int_policy,
    check_weights,
    describe,
)
from ..engine.shard_sinks import open_shard_sinks
from ..errors import LadleValueError, MismatchError
from ..formats._bulk import bulk_objects
from ..formats.checkpoint import Checkpoint, open_checkpoint

PathLike = str | os.PathLike
CheckpointLike = PathLike | Checkpoint


def _open_all(checkpoints: Sequence[CheckpointLike],
              trust_pickle: bool = False) -> list[Checkpoint]:
    if not checkpoints:
        raise LadleValueError("no input checkpoints given")
    return [c if isinstance(c, Checkpoint) else open_checkpoint(c, trust_pickle)
            for c in checkpoints]


def merge(checkpoints: Sequence[CheckpointLike], weights: Sequence[float], out: PathLike, *,
          dtype: str | None = None, max_shard_size: int | str = "5GB",
          include: str | list[str] | None = None, exclude: str | list[str] | None = None,
          threads: int = 0, memory_budget: int | str = "256MiB", check_finite: bool = False,
          overwrite: bool = False, progress: bool = True, dry_run: bool = False,
          method: str = "linear", kernel: str = "auto", resume: bool = False,
          device: str = "cpu", distributed: bool | None = None,
          int_policy: str = "first", trust_pickle: bool = False) -> MergeReport:
    """Write ``out = Σ_k weights[k] · checkpoints[k]`` tensor by tensor.

    Weights are used as given (they may be negative or not sum to one, so task
    arithmetic ``θ0 + λ Σ (θ_i − θ0)`` is expressible) and rounded to fp32 once.
    Accumulation is fp32 in input order; the result is rounded to nearest even.

    Args:
        checkpoints: paths (file, HF sharded directory, ``.pt``/``.bin``), opened
            Checkpoints, live ``nn.Module``s or dicts of tensors (read in place).
        weights: one finite weight per checkpoint; zero weights skip their input.
        out: ``*.safetensors`` for one file, otherwise a directory (HF layout).
        dtype: output dtype for float tensors (default: the inputs' dtype).
        max_shard_size: shard size for directory outputs, e.g. ``"5GB"``.
        include, exclude: fnmatch patterns on tensor names; a str is one pattern.
        threads: worker threads (0: all cores).
        memory_budget: bound on buffers and resident input pages, e.g. ``"256MiB"``.
        check_finite: raise NonFiniteError on NaN/Inf instead of passing it through.
        overwrite: replace an existing ``out`` (only once the new one is complete).
        progress: show a tqdm progress bar.
        dry_run: plan only; nothing is written.
        resume: continue an interrupted merge of the same plan: shards finished in
            ``<out>.ladle-partial/`` whose checksums match are kept, the rest written.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``: weighted sums
            stream through the GPU (pinned staging, same bit-exact results);
            raises BackendError when CUDA is unavailable.
        distributed: partition the output shards across the ``torch.distributed``
            ranks (torchrun; see :mod:`ladle.engine.distributed`); every rank calls merge
            with the same arguments and gets the same report. ``None`` (default):
            on when launched with ``WORLD_SIZE`` > 1. Inputs and output must be on
            a file system all ranks share.
        int_policy: integer/bool tensors (e.g. BatchNorm's ``num_batches_tracked``)
            over the inputs with a non-zero weight: ``"first"`` (default) copies the
            first of them, ``"max"`` takes the elementwise max, ``"error"`` requires
            them to be identical. Recorded as ``ladle_int_policy`` in the metadata.
        trust_pickle: accept whole-module pickles among ``.pt``/``.bin`` inputs
            (loading them runs their code; refused by default).

    Returns:
        A :class:`MergeReport` with byte counts and timing.

    Example:
        >>> ladle.merge(["a/", "b/"], [0.3, 0.7], "out/")   # doctest: +SKIP
    """
    threads, budget, shard_bytes = engine_options(threads, memory_budget, max_shard_size)
    kernel = parse_kind(Kernel, kernel, "kernel").value  # before any input is opened
    output = checked_output(out, checkpoints, overwrite=overwrite)  # before reading inputs
    if any(_needs_live_path(c) for c in checkpoints):  # modules, dicts, .pt/.bin files
        from ..engine.writer import merge_live

        if distributed:
            raise LadleValueError("distributed merges take checkpoint files (safetensors), "
                                  "not live models, dicts or .pt/.bin files")

        return merge_live(checkpoints, weights, out, dtype=dtype, max_shard_size=shard_bytes,
                          include=include, exclude=exclude, threads=threads,
                          memory_budget=budget, check_finite=check_finite,
                          overwrite=overwrite, progress=progress, dry_run=dry_run,
                          method=method, kernel=kernel, int_policy=int_policy)
    _check_device(device, kernel, dry_run)
    ckpts = _open_all(checkpoints, trust_pickle)
    weights = check_weights(list(weights), len(ckpts))
    output.inputs = [*output.inputs, *(f for c in ckpts for f in c.files)]  # shards behind links
    checked = _preflight(ckpts, dtype, out) if dry_run else None  # headers only
    metadata = {
        "ladle_method": method,
        "ladle_inputs": json.dumps([str(c.path) for c in ckpts]),
        "ladle_weights": json.dumps(weights),
        "ladle_int_policy": check_int_policy(int_policy),
        "ladle_version": _core.build_info()["version"],
    }
    plan = build_plan(ckpts, weights, dtype=dtype, include=include, exclude=exclude,
                      max_shard_bytes=shard_bytes,
                      single_file=output.single_file, metadata=metadata, int_policy=int_policy)
    if dry_run:
        output.check_destination()
        print(describe(plan))
        print(checked)
        return MergeReport(None, len(plan.tensors), len(plan.shards), plan.bytes_read,
                           plan.bytes_written, 0.0, plan=plan)
    t0 = time.perf_counter()
    from ..engine.distributed import wanted

    if wanted(distributed):
        return _merge_distributed(plan, ckpts, output, resume=resume, threads=threads,
                                  memory_budget=budget,
                                  check_finite=check_finite, progress=progress, kernel=kernel,
                                  device=device)

    def work(output: OutputDir) -> dict:
        stats = execute(plan, ckpts, output, threads=threads,
                        memory_budget=budget, check_finite=check_finite,
                        progress=progress, kernel=kernel, device=device)
        if plan.sharded:
            output.write_index(plan.weight_map(), plan.data_n_bytes)
        _copy_extra_files(output, plan, ckpts)
        return stats

    stats, dest = write_atomically(output, work, plan_hash=plan_hash(plan, ckpts),
                                   resume=resume)
    return MergeReport(dest, len(plan.tensors), len(plan.shards), stats["bytes_read"],
                       plan.bytes_written, time.perf_counter() - t0, stats["threads"],
                       stats["chunk_elems"], stats["kernel"], plan,
                       host_sums=stats["host_sums"])


def _copy_extra_files(output: OutputDir, plan: MergePlan, ckpts: list[Checkpoint]) -> None:
    """The first input's config/tokenizer files; a dequantized block-scaled FP8 merge
    is no longer quantized, so its config.json loses ``quantization_config``."""
    output.copy_extra_files(ckpts[0].extra_files)
    if plan.has_scales:
        drop_quantization_config(output.partial)


def _merge_distributed(plan: MergePlan, ckpts: list[Checkpoint], output: OutputDir, *,
                       resume: bool, device: str, **engine) -> MergeReport:
    from ..engine.distributed import run_merge

    device = rank_device(device)  # one GPU per local rank
    engine["progress"] = engine["progress"] and os.environ.get("RANK", "0") == "0"

    def run(plan: MergePlan, ckpts: list[Checkpoint], view: OutputDir, only: list[int]) -> dict:
        return execute(plan, ckpts, view, device=device, only=only, **engine)

    def finish(output: OutputDir) -> None:
        if plan.sharded:
            output.write_index(plan.weight_map(), plan.data_n_bytes)
        _copy_extra_files(output, plan, ckpts)

    r = run_merge(plan, ckpts, output, plan_hash=plan_hash(plan, ckpts), resume=resume,
                  execute=run, finish=finish)
    return MergeReport(r["dest"], len(plan.tensors), len(plan.shards), r["bytes_read"],
                       plan.bytes_written, r["seconds"], r["threads"], r["chunk_elems"],
                       r["kernel"], plan, r["world_size"], r["rank_bytes_read"])


def plan_hash(plan: MergePlan, ckpts: list[Checkpoint]) -> str:
    """Identity of a merge for resume: every shard header (names, dtypes, shapes,
    offsets, metadata with inputs and weights) and every input file's size and mtime."""
    h = hashlib.sha256()
    for shard in plan.shards:
        h.update(os.fsencode(shard.file_name) + b"\0" + shard.header)
    for ckpt in ckpts:
        for file, size in ckpt.file_sizes.items():
            st = os.stat(file)
            h.update(os.fsencode(file) + f"\0{size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _preflight(ckpts: list[Checkpoint], dtype: str | None, out: PathLike) -> str:
    """The pre-flight report of a dry run; printed and raised when it finds problems."""
    from ..engine.preflight import preflight

    report = preflight(ckpts, dtype, out)
    if not report.ok:
        print(report.text())
        raise MismatchError(f"{len(report.problems)} problem(s); first: {report.problems[0]}")
    return report.text()


def _needs_live_path(c: object) -> bool:
    if isinstance(c, Checkpoint):
        return False
    return not isinstance(c, (str, os.PathLike))  # files, .pt/.bin included, stream


@bulk_objects()
def execute(plan: MergePlan, ckpts: list[Checkpoint], output: OutputDir, *, threads: int,
            memory_budget: int, check_finite: bool, progress: bool, kernel: str,
            device: str = "cpu", only: list[int] | None = None) -> dict:
    """Run a plan's jobs into the shards of ``output``'s partial directory, one shard
    at a time; each finished shard is fsynced and recorded for resume. Shards
    already in ``output.finished`` (a resumed run) are skipped, and so are those
    not in ``only`` (the shards of one rank of a distributed merge) when given."""
    run = open_shard_sinks(plan.shards, ckpts, output, only)  # jobs then run shard by shard
    todo, core_plan, sources, sinks = run.todo, run.core_plan, run.sources, run.sinks
    by_shard = run.by_shard(plan.tensors if plan.table is None else ())  # a table adds its own
    bar = _progress_bar(sum(plan.shards[i].n_bytes for i in todo), progress)
    totals = {"bytes_read": 0, "threads": 0, "chunk_elems": 0, "kernel": "", "host_sums": 0}
    base = 0
    try:
        for i in todo:
            shard = plan.shards[i]
            core_plan.clear_jobs()
            if plan.table is not None:
                plan.table.add_jobs(core_plan, i, sources, sinks[i], len(shard.header))
            jobs = []  # consecutive jobs go to the engine in one add_jobs call
            for t in by_shard[i]:
                if t.op == SCALES_OP:
                    continue  # written by its weight's job
                jobs.append(_job(t, sources, sinks[i], len(shard.header)))
                if t.scales:  # scale_input/output mark the last job added: flush first
                    core_plan.add_jobs(jobs)
                    jobs = []
                    add_input_scales(core_plan, t.scales, t.shape[-1], sources)
                    if t.out_scales:
                        add_output_scales(core_plan, t.out_scales, sinks[i], len(shard.header))
            core_plan.add_jobs(jobs)
            on_progress = None
            if bar:
                def on_progress(done: int, total: int, base: int = base) -> None:
                    bar.update(base + done - bar.n)
            stats = _run_on_device(core_plan, device, threads=threads,
                                   memory_budget=memory_budget, check_finite=check_finite,
                                   kernel=kernel, progress=on_progress)
            output.record_shard(shard.file_name, core_plan.finish_sink(sinks[i]))
            base += stats["bytes_written"]
            totals["bytes_read"] += stats["bytes_read"]
            totals["host_sums"] += stats["host_sums"]
            for key in ("threads", "chunk_elems", "kernel"):
                totals[key] = stats[key]
    finally:
        if bar:
            bar.close()
    return totals


def _job(t: OutputTensor, sources: dict[Path, int], sink: int, header_n_bytes: int) -> tuple:
    """The engine job of one output tensor: ``_core.Plan.add_jobs``'s tuple."""
    dtype, n_elems = t.dtype, t.n_elems
    if t.op == "copy" and _core.dtype_n_bits(dtype) % 8:
        dtype, n_elems = "U8", t.n_bytes  # sub-byte dtypes are copied as bytes
    inputs = [(sources[info.file], info.offset, dtype if t.op == "copy" else info.dtype, w)
              for info, w in t.inputs]
    return t.name, t.op, n_elems, sink, header_n_bytes + t.offset, dtype, inputs


def _run_on_device(core_plan, device: str, *, threads: int, memory_budget: int,
                   check_finite: bool, kernel: str, progress) -> dict:
    """Run the plan's current jobs on the CPU engine or the CUDA backend."""
    if parse_device(device)[0] == "cpu":
        return _core.run(core_plan, threads=threads, memory_budget=memory_budget,
                         check_finite=check_finite, kernel=kernel, progress=progress)
    from ..engine.cuda import require

    cuda, index, emulate = require(device)
    return cuda.run(core_plan._capsule(), device=index, workers=threads or 3,
                    memory_budget=memory_budget, check_finite=check_finite,
                    emulate=emulate, progress=progress)


def _check_device(device: str, kernel: str, dry_run: bool) -> None:
    """Fail before any work when ``device`` is malformed or, unless planning
    only, when the CUDA backend cannot run."""
    if parse_device(device)[0] == "cpu":
        return
    from ..engine.cuda import require

    if kernel != "auto":
        raise LadleValueError(f"kernel={kernel!r} selects CPU kernels; it cannot be combined "
                              f"with device={device!r}")
    if not dry_run:
        require(device)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="merging", disable=None)


def interpolate(theta0: CheckpointLike, theta1: CheckpointLike, alpha: float, out: PathLike,
                **options) -> MergeReport:
    """WiSE-FT: write ``θα = (1 − α)·θ0 + α·θ1`` (weights computed in fp64).

    α = 0 and α = 1 reproduce the endpoints bit for bit (zero weights skip
    their input). Options are those of :func:`merge`.

    Example:
        >>> ladle.interpolate("zeroshot/", "finetuned/", 0.5, "wiseft/")  # doctest: +SKIP
    """
    alpha = float(alpha)
    if math.isnan(alpha):
        raise LadleValueError("alpha must not be NaN")
    options.setdefault("method", f"wise-ft alpha={alpha!r}")
    return merge([theta0, theta1], [1.0 - alpha, alpha], out, **options)


def normalize_weights(weights: list[float]) -> list[float]:
    """Scale weights to sum to one, computed in fp64 without overflow."""
    largest = max((abs(w) for w in weights), default=0.0)
    total = math.fsum(w / largest for w in weights) if largest else 0.0
    if total == 0.0:
        raise LadleValueError(f"soup weights sum to zero: {weights}")
    return [(w / largest) / total for w in weights]


def soup(checkpoints: Sequence[CheckpointLike], out: PathLike,
         weights: Sequence[float] | None = None, **options) -> MergeReport:
    """Uniform soup (``w_k = 1/N``) or a weighted average with weights
    normalised to sum to one. Options are those of :func:`merge`.

    Example:
        >>> ladle.soup(["ft1/", "ft2/", "ft3/"], "soup/")   # doctest: +SKIP
    """
    n = len(checkpoints)
    if weights is None:
        norm = [1.0 / n] * n if n else []
    else:
        weights = check_weights(list(weights), n)
        norm = normalize_weights(weights)
    options.setdefault("method", "uniform-soup" if weights is None else "weighted-soup")
    return merge(checkpoints, norm, out, **options)
