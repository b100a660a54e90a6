"""JIT build of the CUDA kernels (``cuda/*.cu``, installed as package ``recpipe.csrc``) on first use.

The kernels only ``m.impl`` the ``recpipe::`` ops defined in ``ops/*.py``; loading the built shared library
registers them for the CUDA dispatch key. Nothing is compiled without CUDA: :func:`load_cuda_kernels` returns
False at once when ``torch.cuda.is_available()`` is False, so CPU machines never need a compiler.

Environment:
    RECPIPE_CUDA_ARCH: compute capability to build for, e.g. ``90`` (default, H100/H200), ``90a``, ``80``,
        ``8.6``; several separated by commas or semicolons.
    RECPIPE_CUDA_BUILD_DIR: build cache folder (default ``~/.cache/recpipe/cuda/<torch version>-<arch>``).
        The torch extension loader rebuilds only when a source or flag changed.

Ahead of time (image builds; nvcc needed, no GPU): ``python -m recpipe.ops._build --prebuild`` compiles into
that folder and exits non-zero with the failing file's name when the build fails.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = ("embedding_bag.cu", "quant.cu")
"""The CUDA translation units, in ``recpipe.csrc`` (the repository's ``cuda/`` folder)."""
EXTENSION_NAME = "recpipe_cuda_ops"
DEFAULT_ARCH = "90"

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "tried": False, "error": None}


def cuda_kernels_loaded() -> bool:
    """True once the CUDA kernels were built (or found cached) and registered in this process."""
    return bool(_state["loaded"])


def cuda_build_error() -> str | None:
    """The error text of the last failed build in this process, or None."""
    err = _state["error"]
    return None if err is None else str(err)


def source_dir() -> Path:
    """Folder of the CUDA sources (package ``recpipe.csrc``), located without importing it as a module."""
    spec = importlib.util.find_spec("recpipe.csrc")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package recpipe.csrc (the cuda/ folder) is not installed")
    return Path(spec.origin).parent


def _arch_flags(spec: str) -> tuple[list[str], str]:
    """Turns ``"90"``, ``"9.0"``, ``"sm_90a"`` or a list of them into nvcc -gencode flags and a cache tag."""
    flags, tags = [], []
    for item in re.split(r"[,;\s]+", spec.strip()):
        if not item:
            continue
        cc = item.lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not re.fullmatch(r"\d{2,3}[af]?", cc):
            raise ValueError(f"RECPIPE_CUDA_ARCH: cannot read compute capability {item!r} (e.g. 90, 9.0, sm_90a)")
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
        tags.append(cc)
    if not flags:
        raise ValueError(f"RECPIPE_CUDA_ARCH: no compute capability in {spec!r}")
    return flags, "_".join(tags)


def _failing_sources(message: str, sources: list[str]) -> list[str]:
    """The sources an nvcc/ninja error text names (all of them when it names none)."""
    named = [s for s in sources if Path(s).stem in message]
    return named or sources


def build_dir_for(tag: str) -> Path:
    """The build cache folder: ``RECPIPE_CUDA_BUILD_DIR`` or ``~/.cache/recpipe/cuda/<torch version>-<tag>``."""
    return Path(os.environ.get("RECPIPE_CUDA_BUILD_DIR") or
                Path.home() / ".cache" / "recpipe" / "cuda" / f"{torch.__version__}-{tag}")


def _sources() -> list[str]:
    """Absolute paths of :data:`SOURCES`; raises FileNotFoundError naming any missing one."""
    folder = source_dir()
    sources = [str(folder / name) for name in SOURCES]
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"missing CUDA sources: {missing}")
    return sources


