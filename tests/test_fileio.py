"""Atomic writes: the target is replaced whole or not at all; no temporary file survives."""
from __future__ import annotations

import json

import pytest

from recpipe.fileio import atomic_write, atomic_write_json


def test_writes_replace_the_target_and_leave_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    assert p.read_text().startswith('{\n  "a"')  # indented, sorted keys
    atomic_write(p, lambda fh: fh.write(b"raw"))
    assert p.read_bytes() == b"raw"
    assert [x.name for x in p.parent.iterdir()] == ["f.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def broken(fh):
        fh.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, broken, binary=False)
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_json_extra_arguments_pass_through(tmp_path):
    p = tmp_path / "d.json"
    atomic_write_json(p, {"when": object()}, default=lambda o: "obj")
    assert json.loads(p.read_text()) == {"when": "obj"}
