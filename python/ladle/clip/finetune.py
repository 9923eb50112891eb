"""Fine-tuning (SPEC §1.2, §2.4): end-to-end from the zero-shot head, linear
classifier on cached features, and LP-FT; AdamW with cosine warm-up, global-norm
clipping, label smoothing, mixup, minimal/medium/strong augmentation, EMA, SWA, seeds,
per-epoch checkpoints (safetensors, via ``ladle.save``) and evaluations (JSONL);
optionally a frozen zero-shot head, and the baselines that pull toward θ0
(distillation, L2-SP; :mod:`.toward_zeroshot`).

Data-parallel under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA): every rank takes
every ``world``-th example of the shuffled epoch order with ``batch_size / world``
per step; rank 0 saves and evaluates. Single-process CPU is the default.

Example:
    >>> result = finetune(zs_model, train_set, FinetuneConfig(epochs=2),
    ...                   out_dir="runs/ft", eval_sets={"test": test})   # doctest: +SKIP
    >>> result.final                                                    # doctest: +SKIP
    PosixPath('runs/ft/epoch_2.safetensors')
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import FinetuneConfig
from .data import ImageSet
from .evaluate import evaluate_model
from .loaders import EpochSampler, LoaderOptions, epoch_order, train_loader
from .precision import autocast_context, grad_scaler, to_device
from .toward_zeroshot import ZeroShotAnchor
from .zeroshot import ImageClassifier


@dataclass
class FinetuneResult:
    """Checkpoints written (one per epoch, in order), the final one, and the history
    of per-epoch records (loss, step, accuracies)."""

    checkpoints: list[Path] = field(default_factory=list)
    final: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun.

    Example:
        >>> dist_info()
        (0, 1)
    """
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() and
                                os.environ.get("LADLE_DDP_BACKEND") != "gloo" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to 0.

    Example:
        >>> lr_at(0, 100, 1.0, 10), lr_at(10, 100, 1.0, 10), round(lr_at(55, 100, 1.0, 10), 3)
        (0.1, 1.0, 0.5)
    """
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(params: list[tuple[str, torch.nn.Parameter]], cfg: FinetuneConfig,
               lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=cfg.betas,
                             eps=cfg.eps)


def _rank_device(name: str) -> torch.device:
    """The device of this process: under torchrun, ``cuda`` means ``cuda:LOCAL_RANK``."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _ddp(module: torch.nn.Module, device: torch.device) -> Any:
    """DistributedDataParallel (NCCL on CUDA, with this rank's device; gloo on CPU)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index])
    return DistributedDataParallel(module)


def _loader_options(cfg: FinetuneConfig) -> LoaderOptions:
    return LoaderOptions(cfg.workers, cfg.prefetch_factor, cfg.persistent_workers, cfg.device)


def _micro_groups(loader: Any, accum: int) -> Any:
    """Consecutive micro-batches in groups of ``accum`` (the last group may be short)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []
    if group:
        yield group


def _loss(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None, lam: float,
          smoothing: float) -> torch.Tensor:
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    if y2 is not None:
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y2, label_smoothing=smoothing)
    return loss


