# anzoo serve: the instance-segmentation service, on an NVIDIA GPU (default) or on the CPU.
#
#   docker build -t anzoo .                                  # CUDA (falls back to the CPU)
#   docker build --build-arg VARIANT=cpu -t anzoo:cpu .      # CPU only, a much smaller image
#   docker run --gpus all -p 8000:8000 -v anzoo-cache:/home/anzoo/.cache/anzoo anzoo --model r50-an
#
# Weights are downloaded on first start into the cache volume and reused afterwards.
# The two variants differ only in their base (where Python comes from) and in the index
# PyTorch is installed from; everything after "FROM base-${VARIANT}" is shared.
ARG VARIANT=cuda

# ---------------------------------------------------------------- CUDA: Ubuntu's Python
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS base-cuda
ENV DEBIAN_FRONTEND=noninteractive
# Unpinned apt packages (DL3008): the CUDA tag pins the Ubuntu release, and its python3 is
# whatever that release ships with its security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# PyPI's Linux wheels bundle their CUDA libraries; the host needs an NVIDIA driver only.
ENV TORCH_INDEX_URL=https://pypi.org/simple

# ---------------------------------------------------------------- CPU: the official Python image
FROM python:3.11-slim-bookworm AS base-cpu
RUN python -m venv /opt/venv
# CPU-only wheels: PyTorch without its CUDA libraries (several GB).
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------- the service, either base
# DL3006 wants a tag on FROM; this is one of the stages above, chosen by VARIANT.
# hadolint ignore=DL3006
FROM base-${VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ANZOO_HOME=/home/anzoo/.cache/anzoo \
    ANZOO_PORT=8000

# PyTorch first, in its own layer: it is most of the image and changes least often.
# (The same ranges as pyproject.toml, which the next step installs against.)
RUN pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4" "torchvision>=0.19"

WORKDIR /opt/anzoo
COPY pyproject.toml README.md ./
COPY anzoo ./anzoo
RUN pip install . \
    && groupadd --gid 10001 anzoo \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin anzoo \
    && mkdir -p /home/anzoo/.cache/anzoo \
    && chown -R anzoo:anzoo /home/anzoo/.cache

USER 10001:10001
WORKDIR /home/anzoo
VOLUME ["/home/anzoo/.cache/anzoo"]
EXPOSE 8000

# /healthz answers once the server listens (after the models are loaded: allow for the download).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ANZOO_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["anzoo", "serve", "--host", "0.0.0.0"]
CMD []
