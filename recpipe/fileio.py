"""Atomic file writes (stdlib only, usable from every layer).

A reader never sees half a file: the content goes to a temporary file in the same folder, is flushed to disk,
and is renamed over the target in one step. A crash leaves either the old file or the new one.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], object], *, binary: bool = True) -> str:
    """Calls ``write(fh)`` on a temporary file next to ``path``, fsyncs it and renames it to ``path``.

    Args:
        path: the target file; its folder is created if needed.
        write: writes the content to the open file object.
        binary: open the temporary file in ``"wb"`` (default) or text ``"w"`` (UTF-8) mode.

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any, **dump_kwargs: Any) -> str:
    """Writes ``data`` as indented, key-sorted JSON atomically (extra ``json.dump`` arguments allowed)."""
    opts = {"indent": 2, "sort_keys": True, **dump_kwargs}
    return atomic_write(path, lambda fh: json.dump(data, fh, **opts), binary=False)
