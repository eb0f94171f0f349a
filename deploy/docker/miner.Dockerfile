# syntax=docker/dockerfile:1.7
# The mining daemon (`avminer mine`) on a TensorRT runtime.
#   docker build -f deploy/docker/miner.Dockerfile -t avminer/miner:0.1.0 .
# Base: NGC TensorRT 25.01 (Ubuntu 24.04, Python 3.12, TensorRT 10.8, CUDA 12.8); needs an NVIDIA driver
# >= 570 on the node (or the CUDA forward-compat package). Without a GPU the miner falls back to ONNX
# Runtime on the CPU (engine.backend: auto).
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3
FROM ${TENSORRT_IMAGE}

LABEL org.opencontainers.image.title="avminer/miner" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="avminer mining daemon: ensemble uncertainty and domain shift on Kafka streams" \
      org.opencontainers.image.licenses="Apache-2.0"

# Ubuntu 24.04 marks the system Python as externally managed; the image is the environment here.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY avminer ./avminer
# avminer[gpu] wants tensorrt>=10, which the base image already ships. The miner runs TensorRT (or ONNX
# Runtime), so torch comes from the CPU index: the CUDA build would add several GB for nothing.
RUN python3 -m pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[gpu]" \
 && python3 -c "import avminer, tensorrt; print('avminer', avminer.__version__, 'tensorrt', tensorrt.__version__)" \
 && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/avminer avminer \
 && mkdir -p /var/cache/avminer/bundles /etc/avminer \
 && chown -R avminer:avminer /var/cache/avminer /var/lib/avminer
COPY deploy/config/miner.yaml /etc/avminer/miner.yaml

USER avminer
WORKDIR /var/lib/avminer
ENV AVMINER_CONFIG=/etc/avminer/miner.yaml \
    AVMINER_METRICS__ADDRESS=0.0.0.0 \
    AVMINER_METRICS__PORT=9464
EXPOSE 9464
# SIGTERM: stop polling, drain, commit, close within shutdown_deadline_s (30 s); give the runtime more.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"
ENTRYPOINT ["avminer"]
CMD ["mine"]
