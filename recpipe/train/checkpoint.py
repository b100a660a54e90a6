"""Training checkpoints (resume) and warm starts (weights only, tables possibly grown).

A checkpoint is ONE file ``<dir>/ckpt-<step:010d>.pt`` written to a temporary name, fsynced and renamed, so a
killed run leaves either the previous checkpoints or a complete new one, never half a file. The payload is
plain data (tensors, numbers, strings, lists, dicts) read back with ``torch.load(weights_only=True)``::

    {"format_version", "step", "epoch", "batch_in_epoch", "examples",
     "model": state_dict, "optim": {"dense", "sparse"}, "data": loader cursor or None,
     "rng": {...}, "config": TrainConfig dict, "table_sizes": {module name: [sizes]}, "callbacks": [...]}

Under ``torchrun`` one process writes (rank 0, :func:`recpipe.train.distributed.is_main_process`); the trainer
makes the others wait at a barrier. Checkpoints a resumed run branches away from (newer than the one it
resumed) are moved into ``<dir>/abandoned/`` (:meth:`CheckpointManager.abandon_after`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from recpipe.fileio import atomic_write
from recpipe.models.io import CONFIG_FILE, WEIGHTS_FILE, read_model_config
from recpipe.modules.embedding import EmbeddingCollection, remap_rows
from recpipe.quant.io import training_model_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ABANDONED_DIR = "abandoned"
_NAME = re.compile(r"^ckpt-(\d{10})\.pt$")


def rng_state() -> dict[str, Any]:
    """Every RNG the training process draws from: torch CPU (+ CUDA if present), Python ``random``, NumPy."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured (CUDA only when both sides have it)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def embedding_table_sizes(model: nn.Module) -> dict[str, list[int]]:
    """``{module name: table sizes}`` of every :class:`EmbeddingCollection` in ``model``."""
    return {name: list(m.table_sizes) for name, m in model.named_modules() if isinstance(m, EmbeddingCollection)}


