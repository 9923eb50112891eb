"""Learned soup out of core (Model soups App. I): mixing logits per ingredient (and
per layer group), α = softmax over ingredients, a temperature β on the logits,
trained with AdamW on held-out batches.

Each step streams θ = Σ_k α_k θ_k into the live model, runs forward/backward for
∂L/∂θ (one model's gradients), and gets ∂L/∂α_{k,g} = Σ_{tensors t in g}
⟨∂L/∂θ_t, θ_{k,t}⟩ from the engine's streamed fp64 dot products; autograd then
only sees the K×G coefficients. Memory is O(1 model) whatever the number of
ingredients K; the paper's recipe holds all K models in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.live import Loader
from ..engine.output import checked_output
from ..engine.plan import check_int_policy, nonfloat_inputs
from ..engine.writer import WriteTensor, write_tensors
from ..errors import LadleValueError
from ..formats.keymap import KeyMap
from ..formats.sources import from_tensors, module_tensors, open_input, target_set
from .results import ResultsLog, as_log

LossFn = Callable[[Any, Any, Any], Any]


def layer_of(name: str) -> str:
    """Default layer group of a tensor: its module path (``a.b.weight`` -> ``a.b``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def cross_entropy_loss(module: Any, batch: Any, beta: Any) -> Any:
    """Default loss: ``cross_entropy(β · module(x), y)`` for a batch ``(x, y)``."""
    import torch.nn.functional as F

    x, y = batch
    return F.cross_entropy(beta * module(x), y)


@dataclass
class LearnedSoupResult:
    """Final mixing coefficients and the training trace."""

    ingredients: list[str]
    layers: list[str]
    alphas: list[list[float]]  # [ingredient][layer group]
    beta: float
    losses: list[float] = field(default_factory=list)
    out: Any = None


class LearnedSoup:
    """The out-of-core learned soup of ``ingredients`` in the live ``module``.

    Args:
        module: live model (CPU); its float parameters must require grad.
        ingredients: checkpoints, modules or dicts (see :func:`ladle.load_into`).
        by_layer: False (one α vector), True (one per module, see :func:`layer_of`)
            or a function ``tensor name -> group name``.
        beta: initial temperature.
        key_map, strict: name matching.
        threads, memory_budget: engine options.
        distributed: each ``torch.distributed`` rank trains on its own batches (its
            slice of the held-out data); the gradients are the weighted mean over
            ranks (weights ``batch_weight(batch)``, default the batch's example
            count), so every rank keeps the same coefficients. ``None``: on when
            launched with ``WORLD_SIZE`` > 1. Rank 0 writes ``out`` and the log.
        int_policy: integer/bool buffers over the ingredients (all have a non-zero
            softmax weight): ``"first"``, ``"max"`` or ``"error"`` (see :func:`ladle.merge`).

    Example:
        >>> soup = LearnedSoup(model, paths, by_layer=True)          # doctest: +SKIP
        >>> result = soup.fit(batches, epochs=3, lr=0.1)            # doctest: +SKIP
    """

    def __init__(self, module: Any, ingredients: Sequence[Any], *,
                 by_layer: bool | Callable[[str], str] = False, beta: float = 1.0,
                 key_map: KeyMap = None, strict: bool = True, threads: int = 0,
                 memory_budget: int | str = "256MiB", distributed: bool | None = None,
                 batch_weight: Callable[[Any], float] | None = None, int_policy: str = "first"):
        import torch

        from ..engine.distributed import default_batch_weight, soup_group

        # Distributed: each rank's batches are its slice of the held-out data; the
        # per-tensor dot products, loss and dL/dbeta are all-reduced as a weighted mean.
        self.group = soup_group(distributed)
        self.batch_weight = batch_weight or default_batch_weight

        self.module = module
        self.int_policy = check_int_policy(int_policy)
        self.sets = [open_input(x) for x in ingredients]
        if not self.sets:
            raise LadleValueError("learned soup needs at least one ingredient")
        self.loader = Loader(target_set(module), self.sets, key_map=key_map, strict=strict,
                             threads=threads, memory_budget=memory_budget)
        group_fn = (layer_of if by_layer is True else by_layer) if by_layer else (lambda n: "all")
        self.layers: list[str] = []
        self.layer_index: dict[str, int] = {}
        for g in self.loader.float_groups:
            layer = group_fn(g.name)
            if layer not in self.layers:
                self.layers.append(layer)
            self.layer_index[g.name] = self.layers.index(layer)
        self.params = {name: t for name, t in module_tensors(module).items()
                       if name in self.layer_index and getattr(t, "requires_grad", False)}
        k, n_layers = len(self.sets), max(1, len(self.layers))
        self.logits = torch.zeros(k, n_layers, dtype=torch.float64, requires_grad=True)
        self.beta = torch.tensor(float(beta), dtype=torch.float32, requires_grad=True)
        self._grad_set = None

    def alphas(self) -> Any:
        """Current coefficients, softmax over ingredients: shape (K, groups)."""
        import torch

        return torch.softmax(self.logits, dim=0)

    def load(self) -> None:
        """Stream the soup with the current coefficients into the module."""
        a = self.alphas().detach().tolist()
        cols = [[row[j] for row in a] for j in range(len(a[0]))]
        self.loader.run(lambda name: cols[self.layer_index[name]], int_policy=self.int_policy)

    def gradient(self, batch: Any, loss_fn: LossFn | None = None) -> float:
        """Load the soup, compute the loss on ``batch`` and set ``logits.grad`` and
        ``beta.grad``; returns the loss.

        ``logits.grad[k, g] = Σ_j ∂α_{j,g}/∂logits_{k,g} · Σ_{t in g} ⟨∂L/∂θ_t, θ_{j,t}⟩``.
        """
        import torch

        self.load()
        for p in self.params.values():
            if p.grad is not None:
                p.grad.zero_()  # in place: the engine keeps the gradients' addresses
        if self.beta.grad is not None:
            self.beta.grad.zero_()
        error = None
        try:
            loss = (loss_fn or cross_entropy_loss)(self.module, batch, self.beta)
            loss.backward()
            grads = {n: p.grad for n, p in self.params.items() if p.grad is not None}
            dots = self.loader.dot(from_tensors("<gradients>", grads))
        except Exception as e:  # noqa: BLE001 - re-raised below (on every rank)
            error = e
        if self.group is None:
            if error is not None:
                raise error
            loss_value = float(loss.detach())
        else:
            from ..engine.distributed import reduce_gradient

            self.group.check(error)
            beta_grad = float(self.beta.grad) if self.beta.grad is not None else 0.0
            dots, loss_value, beta_grad = reduce_gradient(
                self.group, dots, float(loss.detach()), beta_grad, self.batch_weight(batch))
            self.beta.grad = torch.tensor(beta_grad, dtype=self.beta.dtype)
        d_alpha = torch.zeros_like(self.logits)
        for name, values in dots.items():
            d_alpha[:, self.layer_index[name]] += torch.tensor(values, dtype=torch.float64)
        self.logits.grad = torch.autograd.grad(self.alphas(), self.logits, d_alpha)[0]
        return loss_value

    def fit(self, batches: Sequence[Any], *, epochs: int = 3, lr: float = 0.1,
            weight_decay: float = 0.0, loss_fn: LossFn | None = None,
            log: ResultsLog | str | None = None, out: str | os.PathLike | None = None,
            overwrite: bool = False, max_shard_size: int | str = "5GB",
            progress: bool = False) -> LearnedSoupResult:
        """Train the coefficients with AdamW (one step per batch), then load the
        final soup into the module and optionally write it.

        Args:
            batches: held-out batches, iterated once per epoch.
            epochs, lr, weight_decay: AdamW schedule (paper: 3 epochs, lr 0.1).
            loss_fn: ``loss_fn(module, batch, beta)`` (default: cross-entropy of β·logits).
            log: JSONL results log (one line per step).
            out: write the final soup (safetensors, recipe in the metadata).
            overwrite, max_shard_size: output options.
            progress: tqdm bar over steps.

        Returns:
            A :class:`LearnedSoupResult`.
        """
        import torch

        if out is not None:  # before any step: a bad destination fails first
            checked_output(out, self.sets, overwrite=overwrite)
        log = as_log(log if self.group is None or self.group.rank == 0 else None)
        opt = torch.optim.AdamW([self.logits, self.beta], lr=lr, weight_decay=weight_decay)
        losses = []
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise LadleValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
        steps = [b for _ in range(epochs) for b in batches]
        if not steps:
            raise LadleValueError("no held-out batches: a learned soup needs at least one step")
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="learned soup", unit="step")
        for batch in steps:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss = self.gradient(batch, loss_fn)
            opt.step()
            losses.append(loss)
            log.append("learned-soup/step", ingredients=[s.label for s in self.sets],
                       weights=self.alphas().detach().tolist(), loss=loss,
                       beta=float(self.beta.detach()), seconds=time.perf_counter() - t0)
        self.load()
        result = LearnedSoupResult([s.label for s in self.sets], list(self.layers),
                                   self.alphas().detach().tolist(), float(self.beta.detach()),
                                   losses)
        if out is not None:
            def write() -> Any:
                return self.write(out, result, overwrite=overwrite,
                                  max_shard_size=max_shard_size)

            result.out = write() if self.group is None else self.group.on_rank0(write)
        return result

    def write(self, out: str | os.PathLike, result: LearnedSoupResult, *,
              overwrite: bool = False, max_shard_size: int | str = "5GB") -> Any:
        """Stream the soup with the current coefficients from the ingredients to ``out``."""
        a = self.alphas().detach().tolist()
        outputs = []
        for g in self.loader.groups:
            if None in g.inputs or g.ref.n_elems == 0:
                continue
            if g.ref.is_float:
                col = self.layer_index[g.name]
                outputs.append(WriteTensor(g.name, g.ref.dtype, g.ref.shape, "sum",
                                           [(r, a[k][col]) for k, r in enumerate(g.inputs)],
                                           g.ref.n_bytes, g.ref.n_elems))
            else:  # every ingredient has a non-zero weight (softmax)
                op, chosen = nonfloat_inputs(g.inputs, [1.0] * len(g.inputs), self.int_policy)
                outputs.append(WriteTensor(g.name, g.ref.dtype, g.ref.shape, op,
                                           [(r, 1.0) for r in chosen], g.ref.n_bytes,
                                           g.ref.n_elems))
        meta = {"ladle_method": "learned-soup", "ladle_int_policy": self.int_policy,
                "ladle_recipe": json.dumps({"ingredients": result.ingredients,
                                            "layers": result.layers, "alphas": result.alphas,
                                            "beta": result.beta})}
        return write_tensors(out, outputs, self.sets, metadata=meta,
                             max_shard_size=max_shard_size, overwrite=overwrite,
                             threads=self.loader.threads)["out"]


