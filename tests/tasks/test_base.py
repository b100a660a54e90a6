"""Shared step helpers: --config parsing, atomic JSON, model fingerprints."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from recpipe.config import JsonConfig
from recpipe.tasks.base import config_from_arg, model_fingerprint, read_json, write_json


@dataclass(frozen=True)
class Cfg(JsonConfig):
    bits: int = 4
    name: str = "x"


def test_config_from_text_path_and_at_path(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"bits": 8}))
    assert config_from_arg(Cfg, "") == Cfg()
    assert config_from_arg(Cfg, None) == Cfg()
    assert config_from_arg(Cfg, '{"bits": 2}') == Cfg(bits=2)
    assert config_from_arg(Cfg, str(f)) == Cfg(bits=8)
    assert config_from_arg(Cfg, f"@{f}") == Cfg(bits=8)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither a JSON object nor an existing file"):
        config_from_arg(Cfg, "no-such-file.json")
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        config_from_arg(Cfg, f"@{tmp_path / 'missing.json'}")


def test_write_json_is_atomic_and_fingerprint_tracks_content(tmp_path):
    d = tmp_path / "m"
    write_json(d / "model.json", {"a": 1})
    assert read_json(d / "model.json") == {"a": 1}
    assert [p.name for p in d.iterdir()] == ["model.json"]  # no temp file left
    fp = model_fingerprint(str(d))
    (d / "w.bin").write_bytes(b"\x00\x01")
    fp2 = model_fingerprint(str(d))
    (d / "w.bin").write_bytes(b"\x00\x02")
    assert len({fp, fp2, model_fingerprint(str(d))}) == 3
