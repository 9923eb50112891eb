"""include=/exclude= given as a plain string mean one glob, everywhere they are taken."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ladle
from ladle.analysis.geometry import Gram
from ladle.errors import LadleValueError
from ladle.methods.methods import merge_models

NAMES = ["layer.0.weight", "layer.0.bias", "head.weight"]


@pytest.fixture
def inputs(tmp_path):
    paths = []
    for k in range(2):
        path = tmp_path / f"in{k}.safetensors"
        save_file({n: np.full(3, k + i, np.float32) for i, n in enumerate(NAMES)}, str(path))
        paths.append(path)
    return paths


def test_merge_string_include_is_one_pattern(inputs, tmp_path):
    out = tmp_path / "inc.safetensors"
    ladle.merge(inputs, [0.5, 0.5], out, include="layer.0.weight", progress=False)
    assert list(load_file(str(out))) == ["layer.0.weight"]


def test_soup_and_interpolate_string_exclude_is_one_pattern(inputs, tmp_path):
    # As a sequence of characters, "*.bias" held "*": it excluded every tensor.
    ladle.soup(inputs, tmp_path / "s.safetensors", exclude="*.bias", progress=False)
    assert sorted(load_file(str(tmp_path / "s.safetensors"))) == ["head.weight",
                                                                  "layer.0.weight"]
    ladle.interpolate(*inputs, 0.5, tmp_path / "i.safetensors", include="head.*",
                      progress=False)
    assert list(load_file(str(tmp_path / "i.safetensors"))) == ["head.weight"]


def test_merge_models_and_live_inputs_string_patterns(inputs, tmp_path):
    merge_models("linear", inputs, tmp_path / "m.safetensors", include="layer.*",
                 exclude="*.bias", model_parameters=[{"weight": 1}, {"weight": 1}],
                 progress=False)
    assert list(load_file(str(tmp_path / "m.safetensors"))) == ["layer.0.weight"]
    import torch

    live = [{n: torch.from_numpy(v) for n, v in load_file(str(p)).items()} for p in inputs]
    ladle.merge(live, [0.5, 0.5], tmp_path / "l.safetensors", include="head.weight",
                progress=False)
    assert list(load_file(str(tmp_path / "l.safetensors"))) == ["head.weight"]


def test_gram_select_string_patterns():
    gram = Gram(["a", "b"], {}, {n: (3, 3) for n in NAMES})
    assert gram.select(include="layer.*", exclude="*.bias", exclude_gains=False) == [
        "layer.0.weight"]


@pytest.mark.parametrize("bad", [5, b"*.weight", ["ok", 3], object()])
def test_garbage_patterns_are_refused(inputs, tmp_path, bad):
    with pytest.raises(LadleValueError, match="include must"):
        ladle.merge(inputs, [0.5, 0.5], tmp_path / "x.safetensors", include=bad,
                    progress=False)
    assert not (tmp_path / "x.safetensors").exists()
