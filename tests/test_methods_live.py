"""Methods take every input kind (issue 16, "one Python pipeline"): live modules,
dicts of torch tensors or numpy arrays are read in place and give the same bytes
as the same tensors saved as safetensors files; what in-memory inputs cannot do
(resume, distributed) is refused by name before anything is written."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file

from ladle.errors import LadleValueError
from ladle.methods import methods

from st_io import read_checkpoint

METHOD_CASES = [
    ("ties", {"density": 0.5, "weight": 1.0}),
    ("dare_ties", {"density": 0.6, "weight": 0.7}),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.1, "weight": 1.0}),
    ("task_arithmetic", {"weight": 0.4}),
    ("model_stock", {}),
    ("model_stock", {"filter_wise": True}),  # per-row runs release what they read
]


def _models(n: int, seed: int = 0) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    base = {"layer.weight": torch.randn(24, 16, generator=g).to(torch.bfloat16),
            "layer.bias": torch.randn(24, generator=g),
            "norm.weight": torch.randn(16, generator=g).to(torch.float16)}
    models = [{k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype)
               for k, v in base.items()} for _ in range(n)]
    return base, models


def _saved(tmp_path, name: str, sd: dict):
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("method,parameters", METHOD_CASES)
def test_dict_inputs_match_files(tmp_path, method, parameters):
    base, models = _models(3)
    files = [_saved(tmp_path, f"m{k}", m) for k, m in enumerate(models)]
    base_file = _saved(tmp_path, "base", base)
    from_files = methods.merge_models(method, files, tmp_path / "files.safetensors",
                                      base_model=base_file, parameters=parameters,
                                      progress=False, seed=3)
    from_dicts = methods.merge_models(method, models, tmp_path / "dicts.safetensors",
                                      base_model=base, parameters=parameters,
                                      progress=False, seed=3)
    assert from_dicts.n_tensors == from_files.n_tensors == 3
    # The metadata names the inputs differently; every tensor (dtype, shape, bytes)
    # is the same.
    assert (read_checkpoint(tmp_path / "dicts.safetensors")
            == read_checkpoint(tmp_path / "files.safetensors"))


def test_live_modules_and_numpy_arrays(tmp_path):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 6), torch.nn.Linear(8, 6)
    out = methods.merge_models("slerp", [b], tmp_path / "live.safetensors", base_model=a,
                               parameters={"t": 0.3}, progress=False)
    assert out.n_tensors == 2
    np_a = {k: v.detach().numpy().copy() for k, v in a.state_dict().items()}
    np_b = {k: v.detach().numpy().copy() for k, v in b.state_dict().items()}
    methods.merge_models("slerp", [np_b], tmp_path / "numpy.safetensors", base_model=np_a,
                         parameters={"t": 0.3}, progress=False)
    live = read_checkpoint(tmp_path / "live.safetensors")
    assert live == read_checkpoint(tmp_path / "numpy.safetensors")
    # t between the endpoints: neither input is returned unchanged.
    assert live["weight"][2] not in (np_a["weight"].tobytes(), np_b["weight"].tobytes())


def test_same_dict_as_base_and_model_contributes_once(tmp_path):
    base, models = _models(2)
    with_base = methods.merge_models("ties", [base, *models], tmp_path / "a.safetensors",
                                     base_model=base, parameters={"density": 0.5,
                                                                  "weight": 1.0},
                                     progress=False)
    without = methods.merge_models("ties", models, tmp_path / "b.safetensors",
                                   base_model=base, parameters={"density": 0.5, "weight": 1.0},
                                   progress=False)
    assert with_base.bytes_read == without.bytes_read
    # Two different dicts with equal labels are both inputs, not deduplicated.
    twin = {k: v.clone() for k, v in models[0].items()}
    both = methods.merge_models("ties", [models[0], twin], tmp_path / "c.safetensors",
                                base_model=base, parameters={"density": 0.5, "weight": 1.0},
                                progress=False)
    assert both.bytes_read == without.bytes_read


@pytest.mark.parametrize("option", ["resume", "distributed"])
def test_memory_inputs_refuse_resume_and_distributed(tmp_path, option):
    base, models = _models(2)
    out = tmp_path / "out"
    with pytest.raises(LadleValueError, match=option if option == "resume" else "distributed"):
        methods.merge_models("ties", models, out, base_model=base,
                             parameters={"density": 0.5, "weight": 1.0}, progress=False,
                             **{option: True})
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial, no lock left


def test_unsupported_object_is_named(tmp_path):
    with pytest.raises(LadleValueError, match="cannot read tensors from a int"):
        methods.merge_models("ties", [3], tmp_path / "o.safetensors", base_model={},
                             progress=False)


def test_models_given_as_an_iterator(tmp_path):
    base, models = _models(2)
    report = methods.merge_models("ties", iter(models), tmp_path / "o.safetensors",
                                  base_model=base, parameters={"density": 0.5, "weight": 1.0},
                                  progress=False)
    assert report.n_tensors == 3
    assert (read_checkpoint(tmp_path / "o.safetensors")
            != read_checkpoint(_saved(tmp_path, "base", base)))