def finetune(model: ImageClassifier, train: ImageSet, cfg: FinetuneConfig, *,
             eval_sets: dict[str, ImageSet] | None = None, id_name: str | None = None,
             out_dir: str | os.PathLike | None = None, log: Any = None,
             progress: bool = False) -> FinetuneResult:
    """Fine-tune ``model`` in place according to ``cfg``.

    Args:
        model: an :class:`ImageClassifier` holding θ0 (zero-shot head included).
        train: training set (carve the held-out split off beforehand).
        cfg: hyperparameters (:class:`FinetuneConfig`).
        eval_sets: evaluated after every epoch (rank 0), logged with the loss.
        id_name: which of ``eval_sets`` is in-distribution (for the averages).
        out_dir: per-epoch checkpoints ``epoch_<e>.safetensors`` are written here.
        log: a :class:`ladle.ResultsLog` (or path) for per-epoch records.
        progress: tqdm bar over steps.

    Returns:
        A :class:`FinetuneResult`.

    Example:
        >>> finetune(model, train, FinetuneConfig(mode="lc", epochs=5))   # doctest: +SKIP
    """
    from ..soups.results import as_log

    if cfg.mode == "flyp":
        raise ValueError("mode flyp trains both CLIP towers: use ladle.clip.flyp.flyp_finetune "
                         "(the WiSE-FT pipeline does) rather than finetune()")
    t0 = time.perf_counter()
    log = as_log(log)
    rank, world = dist_info()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    result = FinetuneResult()
    device = _rank_device(cfg.device)
    model.to(device)
    # θ0 is snapshotted once, before any stage (LP-FT pulls toward zero-shot, not the LP).
    anchor = ZeroShotAnchor.from_config(model, cfg)
    if cfg.mode in ("lc", "lpft"):
        lc_cfg = cfg if cfg.mode == "lc" else cfg.with_(epochs=cfg.lp_epochs, lr=cfg.lp_lr,
                                                        warmup_steps=0)
        if lc_cfg.epochs > 0:
            _train_linear(model, train, lc_cfg, rank, world, device, log, result,
                          eval_sets, id_name, out if cfg.mode == "lc" else None, progress,
                          anchor, _feature_dir(cfg, out))
    if cfg.mode in ("e2e", "lpft"):
        _train_e2e(model, train, cfg, rank, world, device, log, result, eval_sets, id_name,
                   out, progress, anchor)
    model.to("cpu").eval()
    result.final = result.checkpoints[-1] if result.checkpoints else None
    result.seconds = time.perf_counter() - t0
    return result


def _feature_dir(cfg: FinetuneConfig, out: Path | None) -> Path | None:
    """Where the LC features are cached (None: a temporary directory)."""
    if cfg.feature_cache:
        return Path(cfg.feature_cache)
    return out / "features" if out is not None else None


def _epoch_end(model: ImageClassifier, cfg: FinetuneConfig, epoch: int, step: int,
               loss: float, rank: int, log: Any, result: FinetuneResult,
               eval_sets: dict[str, ImageSet] | None, id_name: str | None,
               out: Path | None, stage: str) -> None:
    if rank != 0:
        return
    import ladle

    record: dict[str, Any] = {"run": cfg.name, "stage": stage, "epoch": epoch, "step": step,
                              "loss": loss}
    if out is not None and (cfg.save_every_epoch or epoch == cfg.epochs):
        path = out / f"epoch_{epoch}.safetensors"
        ladle.save(model.to("cpu"), path, overwrite=True)
        model.to(cfg.device)
        result.checkpoints.append(path)
        record["checkpoint"] = str(path)
    if eval_sets and (cfg.eval_every_epoch or epoch == cfg.epochs):
        record["acc"] = evaluate_model(model, eval_sets, id_name=id_name)
    result.history.append(record)
    log.append("finetune/epoch", **record)


def _swa_end(model: ImageClassifier, cfg: FinetuneConfig, n_averaged: int, rank: int,
             log: Any, result: FinetuneResult, eval_sets: dict[str, ImageSet] | None,
             id_name: str | None, out: Path | None) -> None:
    """Save and evaluate the SWA model; it becomes the run's final checkpoint."""
    if rank != 0:
        return
    import ladle

    model.eval()
    record: dict[str, Any] = {"run": cfg.name, "stage": "swa", "swa_start": cfg.swa_start,
                              "n_averaged": n_averaged}
    if out is not None:
        path = out / "swa.safetensors"
        ladle.save(model.to("cpu"), path, overwrite=True)
        model.to(cfg.device)
        result.checkpoints.append(path)
        record["checkpoint"] = str(path)
    if eval_sets:
        record["acc"] = evaluate_model(model, eval_sets, id_name=id_name)
    result.history.append(record)
    log.append("finetune/swa", **record)


