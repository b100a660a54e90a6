# The one image every recpipe pipeline step runs in. Tag it with the package version:
#   docker build -t ghcr.io/recpipe/recpipe:0.1.0 .
# (components.IMAGE and manifests/ reference exactly that tag; tests/test_dockerfile.py keeps them in step.)
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

ARG RECPIPE_VERSION=0.1.0
LABEL org.opencontainers.image.title="recpipe" \
      org.opencontainers.image.version="${RECPIPE_VERSION}" \
      org.opencontainers.image.source="https://github.com/recpipe/recpipe"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    RECPIPE_CUDA_ARCH="80;90" \
    RECPIPE_CUDA_BUILD_DIR=/opt/recpipe/cuda-build

RUN apt-get update && apt-get install -y --no-install-recommends ninja-build git && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/recpipe/src
COPY pyproject.toml README.md ./
COPY recpipe recpipe
COPY ops ops
COPY cuda cuda
COPY components components
COPY pipelines pipelines
RUN pip install ".[all,gcp,aws]" "torch==2.5.1"

# Prebuild the CUDA kernels into the image (no GPU needed to compile; loaded at run time when CUDA is present).
RUN python -m recpipe.ops._build --prebuild

# torch's extension loader rewrites build.ninja on load: the runtime user owns the prebuilt folder
RUN useradd --create-home --uid 1000 recpipe && chown -R recpipe:recpipe /opt/recpipe/cuda-build
USER recpipe
WORKDIR /home/recpipe
ENTRYPOINT ["recpipe"]
