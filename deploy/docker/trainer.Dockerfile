# syntax=docker/dockerfile:1.7
# The trainer service (`avminer train serve`) on the official PyTorch CUDA runtime image.
#   docker build -f deploy/docker/trainer.Dockerfile -t avminer/trainer:0.1.0 .
# The base image must carry torch 2.13.0 (pyproject pins torch==2.13.0 exactly); otherwise pip would
# replace it with a CPU wheel from PyPI. Override PYTORCH_IMAGE to match your CUDA driver.
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${PYTORCH_IMAGE}

LABEL org.opencontainers.image.title="avminer/trainer" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="avminer trainer: ensembles of factorized segmentation nets, gated releases" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY avminer ./avminer
# Fail the build rather than silently swapping the base image's CUDA torch for another build.
RUN python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 'base image torch is ' + torch.__version__ + ', avminer pins 2.13.0')" \
 && python -m pip install . \
 && python -c "import avminer, torch; print('avminer', avminer.__version__, 'torch', torch.__version__)" \
 && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/avminer avminer \
 && mkdir -p /var/lib/avminer/train /etc/avminer \
 && chown -R avminer:avminer /var/lib/avminer
COPY deploy/config/miner.yaml /etc/avminer/miner.yaml

USER avminer
WORKDIR /var/lib/avminer
ENV AVMINER_CONFIG=/etc/avminer/miner.yaml \
    AVMINER_TRAINER__WORK_DIR=/var/lib/avminer/train \
    AVMINER_METRICS__ADDRESS=0.0.0.0 \
    AVMINER_METRICS__PORT=9464
EXPOSE 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["avminer"]
CMD ["train", "serve"]
