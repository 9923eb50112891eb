"""Smoke run of ``bench_harness_eval.py`` (a few dozen images, one worker): the two
evaluation paths run, count the same images and agree; runs in seconds under
``pytest benchmarks --benchmark-disable``. The figures come from the script itself."""

from __future__ import annotations

import pytest

pytest.importorskip("open_clip")

from bench_harness_eval import run


def test_harness_eval_smoke(tmp_path) -> None:
    res = run(40, tmp_path, batch_size=16, workers=1, check=False)
    assert res["ladle"]["n"] == res["plain"]["n"] == 40
    assert abs(res["ladle"]["acc"] - res["plain"]["acc"]) <= 1 / 40
    assert res["ratio"] > 0 and res["ladle"]["peak_pss_bytes"] > 0
    assert (tmp_path / "images-40" / ".complete").is_file()