def _steps_per_epoch(n: int, cfg: FinetuneConfig, world: int) -> int:
    per_rank = max(1, cfg.batch_size // world)
    return max(1, math.ceil(math.ceil(n / world) / per_rank))


def _train_e2e(model: ImageClassifier, train: ImageSet, cfg: FinetuneConfig, rank: int,
               world: int, device: torch.device, log: Any, result: FinetuneResult,
               eval_sets: dict[str, ImageSet] | None, id_name: str | None,
               out: Path | None, progress: bool, anchor: ZeroShotAnchor | None) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    model.head.weight.requires_grad_(not cfg.freeze_head)
    net: Any = model
    if world > 1:
        net = _ddp(model, device)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = _optimizer(params, cfg, cfg.lr)
    per_rank = max(1, cfg.batch_size // world)
    if per_rank % cfg.accum_steps:
        raise ValueError(f"batch_size / world = {per_rank} is not a multiple of accum_steps "
                         f"= {cfg.accum_steps}")
    total = _steps_per_epoch(len(train), cfg, world) * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    ema = copy.deepcopy(model).eval() if cfg.ema else None
    swa = torch.optim.swa_utils.AveragedModel(model) if cfg.swa_start else None
    from .transforms import batch_mix, train_transform

    transform = train_transform(model.preprocess, cfg.aug, magnitude=cfg.aug_magnitude,
                                n_ops=cfg.aug_n_ops, hflip=cfg.hflip)
    mix = batch_mix(cfg.mixup, cfg.cutmix, model.head.weight.shape[0])
    sampler = EpochSampler(len(train), shuffle=True, seed=cfg.seed * 7919, rank=rank,
                           world=world)
    loader = train_loader(train, transform, per_rank // cfg.accum_steps, sampler,
                          options=_loader_options(cfg))
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = grad_scaler(device, cfg.autocast)
    bar = _bar(total, progress and rank == 0, cfg.name)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        losses = []
        for group in _micro_groups(loader, cfg.accum_steps):
            if step >= total:
                break
            for g_ in opt.param_groups:
                g_["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_steps)
            opt.zero_grad(set_to_none=True)
            n_group = sum(len(b[1]) for b in group)
            step_loss = 0.0
            for k, (x, y, _) in enumerate(group):
                # Weight each micro-batch by its share of the step's examples: the
                # summed gradient is then the mean-loss gradient of the whole batch.
                share = len(y) / n_group
                last = k == len(group) - 1
                sync = net.no_sync() if world > 1 and not last else contextlib.nullcontext()
                with sync:
                    loss = _e2e_loss(net, model, x, y, mix, cfg, device, anchor)
                    scaler.scale(loss * share).backward()
                step_loss += float(loss.detach()) * share
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm.detach(), 1 - cfg.ema)
            losses.append(step_loss)
            step += 1
            bar.update(1)
        mean_loss = sum(losses) / max(1, len(losses))
        target = ema if ema is not None else model
        target.eval()
        _epoch_end(target, cfg, epoch, step, mean_loss, rank, log, result, eval_sets,
                   id_name, out, "e2e")
        if swa is not None and epoch >= cfg.swa_start:
            swa.update_parameters(model)
        if step >= total:
            break
    bar.close()
    for average in (ema, swa and swa.module):
        if average is not None:
            with torch.no_grad():
                for pe, pm in zip(average.parameters(), model.parameters()):
                    pm.copy_(pe)
    if swa is not None:
        _swa_end(model, cfg, int(swa.n_averaged), rank, log, result, eval_sets, id_name, out)
    model.head.weight.requires_grad_(True)
    model.eval()


def _e2e_loss(net: Any, model: ImageClassifier, x: torch.Tensor, y: torch.Tensor,
              mix: Any, cfg: FinetuneConfig, device: torch.device,
              anchor: ZeroShotAnchor | None) -> torch.Tensor:
    """Loss of one (micro-)batch: torchvision MixUp/CutMix, autocast forward,
    (soft-target) cross-entropy with smoothing, then the toward-θ0 terms."""
    if mix is not None:
        x, y = mix(x, y)
    x = to_device(x, device, cfg.channels_last)
    y = y.to(device, non_blocking=True)
    with autocast_context(device, cfg.autocast):
        logits = net(x)
    logits = logits.float()
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if anchor is not None:
        loss = anchor.objective(loss, logits, x, model)
    return loss


def cached_features(model: ImageClassifier, data: Any, cache_dir: str | os.PathLike, *,
                    batch_size: int = 512, loader: Any = None) -> Any:
    """Normalised image features of every example (no augmentation): the LC cache, a
    memory-mapped ``.npy`` under ``cache_dir`` (see :mod:`.features`).

    Example:
        >>> feats = cached_features(zs_model, train, "runs/lc/features")   # doctest: +SKIP
    """
    from .features import extract_features

    return extract_features(model, data, cache_dir, batch_size=batch_size, loader=loader)


def _train_linear(model: ImageClassifier, train: ImageSet, cfg: FinetuneConfig, rank: int,
                  world: int, device: torch.device, log: Any, result: FinetuneResult,
                  eval_sets: dict[str, ImageSet] | None, id_name: str | None,
                  out: Path | None, progress: bool,
                  anchor: ZeroShotAnchor | None = None,
                  feature_dir: Path | None = None) -> None:
    import tempfile

    with contextlib.ExitStack() as stack:
        if feature_dir is None:
            feature_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        feats = cached_features(model, train, feature_dir, loader=_loader_options(cfg))
        _fit_linear(model, feats, train.labels, cfg, rank, world, device, log, result,
                    eval_sets, id_name, out, progress, anchor)


def _fit_linear(model: ImageClassifier, feats: np.ndarray, labels: torch.Tensor,
                cfg: FinetuneConfig, rank: int, world: int, device: torch.device, log: Any,
                result: FinetuneResult, eval_sets: dict[str, ImageSet] | None,
                id_name: str | None, out: Path | None, progress: bool,
                anchor: ZeroShotAnchor | None) -> None:
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    head = model.head
    head.weight.requires_grad_(True)
    net: Any = head
    if world > 1:
        net = _ddp(head, device)
    opt = _optimizer([("head.weight", head.weight)], cfg, cfg.lr)
    per_rank = max(1, cfg.batch_size // world)
    total = _steps_per_epoch(len(labels), cfg, world) * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    bar = _bar(total, progress and rank == 0, cfg.name + " (linear)")
    step = 0
    n = len(labels)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.tensor(epoch_order(n, shuffle=True, seed=cfg.seed * 7919 + epoch,
                                         rank=rank, world=world), dtype=torch.long)
        losses = []
        for i in range(0, len(order), per_rank):
            if step >= total:
                break
            idx = order[i:i + per_rank]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_steps)
            rows = np.asarray(feats[np.sort(idx.numpy())])  # memory-map reads in file order
            x = torch.from_numpy(rows[np.argsort(np.argsort(idx.numpy()))]).to(device)
            y = labels[idx].to(device)
            y2, lam = None, 1.0
            if cfg.mixup > 0:
                lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
                perm = torch.randperm(len(y), generator=g).to(device)
                x, y2 = lam * x + (1 - lam) * x[perm], y[perm]
            logits = net(x)
            loss = _loss(logits, y, y2, lam, cfg.label_smoothing)
            if anchor is not None:
                loss = anchor.objective(loss, logits, x, model, features=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([head.weight], cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
        _epoch_end(model, cfg, epoch, step, sum(losses) / max(1, len(losses)), rank, log,
                   result, eval_sets, id_name, out, "lc")
        if step >= total:
            break
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)


def _bar(total: int, enabled: bool, desc: str) -> Any:
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False)

    class _Null:
        def update(self, n: int) -> None:
            pass

        def close(self) -> None:
            pass

    return _Null()
