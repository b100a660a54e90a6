"""The image's tag, the components' IMAGE and the package version stay in step."""
import pathlib
import re

import recpipe
from recpipe.components import IMAGE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_image_tag_matches_package_version():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"ARG RECPIPE_VERSION={re.escape(recpipe.__version__)}\n", text)
    assert f"ghcr.io/recpipe/recpipe:{recpipe.__version__}" in text
    assert IMAGE.endswith(f":{recpipe.__version__}") or "RECPIPE_IMAGE" in __import__("os").environ


def test_dockerfile_installs_every_extra_and_prebuilds_kernels():
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[all' in text
    assert "recpipe.ops._build --prebuild" in text
    for folder in ("recpipe", "ops", "cuda", "components", "pipelines"):
        assert f"COPY {folder} {folder}" in text
