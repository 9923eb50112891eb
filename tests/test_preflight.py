"""``ladle check`` and ``ladle merge --dry-run`` report from headers alone: missing,
extra and mismatched tensors, the dtype plan, FP8 scale pairs, output size, free
disk space and open files, before any tensor byte is read."""

from __future__ import annotations

import numpy as np
import pytest

import ladle
from ladle.cli.cli import main
from ladle.errors import LadleValueError

from st_io import write_raw


def _f(n, dtype="F32"):
    item = {"F32": 4, "F16": 2, "F8_E4M3": 1}[dtype]
    return dtype, [n], np.zeros(n * item, np.uint8).tobytes()


def test_check_reports_every_problem_without_reading_data(tmp_path, capsys):
    a = write_raw(tmp_path / "a.safetensors", {"w": _f(4, "F16"), "v": _f(3), "gone": _f(1),
                                               "q": _f(4, "F8_E4M3"), "q_scale_inv": _f(1)})
    b = write_raw(tmp_path / "b.safetensors", {"w": _f(4), "v": _f(5), "new": _f(1),
                                               "q": _f(4, "F8_E4M3"), "q_scale_inv": _f(1)})
    assert main(["check", str(a), str(b), "-o", str(tmp_path / "out")]) == 1
    text = capsys.readouterr().out
    assert "missing 1 tensor(s)" in text and "'gone'" in text
    assert "1 extra tensor(s)" in text and "'new'" in text
    assert "tensor 'v': shapes differ: [[3], [5]]" in text
    assert "1 tensor(s) F16+F32 -> F32" in text
    assert "FP8 scale pairs: 1 ('q + q_scale_inv')" in text
    assert "bytes free" in text and "files open at once: 3" in text
    assert "is not a block scale of 'q' (F8_E4M3[4]): block scales need a 2-D weight" in text
    assert text.rstrip().endswith("4 problem(s)")


def test_block_scaled_fp8_is_refused_not_averaged(tmp_path):
    tensors = {"l.weight": _f(4, "F8_E4M3"), "l.weight_scale_inv": _f(1)}
    a = write_raw(tmp_path / "a.safetensors", tensors)
    b = write_raw(tmp_path / "b.safetensors", tensors)
    with pytest.raises(LadleValueError, match="tensor 'l.weight_scale_inv' .* is not a block "
                                              "scale of 'l.weight'"):
        ladle.merge([a, b], [0.5, 0.5], tmp_path / "o.safetensors", progress=False)
    assert not (tmp_path / "o.safetensors").exists()


def test_check_ok_and_dry_run_prints_plan(tmp_path, capsys):
    a = write_raw(tmp_path / "a.safetensors", {"w": _f(4, "F16")})
    b = write_raw(tmp_path / "b.safetensors", {"w": _f(4)})
    assert main(["check", str(a), str(b)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "o"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 tensor(s) F16+F32 -> F32" in out and "output: 16 bytes" in out
    assert not (tmp_path / "o").exists()
    c = write_raw(tmp_path / "c.safetensors", {"w": _f(5)})
    assert main(["merge", str(a), str(c), "--alpha", "0.5", "-o", str(tmp_path / "o"),
                 "--dry-run"]) == 2
    assert "shapes differ" in capsys.readouterr().err