def learned_soup(module: Any, ingredients: Sequence[Any], batches: Sequence[Any], *,
                 by_layer: bool | Callable[[str], str] = False, epochs: int = 3,
                 lr: float = 0.1, weight_decay: float = 0.0, beta: float = 1.0,
                 loss_fn: LossFn | None = None, out: str | os.PathLike | None = None,
                 log: ResultsLog | str | None = None, key_map: KeyMap = None,
                 strict: bool = True, threads: int = 0, memory_budget: int | str = "256MiB",
                 overwrite: bool = False, progress: bool = False,
                 distributed: bool | None = None,
                 batch_weight: Callable[[Any], float] | None = None,
                 int_policy: str = "first") -> LearnedSoupResult:
    """Train and load a learned soup (see :class:`LearnedSoup`); one call.

    Example:
        >>> r = ladle.learned_soup(model, paths, heldout_batches, by_layer=True)  # doctest: +SKIP
        >>> r.alphas                                                              # doctest: +SKIP
    """
    if out is not None:
        checked_output(out, ingredients, overwrite=overwrite)  # before reading ingredients
    soup = LearnedSoup(module, ingredients, by_layer=by_layer, beta=beta, key_map=key_map,
                       strict=strict, threads=threads, memory_budget=memory_budget,
                       distributed=distributed, batch_weight=batch_weight,
                       int_policy=int_policy)
    return soup.fit(batches, epochs=epochs, lr=lr, weight_decay=weight_decay, loss_fn=loss_fn,
                    log=log, out=out, overwrite=overwrite, progress=progress)