class CheckpointManager:
    """Saves numbered checkpoints into one folder, keeps the last ``keep_last``.

    Args:
        directory: the folder (created on first save).
        keep_last: how many of the newest checkpoints to keep (>= 1).
    """

    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"CheckpointManager: keep_last must be >= 1, got {keep_last}")
        self.directory = os.fspath(directory)
        self.keep_last = keep_last

    def paths(self) -> list[str]:
        """Existing checkpoint files, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        names = sorted(n for n in os.listdir(self.directory) if _NAME.match(n))
        return [os.path.join(self.directory, n) for n in names]

    def latest(self) -> str | None:
        """Path of the newest checkpoint, or None."""
        paths = self.paths()
        return paths[-1] if paths else None

    def path_for(self, step: int) -> str:
        """Where the checkpoint of ``step`` is (or will be) written."""
        return os.path.join(self.directory, f"ckpt-{step:010d}.pt")

    def abandon_after(self, step: int) -> list[str]:
        """Moves every checkpoint of a step above ``step`` into ``<dir>/abandoned/`` (names kept; a name already
        there gets a ``.N`` suffix).

        A run resumed from an older checkpoint starts a new branch; left in place, the other branch's newer
        files would stay :meth:`latest` and retention would delete the resumed run's own checkpoints first.

        Returns:
            The new paths of the moved files, oldest step first.
        """
        moved = []
        for path in self.paths():
            m = _NAME.match(os.path.basename(path))
            if m is None or int(m.group(1)) <= step:
                continue
            aside = os.path.join(self.directory, ABANDONED_DIR)
            os.makedirs(aside, exist_ok=True)
            dst, n = os.path.join(aside, os.path.basename(path)), 0
            while os.path.exists(dst):
                n += 1
                dst = os.path.join(aside, f"{os.path.basename(path)}.{n}")
            os.replace(path, dst)
            moved.append(dst)
        if moved:
            logger.warning("resuming step %d: moved %d newer checkpoint(s) of another branch to %s", step,
                           len(moved), os.path.join(self.directory, ABANDONED_DIR))
        return moved

    def save(self, payload: dict[str, Any], step: int) -> str:
        """Writes ``payload`` as the checkpoint of ``step`` atomically, then drops checkpoints past keep_last.

        Call it from one process (rank 0 under ``torchrun``); a file another writer already removed is skipped
        by the retention.
        """
        os.makedirs(self.directory, exist_ok=True)
        path = self.path_for(step)
        atomic_write(path, lambda fh: torch.save(payload, fh))
        for old in self.paths()[:-self.keep_last]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        logger.info("checkpoint step %d -> %s", step, path)
        return path

    def load(self, path: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Reads a checkpoint (the newest if ``path`` is None); errors name the file."""
        path = path or self.latest()
        if path is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint (ckpt-*.pt) to resume from")
        return load_checkpoint(path, map_location)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads one checkpoint file written by :class:`CheckpointManager`."""
    path = os.fspath(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path}: not a recpipe checkpoint (no 'model' entry)")
    if payload.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload['format_version']} is newer than this code")
    return payload


def _read_source(source: str) -> tuple[dict[str, torch.Tensor], dict[str, list[int]] | None, str]:
    """(state_dict, table sizes per collection or None, description) from a model dir or checkpoint.

    A quantized model directory is read through its float copy (:func:`recpipe.quant.training_model_dir`).
    """
    if os.path.isdir(source) and os.path.exists(os.path.join(source, CONFIG_FILE)):
        model_dir = training_model_dir(source)
        meta = read_model_config(model_dir)
        weights = os.path.join(model_dir, WEIGHTS_FILE)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except OSError as e:
            raise FileNotFoundError(f"{weights}: cannot read model weights: {e}") from e
        sizes = {"embedding": [int(n) for n in meta["table_sizes"]]} if meta["table_sizes"] else {}
        desc = f"model dir {source}" if model_dir == source else f"float copy {model_dir} of quantized {source}"
        return state, sizes, desc
    if os.path.isdir(source):
        path = CheckpointManager(source).latest()
        if path is None:
            raise FileNotFoundError(f"{source}: neither a model dir ({CONFIG_FILE}) nor a checkpoint dir")
        source = path
    payload = load_checkpoint(source)
    return payload["model"], payload.get("table_sizes"), f"checkpoint {source}"


def warm_start(model: nn.Module, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads weights only (no optimizer, step or cursor) from a model dir or a checkpoint (file or folder).

    Embedding tables may have grown since the source was written: each old table's rows are copied into the
    first rows of the (larger) table and the new rows keep the model's fresh initialisation. If the source
    has MORE rows than the model, the model's tables are grown first so no trained row is lost. Every other
    tensor must match exactly (same spec).

    Args:
        model: the freshly built model to fill.
        source: a :func:`save_model` folder, a quantized model folder (its ``float/`` copy is read, see
            :func:`recpipe.quant.training_model_dir`), a checkpoint file, or a checkpoint folder (newest file).

    Returns:
        ``{"source": description, "grown": {collection: [old sizes, new sizes]}}``.
    """
    state, src_sizes, desc = _read_source(os.fspath(source))
    state = dict(state)
    grown: dict[str, list[list[int]]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, EmbeddingCollection):
            continue
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            raise ValueError(f"warm start from {desc}: no tensor {key!r} for embedding collection {name!r}")
        old_sizes = (src_sizes or {}).get(name)
        if old_sizes is None:
            raise ValueError(f"warm start from {desc}: table sizes of {name!r} unknown")
        if len(old_sizes) != module.num_tables:
            raise ValueError(f"warm start from {desc}: {name!r} has {len(old_sizes)} tables in the source, "
                             f"{module.num_tables} in the model")
        target = [max(o, n) for o, n in zip(old_sizes, module.table_sizes)]
        if target != module.table_sizes:
            module.grow(target)
        if old_sizes != module.table_sizes:
            state[key] = remap_rows(state[key], old_sizes, module.table_sizes, module.weight.detach().cpu())
            grown[name or "<root>"] = [list(old_sizes), list(module.table_sizes)]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"warm start from {desc}: weights do not fit the model: {e}") from e
    logger.info("warm start from %s (grown tables: %s)", desc, grown or "none")
    return {"source": desc, "grown": grown}
