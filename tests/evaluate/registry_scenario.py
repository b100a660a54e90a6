"""One champion/challenger scenario run against any MLflow store (sqlite file or a live ``mlflow server``)."""
from __future__ import annotations

import filecmp
import os

from recpipe.tracking.registry import REJECTED_TAG, ModelRegistry, resolve_alias_dir


def model_dirs(root: str, n: int = 3) -> list[str]:
    """n distinct fake model directories (a model.json plus a nested weights file)."""
    out = []
    for i in range(n):
        d = os.path.join(root, f"model{i + 1}")
        os.makedirs(os.path.join(d, "sub"), exist_ok=True)
        with open(os.path.join(d, "model.json"), "w") as fh:
            fh.write(f'{{"version": {i + 1}}}')
        with open(os.path.join(d, "sub", "weights.bin"), "wb") as fh:
            fh.write(bytes([i]) * 1000)
        out.append(d)
    return out


def same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)
    return (not cmp.left_only and not cmp.right_only and not cmp.diff_files
            and all(same_tree(os.path.join(a, s), os.path.join(b, s)) for s in cmp.common_dirs))


def exercise(uri: str, tmp: str, name: str = "ctr") -> None:
    """Register, promote twice, reject, roll back and forward, download; asserts every alias move."""
    reg = ModelRegistry(name, uri)
    d1, d2, d3 = model_dirs(os.path.join(tmp, "src"))
    assert reg.by_alias("champion") is None and reg.aliases() == {}
    assert resolve_alias_dir("champion", os.path.join(tmp, "none"), name, uri) is None

    v1 = reg.register(d1, tags={"recpipe.gate.decision": "pass"})
    assert reg.promote(v1.version) == {"champion": v1.version, "previous": None}
    assert reg.aliases() == {"champion": v1.version}
    v2 = reg.register(d2)
    assert reg.promote(v2.version) == {"champion": v2.version, "previous": v1.version}
    assert reg.aliases() == {"champion": v2.version, "previous": v1.version}
    assert reg.promote(v2.version)["champion"] == v2.version  # idempotent: previous is not overwritten
    assert reg.aliases()["previous"] == v1.version

    v3 = reg.register(d3)
    reg.reject(v3.version, ["relative auc [overall]: exceeds tolerance"])
    tags = reg.get(v3.version).tags
    assert tags[REJECTED_TAG] == "true" and "exceeds tolerance" in tags["rejection_reasons"]
    assert reg.aliases() == {"champion": v2.version, "previous": v1.version}

    assert reg.rollback("bad online CTR") == {"champion": v1.version, "previous": v2.version}
    assert reg.get(v2.version).tags["recpipe.rollback_reason"] == "bad online CTR"
    got = reg.download("champion", os.path.join(tmp, "dl1"))
    assert same_tree(got, d1)
    got = resolve_alias_dir("previous", os.path.join(tmp, "dl2"), name, uri)
    assert got is not None and same_tree(got, d2)
    assert reg.rollback()["champion"] == v2.version  # a second rollback rolls forward
    assert same_tree(reg.download(v3.version, os.path.join(tmp, "dl3")), d3)
