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


# ------------------------------------------------------------------------------------------- --prebuild
def test_prebuild_cli_needs_the_flag():
    with pytest.raises(SystemExit) as info:
        _build.main([])
    assert info.value.code == 2  # argparse usage error


def test_prebuild_fails_cleanly_without_nvcc(caplog):
    if _build.find_nvcc() is not None:
        pytest.skip("nvcc is installed here; the failure path is covered with a faked compiler below")
    with caplog.at_level("ERROR", logger="recpipe.ops._build"):
        assert _build.main(["--prebuild"]) == 1
    assert "recpipe CUDA prebuild" in caplog.text
    assert "nvcc" in caplog.text or "CPU-only" in caplog.text
    assert "embedding_bag.cu" in caplog.text  # the files that could not be built are named


def _fake_cuda_toolchain(monkeypatch, tmp_path, load):
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(_build, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # image builds see no GPU
    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(_build, "_state", {"loaded": False, "tried": False, "error": None})
    monkeypatch.setenv("RECPIPE_CUDA_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("RECPIPE_CUDA_ARCH", "80;90")


def test_prebuild_compiles_into_the_build_dir_without_a_gpu(monkeypatch, tmp_path):
    calls = []
    _fake_cuda_toolchain(monkeypatch, tmp_path, lambda **kw: calls.append(kw))
    assert _build.main(["--prebuild"]) == 0
    assert len(calls) == 1
    assert calls[0]["build_directory"] == str(tmp_path / "build") and (tmp_path / "build").is_dir()
    assert [p.rsplit("/", 1)[-1] for p in calls[0]["sources"]] == list(_build.SOURCES)
    assert "-gencode=arch=compute_80,code=sm_80" in calls[0]["extra_cuda_cflags"]
    assert not _build.cuda_kernels_loaded()  # no GPU: built, but nothing is usable in this process


def test_prebuild_failure_names_the_failing_file_and_exits_non_zero(monkeypatch, tmp_path, caplog):
    def fail(**kwargs):
        raise RuntimeError("Error building extension: FAILED: quant.cuda.o\nquant.cu(7): error: bad")

    _fake_cuda_toolchain(monkeypatch, tmp_path, fail)
    with caplog.at_level("ERROR", logger="recpipe.ops._build"):
        assert _build.main(["--prebuild"]) == 1
    assert "building " in caplog.text and "quant.cu with /usr/local/cuda/bin/nvcc failed" in caplog.text
    assert "embedding_bag.cu with" not in caplog.text
    with pytest.raises(RuntimeError, match=r"quant\.cu\(7\): error: bad"):
        _build.prebuild()


def test_quant_wrappers_load_the_kernels_lazily(monkeypatch):
    from recpipe.ops import quant

    seen = []
    monkeypatch.setattr(quant, "_ensure_kernels", lambda t: seen.append(t))
    w = torch.randn(3, 8)
    fused = quant.quantize_rowwise(w, 8)
    quant.quantize_rowwise_greedy(w, 4)
    quant.dequantize_rowwise(fused, 8, 8)
    quant.quantized_embedding_bag(fused, 8, 8, torch.tensor([0, 2]), torch.tensor([0, 1, 2]))
    assert len(seen) == 4 and seen[0] is w and seen[2] is fused and seen[3] is fused
