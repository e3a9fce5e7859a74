# anzoo serve: the instance-segmentation service on an NVIDIA GPU (falls back to the CPU).
#
#   docker build -t anzoo .
#   docker run --gpus all -p 8000:8000 -v anzoo-cache:/home/anzoo/.cache/anzoo anzoo --model r50-an
#
# Weights are downloaded on first start into the cache volume and reused afterwards.
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ANZOO_HOME=/home/anzoo/.cache/anzoo \
    ANZOO_PORT=8000

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# PyTorch first, in its own layer: it is most of the image and changes least often.
# (PyPI's Linux wheels bundle their CUDA libraries; the host needs an NVIDIA driver only.)
# hadolint ignore=DL3013
RUN pip install "torch>=2.4" "torchvision>=0.19"

WORKDIR /opt/anzoo
COPY pyproject.toml README.md ./
COPY anzoo ./anzoo
# hadolint ignore=DL3013
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
