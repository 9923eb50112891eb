"""Error messages never carry terminal control characters: names and paths that
hold ESC/CSI/BEL are printed escaped, by the CLI and by LadleError itself."""

from __future__ import annotations

import numpy as np

from ladle.cli.cli import main
from ladle.errors import MismatchError, printable

from st_io import write_raw


def test_cli_error_escapes_control_characters(tmp_path, capsys):
    evil = "w\x1b[2J\x07\x9b31m"
    a = write_raw(tmp_path / "a\x1b]0;x\x07.safetensors",
                  {evil: ("F32", [2], np.zeros(2, np.float32).tobytes())})
    b = write_raw(tmp_path / "b.safetensors",
                  {evil: ("F32", [3], np.zeros(3, np.float32).tobytes())})
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "out"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ladle: error: ") and err.count("\n") == 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in err.rstrip("\n")), err
    assert "w\\x1b[2J\\x07\\x9b31m" in err
    assert main(["inspect", str(tmp_path / "no\x1bpe\rx.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "no\\x1bpe\\rx" in err


def test_ladle_error_str_is_printable():
    assert str(MismatchError("tensor 'a\x1b[1m'")) == "tensor 'a\\x1b[1m'"
    assert printable("line\nnext\t") == "line\nnext\\t"
    assert printable("line\nnext", keep_newlines=False) == "line\\nnext"
