"""The demo report's analysis sections (ladle.clip.analyses + report + plots) on
synthetic logits and tiny checkpoints: the tables hold exactly what the analysis
functions return, the plots are valid PNGs, and connectivity has a known answer.
The end-to-end demo run is checked in test_clip_harness.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

import ladle
from ladle.analysis import calibration as cal
from ladle.analysis import geometry
from ladle.analysis.diversity import confidence_margin, diversity_report, override_analysis
from ladle.clip import analyses
from ladle.clip.data import DIGIT_NAMES, ImageSet
from ladle.clip.plots import plot_connectivity, plot_reliability
from ladle.clip.report import (
    advantage_markdown,
    analyses_markdown,
    angles_markdown,
    calibration_markdown,
    connectivity_markdown,
    diversity_markdown,
    soup_gap_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    """A PNG that PIL can decode, with a non-trivial size."""
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100


def _set(name: str, n: int, seed: int, **kw) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(name, torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g), list(DIGIT_NAMES), **kw)


def _logits(sets, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Logits that favour the true class, so accuracy and calibration are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, ds in sets.items():
        f = torch.randn(len(ds), 10, generator=g) * scale
        f[torch.arange(len(ds)), ds.labels] += 1.5 * scale
        out[name] = f
    return out


def _curve(alphas, accs_by_set):
    return [{"alpha": a, "acc": {n: accs[i] for n, accs in accs_by_set.items()}}
            for i, a in enumerate(alphas)]


def test_connectivity_table_known_answer(tmp_path):
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    # "peak": concave and above both endpoints in the middle; "dip": below the chord
    # at 0.25 (0.60 < 0.725) and 0.5 (0.65 < 0.75), above it at 0.75 (0.78 ≥ 0.775).
    curve = _curve(alphas, {"peak": [0.70, 0.76, 0.82, 0.81, 0.80],
                            "dip": [0.70, 0.60, 0.65, 0.78, 0.80]})
    conn = analyses.connectivity(curve, ["peak", "dip"])
    peak, dip = conn["datasets"]["peak"], conn["datasets"]["dip"]
    assert peak["connected"] and peak["beating_alphas"] == [0.5, 0.75]
    assert not dip["connected"] and dip["lmc"] == [True, False, False, True, True]
    assert not dip["beats_any"]
    table = connectivity_markdown(conn)
    assert "| peak | 70.0 | 80.0 | yes | – | 0.5, 0.75 | 0.5 (+2.0) |" in table
    assert "| dip | 70.0 | 80.0 | **no** | 0.25, 0.5 | – | 0.75 (-2.0) |" in table
    assert_png(plot_connectivity(conn, tmp_path / "connectivity.png"))


def test_report_sections_equal_direct_analysis_calls(tmp_path):
    sets = {"heldout": _set("heldout", 80, 0), "id": _set("id", 90, 1),
            "shift": _set("shift", 70, 2),
            "subset": _set("subset", 40, 3, class_subset=[0, 1, 2])}
    zs, ft, mid = _logits(sets, 10, 1.0), _logits(sets, 11, 3.0), _logits(sets, 12, 2.0)
    report_sets = {n: sets[n] for n in ("id", "shift", "subset")}

    div = analyses.diversity(zs, ft, report_sets, mid)
    assert list(div) == ["id", "shift"]  # the class-subset set is left out
    for name in div:
        y = sets[name].labels
        direct = diversity_report(zs[name], ft[name], y)
        direct["margin_zs"] = confidence_margin(zs[name])
        direct["margin_ft"] = confidence_margin(ft[name])
        ov = override_analysis(zs[name], ft[name], mid[name])
        direct.update({k: ov[k] for k in ("disagree_rate", "override_rate",
                                          "overridden_rate")})
        assert div[name] == pytest.approx(direct, rel=0, abs=0)

    models = {"zero-shot": zs, "fine-tuned": ft, "WiSE-FT α=0.5": mid}
    calib = analyses.calibration(models, sets, sets["heldout"])
    for label, logits in models.items():
        t = cal.fit_temperature(logits["heldout"], sets["heldout"].labels)
        assert calib[label]["temperature"] == t
        assert set(calib[label]) == {"temperature", "id", "shift"}
        for name in ("id", "shift"):
            y, f = sets[name].labels, logits[name].double()  # scaled in fp64
            assert calib[label][name] == {
                "ece": cal.expected_calibration_error(f, y, from_logits=True),
                "ece_scaled": cal.expected_calibration_error(f / t, y, from_logits=True)}
            # the diagram's bins are what ECE sums
            b = cal.reliability_bins(logits[name], y, from_logits=True)
            assert b["weight"].sum() == pytest.approx(1.0)
            assert (b["weight"] * abs(b["accuracy"] - b["confidence"])).sum() == pytest.approx(
                calib[label][name]["ece"], abs=1e-12)

    conn = analyses.connectivity(_curve([0.0, 0.5, 1.0], {"id": [0.5, 0.7, 0.6]}), ["id"])
    res = {"diversity": div, "mid_source": "WiSE-FT α=0.5", "connectivity": conn,
           "angles": {"labels": ["a", "b"], "phi": np.array([[0.0, 12.5], [12.5, 0.0]]),
                      "norms": np.array([0.25, 0.5]), "n_tensors": 3, "n_elems": 1234},
           "calibration": calib,
           "plots": {"connectivity": "connectivity.png", "calibration": "calibration.png"}}
    text = analyses_markdown(res, seconds=1.25)
    for section in (diversity_markdown(div, "WiSE-FT α=0.5"), connectivity_markdown(conn),
                    angles_markdown(res["angles"]), calibration_markdown(calib),
                    "![connectivity](connectivity.png)", "![calibration](calibration.png)"):
        assert section in text
    r = div["id"]
    assert (f"| id | {100 * r['pd']:.1f} | {r['cc']:.3f} | {r['kl']:.3f} | {r['ckac']:.3f} |"
            in text)
    c = calib["fine-tuned"]
    assert (f"| fine-tuned | {c['temperature']:.3f} | {100 * c['id']['ece']:.2f} → "
            f"{100 * c['id']['ece_scaled']:.2f} |") in text
    assert "| 1: b | 0.500 | 12.5 | – |" in text

    png = plot_reliability(models, analyses.plain_sets(report_sets), tmp_path / "cal.png",
                           temperatures={k: v["temperature"] for k, v in calib.items()})
    assert_png(png)


def test_ingredient_angles_match_geometry_angle(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8),
                               torch.nn.Linear(8, 3))
    paths = [ladle.save(base, tmp_path / "zs.safetensors")]
    for seed in (1, 2, 3):
        g = torch.Generator().manual_seed(seed)
        m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8),
                                torch.nn.Linear(8, 3))
        m.load_state_dict({k: v + 0.1 * torch.randn(v.shape, generator=g)
                           for k, v in base.state_dict().items()})
        paths.append(ladle.save(m, tmp_path / f"ft{seed}.safetensors"))
    res = analyses.ingredient_angles(paths[0], paths[1:], ["a", "b", "c"])
    assert res["n_tensors"] == 2 and res["n_elems"] == 6 * 8 + 8 * 3  # no biases/norms
    for i, j in ((0, 1), (0, 2), (1, 2)):
        direct = geometry.angle(paths[0], paths[1 + i], paths[1 + j])
        assert res["phi"][i, j] == pytest.approx(direct["phi_degrees"], abs=1e-9)
        assert res["phi"][j, i] == res["phi"][i, j]
        assert res["norms"][i] == pytest.approx(direct["norm1"], rel=1e-12)
    assert np.all(np.diag(res["phi"]) == 0)


def check_demo_analyses(out) -> None:
    """The analyses of a finished ``ladle clip demo`` run in ``out``: every section's
    table equals the one built from direct analysis calls on the saved logits and
    labels (and the JSONL sweep), the angle equals ``geometry.angle`` on the saved
    ingredients, and both plots are valid PNGs. Called by the CLI demo test."""
    import json

    from safetensors.torch import load_file

    from ladle.analysis.connectivity import connectivity_report

    text = (out / "report.md").read_text()
    for header in ("## Analyses", "### Prediction diversity", "### Linear mode connectivity",
                   "### Angle between fine-tuned ingredients", "### Calibration before and after"):
        assert header in text, header
    for name in ("connectivity", "angles", "soup_gap", "calibration"):
        assert f"![{name}]({name}.png)" in text
        assert_png(out / f"{name}.png")

    saved = load_file(str(out / "analysis_logits.safetensors"))
    labels = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("labels/")}
    models = {}
    for key, t in saved.items():
        model, name = key.split("/", 1)
        if model != "labels":
            models.setdefault(model, {})[name] = t
    assert {"zero-shot", "fine-tuned", "WiSE-FT α=0.5", "greedy soup"} <= set(models)
    report_sets = [n for n in labels if n != "heldout"]
    zs, ft, mid = models["zero-shot"], models["fine-tuned"], models["WiSE-FT α=0.5"]
    div = {}
    for n in report_sets:
        div[n] = diversity_report(zs[n], ft[n], labels[n])
        div[n].update(margin_zs=confidence_margin(zs[n]), margin_ft=confidence_margin(ft[n]))
        ov = override_analysis(zs[n], ft[n], mid[n])
        div[n].update({k: ov[k] for k in ("disagree_rate", "override_rate", "overridden_rate")})
    assert diversity_markdown(div, "WiSE-FT α=0.5") in text

    calib = {}
    for label, logits in models.items():
        t = cal.fit_temperature(logits["heldout"], labels["heldout"])
        calib[label] = {"temperature": t}
        for n in report_sets:
            f = logits[n].double()
            calib[label][n] = {
                "ece": cal.expected_calibration_error(f, labels[n], from_logits=True),
                "ece_scaled": cal.expected_calibration_error(f / t, labels[n], from_logits=True)}
    assert calibration_markdown(calib) in text

    records = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    sweep = [r for r in records if r["method"] == "wiseft/alpha"]
    alphas = [r["alpha"] for r in sweep]
    names = report_sets + ["avg_ood"]
    curves = {n: [r["acc"][n] for r in sweep] for n in names}
    conn = {"alphas": alphas, "datasets": connectivity_report(alphas, curves)}
    for n in names:
        conn["datasets"][n]["accs"] = curves[n]
    assert connectivity_markdown(conn) in text

    (rec,) = [r for r in records if r["method"] == "analysis/angles"]
    runs = [max((out / "models" / f"run{i:03d}").glob("*.safetensors")) for i in (0, 1)]
    direct = geometry.angle(out / "zeroshot.safetensors", *runs)
    assert rec["phi_degrees"][0][1] == pytest.approx(direct["phi_degrees"], abs=1e-9)
    assert f"| 1: {rec['labels'][1]} | {direct['norm2']:.3f} | {direct['phi_degrees']:.1f} |" \
        in text
    # Interpolation advantage: one held-out accuracy per ingredient, a symmetric matrix,
    # and the report's pair table built from them.
    adv, accs = np.array(rec["advantage"]), np.array(rec["heldout_acc"])
    assert accs.shape == (len(rec["labels"]),) and np.all((accs > 0) & (accs <= 1))
    assert np.array_equal(adv, adv.T) and np.all(np.diag(adv) == 0)
    assert advantage_markdown({**rec, "phi": np.array(rec["phi_degrees"]), "accs": accs,
                               "advantage": adv}) in text
    # Soup vs ensemble: the table shows the logged rows; each estimate is its two terms.
    (gap,) = [r for r in records if r["method"] == "analysis/soup_vs_ensemble"]
    assert soup_gap_markdown(gap) in text and [r["alpha"] for r in gap["rows"]] == [
        0.25, 0.5, 0.75]
    for r in gap["rows"]:
        c = r["alpha"] * (1 - r["alpha"]) / 2
        assert r["estimate"] == pytest.approx(c * (r["variance"] - r["curvature"]), rel=1e-12)
        assert r["gap"] == pytest.approx(r["loss_soup"] - r["loss_ens"], rel=1e-12)
