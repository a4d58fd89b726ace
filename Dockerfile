# segnode production image: NVIDIA CUDA runtime, Python 3.12, segnode and the
# MRSegmentator weights installed at build time (no downloads at run time).
# Build:  docker build -t segnode .
# Node:   docker run --gpus all -p 11112:11112 -v /srv/segnode:/var/lib/segnode \
#           -v /srv/segnode/config.yaml:/etc/segnode/config.yaml segnode
# Folder: docker run --gpus all -v /srv/segnode:/data segnode segment /data/in --out /data/out
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit; the torch
# wheel pinned below is a CUDA 13 build and carries its own CUDA libraries.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
# Model packs baked into the image (`segnode models available`), space separated.
# NAME is downloaded and checked against its pinned SHA-256; NAME=FILE installs
# from pack-archives/FILE (manual downloads such as MRAnnotator's):
#   docker build --build-arg SEGNODE_PACKS="mrsegmentator mrannotator-spine=MRAnnotator.zip" .
ARG SEGNODE_PACKS=mrsegmentator

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# g++: torch.compile (processing.compile) builds its CPU kernels with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates g++ \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/segnode segnode

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEGNODE_MODELS_DIR=/opt/segnode-models

RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/segnode
COPY pyproject.toml README.md ./
COPY segnode_errors ./segnode_errors
COPY dicom_io ./dicom_io
COPY model ./model
COPY node ./node
COPY config.yaml /etc/segnode/config.yaml
COPY pack-archives /tmp/pack-archives

# torch and torchvision pinned as in the Makefile, so pip never picks another pair.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 . \
    && for spec in $SEGNODE_PACKS; do \
        case "$spec" in \
            *=*) segnode models install "${spec%%=*}" --from "/tmp/pack-archives/${spec#*=}" ;; \
            *) segnode models install "$spec" ;; \
        esac; \
    done \
    && rm -rf /tmp/pack-archives \
    && segnode models verify \
    && chown -R 10001:10001 /opt/segnode-models

# The image's default configuration: the shipped one, DICOM listening on every
# interface of the container, the installed MRSegmentator pack, data in the
# volume /var/lib/segnode. The dashboard stays on the container's loopback
# until a mounted configuration sets web.host: 0.0.0.0 and web.token. `config check` fails the build if an edit breaks it.
RUN sed -i \
        -e 's|^  host: 127.0.0.1 *# IP address to listen on.*|  host: 0.0.0.0|' \
        -e 's|^    model: null .*|    model: mrsegmentator|' \
        -e 's|^  spool_dir: .*|  spool_dir: /var/lib/segnode/spool|' \
        -e 's|^  quarantine_dir: .*|  quarantine_dir: /var/lib/segnode/quarantine|' \
        -e 's|^  output_dir: .*|  output_dir: /var/lib/segnode/outputs|' \
        -e 's|^  models_dir: .*|  models_dir: /opt/segnode-models|' \
        -e 's|^  url: null .*# catalogue.*|  url: sqlite:////var/lib/segnode/segnode.db  # catalogue|' \
        /etc/segnode/config.yaml \
    && segnode config check /etc/segnode/config.yaml

USER 10001
WORKDIR /var/lib/segnode
# Ready: listener accepting, database writable, model loaded, disk above the threshold.
# Containers without the web role (workers) disable it in their compose service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=8)"]
VOLUME ["/var/lib/segnode"]
EXPOSE 11112 8080
ENV SEGNODE_CONFIG=/etc/segnode/config.yaml
ENTRYPOINT ["segnode"]
CMD ["serve"]