def _compile_and_load(sources: list[str], verbose: bool) -> Path:
    """Compiles ``sources`` (ninja skips what is up to date) into the build folder and loads the library.

    Returns:
        The build folder. Raises whatever the compiler/loader raised.
    """
    arch_flags, tag = _arch_flags(os.environ.get("RECPIPE_CUDA_ARCH", DEFAULT_ARCH))
    build_dir = build_dir_for(tag)
    build_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension  # noqa: PLC0415  (imported only when a build is needed)

    cpp_extension.load(
        name=EXTENSION_NAME,
        sources=sources,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo", *arch_flags],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )
    return build_dir


_BUILD_ERRORS = (RuntimeError, OSError, ValueError, ImportError, subprocess.CalledProcessError)


def load_cuda_kernels(verbose: bool = False) -> bool:
    """Builds (first time, cached afterwards) and loads the CUDA kernels of every recpipe op.

    Args:
        verbose: show the compiler's command lines and output.

    Returns:
        True when the kernels are registered; False without CUDA or when the build failed (a warning names the
        failing source files and the error; :func:`cuda_build_error` returns its text). A failed build is not
        retried in the same process.
    """
    with _lock:
        if _state["loaded"]:
            return True
        if not torch.cuda.is_available():
            logger.debug("recpipe CUDA kernels: no CUDA device, nothing built")
            return False
        if _state["tried"]:
            return False
        _state["tried"] = True
        sources: list[str] = []
        try:
            sources = _sources()
            build_dir = _compile_and_load(sources, verbose)
        except _BUILD_ERRORS as exc:
            message = str(exc)
            _state["error"] = message
            failing = _failing_sources(message, sources) if sources else ["recpipe.csrc"]
            logger.warning("recpipe CUDA kernels: build/load of %s failed; the CUDA ops are unavailable "
                           "(the CPU reference kernels still work): %s", ", ".join(failing), message)
            return False
        _state["loaded"] = True
        logger.info("recpipe CUDA kernels loaded from %s", build_dir)
        return True


def find_nvcc() -> str | None:
    """Path of the nvcc that torch's extension builder would use (``CUDA_HOME``/bin/nvcc), or None."""
    if torch.version.cuda is None:
        return None
    from torch.utils import cpp_extension  # noqa: PLC0415

    home = cpp_extension.CUDA_HOME
    if home is None:
        return None
    nvcc = Path(home) / "bin" / "nvcc"
    return str(nvcc) if nvcc.is_file() else None


def prebuild(verbose: bool = False) -> Path:
    """Compiles the kernels into the build folder without needing a visible GPU (image builds).

    The folder is ``RECPIPE_CUDA_BUILD_DIR`` (or the default cache) for ``RECPIPE_CUDA_ARCH``; a later
    :func:`load_cuda_kernels` with the same settings and torch finds the build up to date and only loads it.

    Args:
        verbose: show the compiler's command lines and output.

    Returns:
        The build folder.

    Raises:
        RuntimeError: no nvcc / a CPU-only torch, or the build failed (the message names the failing sources).
    """
    if torch.version.cuda is None:
        raise RuntimeError(f"recpipe CUDA prebuild: torch {torch.__version__} is a CPU-only build; install a "
                           f"CUDA build of torch to compile {', '.join(SOURCES)}")
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError(f"recpipe CUDA prebuild: nvcc not found (CUDA_HOME unset or without bin/nvcc); "
                           f"cannot compile {', '.join(SOURCES)}")
    sources: list[str] = []
    try:
        sources = _sources()
        build_dir = _compile_and_load(sources, verbose)
    except _BUILD_ERRORS as exc:
        failing = _failing_sources(str(exc), sources) if sources else ["recpipe.csrc"]
        raise RuntimeError(f"recpipe CUDA prebuild: building {', '.join(failing)} with {nvcc} failed: {exc}"
                           ) from exc
    if torch.cuda.is_available():  # the library is loaded in this process: the kernels are usable now
        with _lock:
            _state["loaded"] = True
    return build_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m recpipe.ops._build --prebuild [--verbose]``; returns the exit status (0 ok, 1 failed)."""
    parser = argparse.ArgumentParser(prog="python -m recpipe.ops._build",
                                     description="Build the recpipe CUDA kernels ahead of time.")
    parser.add_argument("--prebuild", action="store_true", required=True,
                        help="compile cuda/*.cu into RECPIPE_CUDA_BUILD_DIR (needs nvcc, not a GPU)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's command lines and output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_dir = prebuild(verbose=args.verbose)
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("recpipe CUDA kernels built in %s", build_dir)
    return 0


if __name__ == "__main__":
    # Run through the package's copy of this module (``recpipe.ops`` imported it first), so one state is used.
    from recpipe.ops import _build as _package_module  # noqa: PLC0415

    sys.exit(_package_module.main())
