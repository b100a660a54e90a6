"""Tests of the CUDA JIT build helper (ops/_build.py) that need no GPU and no compiler."""
from __future__ import annotations

import pytest
import torch

from recpipe.ops import _build


def test_arch_flags_accept_the_usual_spellings():
    assert _build._arch_flags("90") == (["-gencode=arch=compute_90,code=sm_90"], "90")
    assert _build._arch_flags("sm_90a")[0] == ["-gencode=arch=compute_90a,code=sm_90a"]
    flags, tag = _build._arch_flags("8.0; 9.0")
    assert flags == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    assert tag == "80_90"
    with pytest.raises(ValueError, match="cannot read compute capability 'hopper'"):
        _build._arch_flags("hopper")


def test_sources_are_shipped_with_the_package():
    folder = _build.source_dir()
    for name in _build.SOURCES:
        text = (folder / name).read_text(encoding="utf-8")
        assert "TORCH_LIBRARY_IMPL(recpipe, CUDA, m)" in text


def test_failing_sources_are_named_from_the_error_text():
    sources = ["/x/embedding_bag.cu", "/x/quant.cu"]
    assert _build._failing_sources("FAILED: quant.cuda.o\nquant.cu(12): error", sources) == ["/x/quant.cu"]
    assert _build._failing_sources("linker error", sources) == sources


def test_no_build_is_attempted_without_cuda(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(_build, "_state", {"loaded": False, "tried": False, "error": None})
    assert _build.load_cuda_kernels() is False
    assert calls == [] and not _build.cuda_kernels_loaded()


def test_failed_build_warns_with_the_file_and_is_not_retried(monkeypatch, caplog):
    import torch.utils.cpp_extension as cpp_extension

    calls = []

    def fail(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("Error building extension: FAILED: quant.cuda.o ... quant.cu(3): error: oops")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "load", fail)
    monkeypatch.setattr(_build, "_state", {"loaded": False, "tried": False, "error": None})
    monkeypatch.setenv("RECPIPE_CUDA_BUILD_DIR", "/tmp/recpipe-test-build-dir")
    monkeypatch.setenv("RECPIPE_CUDA_ARCH", "9.0")
    with caplog.at_level("WARNING", logger="recpipe.ops._build"):
        assert _build.load_cuda_kernels() is False
    assert "quant.cu failed" in caplog.text and "embedding_bag.cu" not in caplog.text.split("failed")[0]
    assert "oops" in _build.cuda_build_error()
    assert "-gencode=arch=compute_90,code=sm_90" in calls[0]["extra_cuda_cflags"]
    assert _build.load_cuda_kernels() is False and len(calls) == 1
