"""Alias moves, rejection, rollback and download against a real sqlite MLflow store and a live
``mlflow server`` on loopback; the promote step end to end."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from recpipe.tasks import promote
from recpipe.tasks.base import model_fingerprint
from recpipe.tracking.registry import ModelRegistry, RegistryError
from tests.evaluate.registry_scenario import exercise, model_dirs

SERVER_START_TIMEOUT_S = 120  # the server runs DB migrations on first start; slow on a loaded 2-core box


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One sqlite store for the module (creating its schema costs seconds); tests use distinct model names."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def test_registry_on_sqlite_store(sqlite_uri, tmp_path):
    exercise(sqlite_uri, str(tmp_path), name="scenario")


def test_rollback_without_previous_is_an_error(sqlite_uri, tmp_path):
    reg = ModelRegistry("solo", sqlite_uri)
    (d1,) = model_dirs(str(tmp_path / "src"), 1)
    reg.promote(reg.register(d1).version)
    with pytest.raises(RegistryError, match="rollback needs aliases"):
        reg.rollback()
    with pytest.raises(RegistryError, match="no model.json"):
        reg.register(str(tmp_path))


def _blessing(path, model_dir, blessed, reasons=(), champion=None):
    """A blessing as evaluate writes it; ``champion``: registry version compared against (None: first run)."""
    ref = {"kind": "none"} if champion is None else {"kind": "registry", "version": str(champion)}
    data = {"blessed": blessed, "decision": "pass" if blessed else "fail", "rule": "champion_comparison",
            "reasons": list(reasons), "model_fingerprint": model_fingerprint(model_dir), "days": ["2026-01-01"],
            "metrics": {"auc": 0.8, "ne": 0.7, "calibration": 1.0}, "override": None, "compared_champion": ref}
    path.write_text(json.dumps(data))
    return str(path)


def test_promote_step_pass_fail_and_rollback(sqlite_uri, tmp_path, monkeypatch):
    uri = sqlite_uri
    cfg = promote.PromoteConfig(model_name="ctr", tracking_uri=uri)
    d1, d2, d3 = model_dirs(str(tmp_path / "src"))
    r1 = promote.run(cfg, blessing_path=_blessing(tmp_path / "b1.json", d1, True), model_dir=d1)
    assert r1.metadata["decision"] == "promoted" and r1.metadata["champion"] == r1.metadata["version"]
    r2 = promote.run(cfg, blessing_path=_blessing(tmp_path / "b2.json", d2, True, champion=r1.metadata["version"]),
                     model_dir=d2)
    assert (r2.metadata["champion"], r2.metadata["previous"]) == (r2.metadata["version"], r1.metadata["version"])
    r3 = promote.run(cfg, blessing_path=_blessing(tmp_path / "b3.json", d3, False, ["ne regressed"]), model_dir=d3)
    assert r3.metadata["action"] == "rejected" and r3.metadata["champion"] == r2.metadata["version"]
    reg = ModelRegistry("ctr", uri)
    tags = reg.get(r3.metadata["version"]).tags
    assert tags["challenger-rejected"] == "true" and json.loads(tags["rejection_reasons"]) == ["ne regressed"]
    assert tags["recpipe.gate.decision"] == "fail"
    skipped = promote.run(cfg.replace(register_rejected=False), blessing_path=str(tmp_path / "b3.json"),
                          model_dir=d3)
    assert skipped.metadata["decision"] == "skipped"
    assert max(int(v.version) for v in reg.client.search_model_versions("name='ctr'")) == 3  # nothing new
    # the blessing belongs to d1, not d2: refuse
    with pytest.raises(promote.BlessingError, match="fingerprint"):
        promote.run(cfg, blessing_path=str(tmp_path / "b1.json"), model_dir=d2)
    # every version's artifacts sit under registered/<fingerprint[:12]> of its run
    v2 = reg.get(r2.metadata["version"])
    assert v2.source.endswith(f"/registered/{model_fingerprint(d2)[:12]}")
    assert v2.tags["recpipe.model_fingerprint"] == model_fingerprint(d2)
    # `recpipe promote --rollback` through the CLI entry point
    monkeypatch.setenv("RECPIPE_TRACKING", "off")
    res = promote.main(["--config", cfg.to_json(), "--rollback", "--reason", "online CTR drop"])
    assert res.metadata["action"] == "rolled_back"
    assert reg.aliases() == {"champion": r1.metadata["version"], "previous": r2.metadata["version"]}


def test_promote_refuses_a_stale_comparison(sqlite_uri, tmp_path):
    """Interleaved: A and B are both evaluated against champion v1; B is promoted first; A's blessing is
    stale (compared with v1, the champion is now B's version) and must not move the alias."""
    cfg = promote.PromoteConfig(model_name="interleaved", tracking_uri=sqlite_uri)
    d1, da, db = model_dirs(str(tmp_path / "src"))
    v1 = promote.run(cfg, blessing_path=_blessing(tmp_path / "b1.json", d1, True), model_dir=d1).metadata["version"]
    bless_a = _blessing(tmp_path / "ba.json", da, True, champion=v1)
    bless_b = _blessing(tmp_path / "bb.json", db, True, champion=v1)
    vb = promote.run(cfg, blessing_path=bless_b, model_dir=db).metadata["version"]
    with pytest.raises(promote.BlessingError, match=f"champion version {v1} but the champion is now version {vb}"):
        promote.run(cfg, blessing_path=bless_a, model_dir=da)
    reg = ModelRegistry("interleaved", sqlite_uri)
    assert reg.aliases() == {"champion": vb, "previous": v1}
    # a first-run blessing is stale once any champion exists; a blessing without the field is refused
    with pytest.raises(promote.BlessingError, match=f"first run .* champion is now version {vb}"):
        promote.run(cfg, blessing_path=_blessing(tmp_path / "bn.json", da, True), model_dir=da)
    legacy = json.loads(open(bless_a).read())
    legacy.pop("compared_champion")
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    with pytest.raises(promote.BlessingError, match="compared_champion"):
        promote.run(cfg, blessing_path=str(tmp_path / "legacy.json"), model_dir=da)
    # a champion given as a directory: compared by fingerprint with the registry's champion
    ref = {"kind": "dir", "dir": db, "fingerprint": model_fingerprint(db)}
    fresh = json.loads(open(bless_a).read()) | {"compared_champion": ref}
    (tmp_path / "dir.json").write_text(json.dumps(fresh))
    res = promote.run(cfg, blessing_path=str(tmp_path / "dir.json"), model_dir=da)
    assert res.metadata["action"] == "promoted" and reg.aliases()["champion"] == res.metadata["version"]
    with pytest.raises(promote.BlessingError, match="other contents"):  # db is no longer the champion
        promote.run(cfg, blessing_path=str(tmp_path / "dir.json"), model_dir=da)
    # a comparison against another registered model's champion says nothing about this one's
    other = json.loads(open(bless_a).read())
    other["compared_champion"] = {"kind": "registry", "name": "elsewhere", "version": v1}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(promote.BlessingError, match="'elsewhere' version"):
        promote.run(cfg, blessing_path=str(tmp_path / "other.json"), model_dir=da)
    # a failed gate moves no alias: no staleness check needed
    rej = promote.run(cfg, blessing_path=_blessing(tmp_path / "bf.json", d1, False, ["worse"], champion=v1),
                      model_dir=d1)
    assert rej.metadata["action"] == "rejected"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--uvicorn-opts", "--timeout-graceful-shutdown 2",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)  # own process group:
    # `mlflow server` runs uvicorn as a child process, which must be stopped with it
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                                   f"{(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S}s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture created (pgid == the server's pid)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_registry_on_live_mlflow_server(mlflow_server, tmp_path):
    exercise(mlflow_server, str(tmp_path / "client"))
    # artifacts went through the server's proxy into its artifact destination, not the client's folders
    assert any(files for _, _, files in os.walk(tmp_path / "server-artifacts"))
