"""Step ``promote``: act on the evaluation's blessing in the MLflow model registry.

* Blessing ``pass`` → register ``model_dir`` as a new version and move alias ``champion`` to it (the old
  champion becomes ``previous``).
* Blessing ``fail`` → register it too (``register_rejected``, default; keeps the audit trail) and tag it
  ``challenger-rejected=true`` with the gate's reasons; aliases do not move.
* ``rollback=True`` → swap ``champion`` and ``previous`` (no blessing needed): ``recpipe promote --rollback``.

Before registering, the model directory's fingerprint must equal the one the evaluation recorded, so the
model promoted is byte-for-byte the model that was gated. Before moving ``champion`` (checked before
registering and again right before the move), the registry's champion must still be the one the evaluation
compared against (the blessing's ``compared_champion``): a promotion in between makes the comparison stale
and promote refuses (:class:`BlessingError` naming both versions). MLflow has no compare-and-set on aliases,
so a promotion landing between the last check and the move is not caught; pipelines serialise promotions.

Run: ``python -m recpipe.tasks.promote --blessing OUT/blessing.json --model-dir M`` or ``... --rollback``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

from recpipe.config import JsonConfig
from recpipe.tasks.base import Result, config_from_arg, model_fingerprint, read_json, step_tracker
from recpipe.tracking.base import MemoryTracker, Tracker
from recpipe.tracking.registry import CHAMPION, DEFAULT_MODEL_NAME, FINGERPRINT_TAG, ModelRegistry, VersionInfo

logger = logging.getLogger(__name__)


class BlessingError(ValueError):
    """The blessing file is missing fields or does not belong to the model directory; names the file."""


@dataclass(frozen=True)
class PromoteConfig(JsonConfig):
    """Promotion settings.

    Attributes:
        model_name: registered model name.
        tracking_uri: MLflow store (None: ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db``).
        register_rejected: also register failed challengers (tagged ``challenger-rejected``).
        check_fingerprint: refuse when ``model_dir`` differs from the evaluated model.
        check_champion: refuse to promote when the registry's champion moved since the evaluation.
        use_tracker_run: store the model artifacts in the step's tracker run (else a dedicated run).
        reason: free text recorded with a rollback or promotion.
    """

    model_name: str = DEFAULT_MODEL_NAME
    tracking_uri: str | None = None
    register_rejected: bool = True
    check_fingerprint: bool = True
    check_champion: bool = True
    use_tracker_run: bool = True
    reason: str = ""


_REQUIRED = ("blessed", "decision", "reasons", "rule")


def load_blessing(path: str) -> dict[str, Any]:
    """Reads and checks a blessing written by :mod:`recpipe.tasks.evaluate`."""
    try:
        blessing = read_json(path)
    except OSError as e:
        raise BlessingError(f"{path}: cannot read blessing: {e}") from e
    except json.JSONDecodeError as e:
        raise BlessingError(f"{path}: invalid JSON: {e}") from e
    missing = [k for k in _REQUIRED if k not in blessing]
    if missing:
        raise BlessingError(f"{path}: blessing lacks fields {missing}")
    return blessing


def _fingerprint_of(registry: ModelRegistry, info: VersionInfo) -> str:
    """A registered version's fingerprint: its tag, or (versions registered before the tag) its download's."""
    if info.tags.get(FINGERPRINT_TAG):
        return info.tags[FINGERPRINT_TAG]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="recpipe-promote-") as tmp:
        return model_fingerprint(registry.download(info.version, tmp))


def check_champion_unchanged(registry: ModelRegistry, blessing: dict[str, Any], blessing_path: str) -> None:
    """Raises :class:`BlessingError` unless the registry's ``champion`` is the model the evaluation compared
    against (``compared_champion``: a registry version, a directory's fingerprint, or none on a first run)."""
    ref = blessing.get("compared_champion")
    if not isinstance(ref, dict) or ref.get("kind") not in ("none", "registry", "dir"):
        raise BlessingError(f"{blessing_path}: blessing lacks 'compared_champion' (which champion the evaluation "
                            f"compared against); re-run evaluate, or set check_champion=false")
    current = registry.by_alias(CHAMPION)
    now = f"version {current.version}" if current else "none"
    if ref["kind"] == "none":
        if current is not None:
            raise BlessingError(f"{blessing_path}: evaluated as a first run (no champion) but {registry.name!r} "
                                f"champion is now {now}; re-evaluate against it")
        return
    if ref["kind"] == "registry":
        if ref.get("name", registry.name) != registry.name:
            raise BlessingError(f"{blessing_path}: evaluated against registered model {ref['name']!r} version "
                                f"{ref['version']}, not {registry.name!r} (champion {now})")
        was = f"version {ref['version']}"
        if current is None or current.version != str(ref["version"]):
            raise BlessingError(f"{blessing_path}: evaluated against {registry.name!r} champion {was} but the "
                                f"champion is now {now}; re-evaluate against it")
        return
    was = f"model dir {ref.get('dir')} (fingerprint {ref['fingerprint'][:12]})"
    if current is None or _fingerprint_of(registry, current) != ref["fingerprint"]:
        raise BlessingError(f"{blessing_path}: evaluated against {was} but {registry.name!r} champion is {now}"
                            + ("" if current is None else " with other contents") + "; re-evaluate against it")


def _version_tags(blessing: dict[str, Any]) -> dict[str, str]:
    metrics = blessing.get("metrics") or {}
    tags = {"recpipe.gate.decision": blessing["decision"], "recpipe.gate.rule": blessing["rule"],
            "recpipe.gate.reasons": json.dumps(blessing["reasons"]),
            "recpipe.eval.days": ",".join(blessing.get("days") or []),
            "recpipe.quantized": str(bool(blessing.get("quantized", False))).lower()}
    ref = blessing.get("compared_champion") or {}
    if ref:
        tags["recpipe.eval.compared_champion"] = str(ref.get("version") or ref.get("fingerprint") or ref["kind"])
    for k in ("auc", "ne", "calibration"):
        if k in metrics:
            tags[f"recpipe.eval.{k}"] = f"{metrics[k]:.6g}"
    if blessing.get("override"):
        tags.update({"recpipe.gate.override_by": blessing["override"]["who"],
                     "recpipe.gate.override_reason": blessing["override"]["why"]})
    return tags


def run(cfg: PromoteConfig, *, blessing_path: str | None, model_dir: str | None, tracker: Tracker | None = None,
        rollback: bool = False) -> Result:
    """Promotes, rejects or rolls back.

    Args:
        cfg: registry settings.
        blessing_path: ``blessing.json`` of the evaluation (ignored with ``rollback``).
        model_dir: the evaluated model directory (ignored with ``rollback``).
        tracker: receives tags / metrics of what happened (None: in memory).
        rollback: swap ``champion`` and ``previous`` instead.

    Returns:
        :class:`Result`; ``metadata`` holds ``action`` (``promoted`` | ``rejected`` | ``rolled_back`` |
        ``skipped``; also under ``decision``), ``version``, ``champion``, ``previous`` and ``model_name``.

    Raises:
        BlessingError: unreadable blessing, fingerprint mismatch, or (blessed) the registry's champion is not
            the one the evaluation compared against.
    """
    tracker = tracker if tracker is not None else MemoryTracker("promote")
    registry = ModelRegistry(cfg.model_name, cfg.tracking_uri)
    if rollback:
        moved = registry.rollback(cfg.reason)
        tracker.set_tags({"recpipe.promote.action": "rolled_back", "recpipe.champion_version": moved["champion"]})
        return Result(metrics={"promote/rolled_back": 1.0},
                      metadata={"action": "rolled_back", "decision": "rolled_back", "model_name": cfg.model_name,
                                **moved})
    if not blessing_path or not model_dir:
        raise ValueError("promote: blessing_path and model_dir are required unless rollback=True")
    blessing = load_blessing(blessing_path)
    if cfg.check_fingerprint:
        expected = blessing.get("model_fingerprint")
        actual = model_fingerprint(model_dir)
        if expected != actual:
            raise BlessingError(f"{blessing_path}: evaluated model fingerprint {expected} != {actual} of "
                                f"{model_dir}; refusing to act on a model that was not gated")
    blessed = bool(blessing["blessed"])
    if not blessed and not cfg.register_rejected:
        tracker.set_tags({"recpipe.promote.action": "skipped"})
        return Result(metrics={"promote/promoted": 0.0},
                      metadata={"action": "skipped", "decision": "skipped", "model_name": cfg.model_name,
                                "reasons": blessing["reasons"]})
    check = blessed and cfg.check_champion
    if check:
        check_champion_unchanged(registry, blessing, blessing_path)
    # the tracker's run can hold the artifacts only if it lives in the registry's store
    same_store = getattr(tracker, "tracking_uri", None) == registry.tracking_uri
    run_id = tracker.run_id if cfg.use_tracker_run and same_store else None
    info = registry.register(model_dir, run_id=run_id, tags=_version_tags(blessing))
    if run_id is not None:
        tracker.log_dict(blessing, "promote/blessing.json")
    if blessed:
        if check:  # registering takes a while: the alias may have moved meanwhile
            try:
                check_champion_unchanged(registry, blessing, blessing_path)
            except BlessingError as e:
                registry.set_tags(info.version, {"recpipe.promote.refused": str(e)})
                raise
        moved = registry.promote(info.version, cfg.reason or "; ".join(blessing["reasons"]) or "gate passed")
        action = "promoted"
    else:
        registry.reject(info.version, blessing["reasons"])
        prev = registry.by_alias("previous")
        champ = registry.by_alias("champion")
        moved = {"champion": champ.version if champ else None, "previous": prev.version if prev else None}
        action = "rejected"
    tracker.set_tags({"recpipe.promote.action": action, "recpipe.model_version": info.version,
                      "recpipe.champion_version": str(moved["champion"])})
    logger.info("%s %s version %s (champion now %s)", action, cfg.model_name, info.version, moved["champion"])
    return Result(metrics={"promote/promoted": float(blessed)},
                  metadata={"action": action, "decision": action, "model_name": cfg.model_name,
                            "version": info.version, "reasons": blessing["reasons"], **moved})


def main(argv: Sequence[str] | None = None) -> Result:
    """CLI: ``python -m recpipe.tasks.promote --blessing B --model-dir M`` or ``--rollback [--reason R]``."""
    ap = argparse.ArgumentParser(prog="recpipe promote", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="", help="PromoteConfig as JSON text, or a JSON file (path or @path)")
    ap.add_argument("--blessing", default=None, help="blessing.json written by the evaluate step")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--rollback", action="store_true", help="swap champion and previous aliases")
    ap.add_argument("--reason", default=None, help="recorded with the promotion / rollback")
    args = ap.parse_args(argv)
    cfg = config_from_arg(PromoteConfig, args.config)
    if args.reason:
        cfg = cfg.replace(reason=args.reason)
    if not args.rollback and not (args.blessing and args.model_dir):
        ap.error("--blessing and --model-dir are required unless --rollback")
    if cfg.tracking_uri:
        os.environ.setdefault("MLFLOW_TRACKING_URI", cfg.tracking_uri)
    with step_tracker("promote") as tracker:
        return run(cfg, blessing_path=args.blessing, model_dir=args.model_dir, tracker=tracker,
                   rollback=args.rollback)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
