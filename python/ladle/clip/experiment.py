"""Shared set-up of the pipelines: model + tokenizer from the config, datasets (built-in
digits, ImageFolder directories, CSV files), the held-out split carved from the
training set, the zero-shot classifier θ0 saved as safetensors, and evaluation
callbacks.

Config keys used here (JSON; see ``presets/``)::

    "model":     {"name": "ViT-B-32", "pretrained": null | tag | file, "config": file}
    "templates": "imagenet" | "simple" | "digits" | file | [...]
    "data":      {"builtin": "digits"} or
                 {"train": dir|csv, "test": dir|csv, "shifts": [dir|csv|{"path", "name",
                  "class_subset", "class_map"}], "classnames": [...] | file}
    "heldout":   {"fraction": 0.02, "seed": 0}
    "loader":    {"workers": 4, "prefetch_factor": 2, "persistent_workers": false}
    "eval":      {"batch_size": 512, "autocast": null | "bf16" | "fp16",
                  "device": "cpu" | "cuda"}

Directories, CSV files and tar shards stream from disk (decoded per batch by
DataLoader workers, through the model's own open_clip preprocessing); only the
built-in digit domains live in memory.

Example:
    >>> exp = Experiment.from_config(load_preset("demo"), "runs/demo")   # doctest: +SKIP
    >>> exp.evaluate(exp.zeroshot)                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import ImageSet, heldout_split, load_dataset, split_record


@dataclass
class Experiment:
    """Everything a pipeline needs, built once from a config."""

    config: dict[str, Any]
    out_dir: Path
    clip: Any
    tokenizer: Any
    classnames: list[str]
    train: ImageSet
    heldout: ImageSet
    test: ImageSet
    shifts: dict[str, ImageSet]
    zeroshot: Any = None
    theta0: Path | None = None
    split: dict[str, Any] = field(default_factory=dict)
    log: Any = None

    @property
    def eval_sets(self) -> dict[str, ImageSet]:
        """Held-out, ID test, then the shifts (ordered)."""
        return {"heldout": self.heldout, "id": self.test, **self.shifts}

    @property
    def report_sets(self) -> dict[str, ImageSet]:
        """ID test then the shifts (what the reports show)."""
        return {"id": self.test, **self.shifts}

    @classmethod
    def from_config(cls, config: dict[str, Any], out_dir: str | os.PathLike, *,
                    clip: Any = None, tokenizer: Any = None,
                    builtin: dict[str, ImageSet] | None = None,
                    log: Any = None) -> Experiment:
        """Create the model, load the data, carve the held-out split, build and save θ0.

        Args:
            config: pipeline config (see the module docstring).
            out_dir: results directory (created).
            clip, tokenizer: an already-built CLIP (skips ``config["model"]``).
            builtin: named in-memory datasets (the demo's digit domains).
            log: :class:`ladle.ResultsLog` (default: ``out_dir/results.jsonl``).

        Returns:
            The :class:`Experiment`.
        """
        import ladle

        from .models import create_clip
        from .templates import get_templates
        from .zeroshot import build_zeroshot_classifier

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        log = ladle.ResultsLog(out / "results.jsonl") if log is None else log
        if clip is None:
            m = config["model"]
            clip, tokenizer = create_clip(m["name"], m.get("pretrained"), config=m.get("config"))
        size = clip.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        data = dict(config.get("data", {}))
        if data.get("builtin") == "digits" and builtin is None:
            from .digits import demo_splits

            builtin = demo_splits(int(data.get("seed", 0)), cache=data.get("cache"))
        classnames = _classnames(data, builtin)
        train = load_dataset(data.get("train", "train"), size, classnames, builtin)
        test = load_dataset(data.get("test", "test"), size, classnames, builtin)
        shifts = {}
        for spec in data.get("shifts", ["sklearn", "fonts", "mnist-c"] if builtin else []):
            ds = load_dataset(spec, size, classnames, builtin)
            shifts[ds.name] = ds
        limit = data.get("limit")
        if limit:
            train, test = train.subset(range(min(limit, len(train)))), test.subset(
                range(min(limit, len(test))))
            shifts = {n: d.subset(range(min(limit, len(d)))) for n, d in shifts.items()}
        ho = config.get("heldout", {"fraction": 0.1, "seed": 0})
        tr_idx, ho_idx = heldout_split(len(train), float(ho["fraction"]), int(ho.get("seed", 0)))
        split = split_record(tr_idx, ho_idx, int(ho.get("seed", 0)), float(ho["fraction"]))
        exp = cls(config, out, clip, tokenizer, classnames, train.subset(tr_idx, "train"),
                  train.subset(ho_idx, "heldout"), test, shifts, split=split, log=log)
        (out / "split.json").write_text(json.dumps({**split, "heldout_indices": ho_idx}))
        exp.zeroshot = build_zeroshot_classifier(clip, tokenizer, classnames,
                                                 get_templates(config.get("templates",
                                                                          "imagenet")))
        exp.theta0 = ladle.save(exp.zeroshot, out / "zeroshot.safetensors", overwrite=True)
        log.append("split", **split)
        return exp

    def evaluate(self, module: Any, sets: dict[str, ImageSet] | None = None,
                 return_logits: bool = False) -> Any:
        """Accuracies of ``module`` on held-out, ID and every shift, plus averages."""
        from .evaluate import evaluate_model

        ev = self.config.get("eval", {})
        return evaluate_model(module, sets or self.eval_sets, id_name="id",
                              return_logits=return_logits, loader=self.config.get("loader"),
                              batch_size=int(ev.get("batch_size", 512)),
                              autocast=ev.get("autocast"))

    @property
    def eval_device(self) -> str:
        """``eval.device`` of the config (default ``cpu``)."""
        return str(self.config.get("eval", {}).get("device", "cpu"))

    def fresh_model(self, device: str | None = None) -> Any:
        """A classifier with θ0's architecture to stream other weights into, on
        ``device`` (default CPU; the WiSE-FT sweep and ``evaluate`` pass
        :attr:`eval_device`: ``ladle.load_into`` and the sweep stage weights into CUDA
        modules; the soups stay on the CPU)."""
        from .zeroshot import new_classifier_like

        return new_classifier_like(self.zeroshot).to(device or "cpu")


def _classnames(data: dict[str, Any], builtin: dict[str, ImageSet] | None) -> list[str]:
    names = data.get("classnames")
    if isinstance(names, list):
        return names
    if isinstance(names, str):
        p = Path(names)
        text = p.read_text()
        return json.loads(text) if p.suffix == ".json" else [
            ln.strip() for ln in text.splitlines() if ln.strip()]
    if builtin:
        return list(next(iter(builtin.values())).classnames)
    train = Path(data["train"])
    if train.is_dir():
        return sorted(p.name for p in train.iterdir() if p.is_dir())
    raise ValueError("data.classnames is required for CSV datasets")


def accuracy_summary(acc: dict[str, Any], shift_names: list[str]) -> str:
    """One line: ``id 97.1 | sklearn 80.2 | ... | avg-ood 81.0``."""
    parts = [f"id {100 * acc['id']:.1f}"] + [f"{n} {100 * acc[n]:.1f}" for n in shift_names]
    return " | ".join(parts + [f"avg-ood {100 * acc['avg_ood']:.1f}"])
