# syntax=docker/dockerfile:1
# Triton Inference Server for the GPU deployment.
#
# Why this image exists: the NGC tritonserver image ships the Python backend
# with numpy but WITHOUT torch, and our Python-backend models (model.py and the
# shared model_repository/forecast_backend.py) import torch. So we install a
# pinned torch into the image's own Python, which is the interpreter the
# Python backend stub embeds (Python 3.10 in the 24.xx images: model code must
# stay 3.10-compatible).
#
# 24.10 = Triton 2.51, the same server version as the embedded CPU default
# (nvidia-pytriton 0.7.0), so the model repository behaves the same on both.
#
# torch: PyPI's Linux wheels are CUDA builds. torch 2.13.0 from PyPI is built
# against CUDA 13.0 and brings its own CUDA runtime as pip packages, so the host
# needs an NVIDIA driver new enough for CUDA 13 (R580 or later). For an older
# driver, install a CUDA 12 build from PyTorch's own wheel index instead:
#   --build-arg TORCH_INDEX_URL=<that index> --build-arg TORCH_VERSION=2.13.0+cu12X
# (the local tag of a build that index really has).
# Keep TORCH_VERSION and NUMPY_VERSION equal to requirements.lock
# (tests/unit/test_deploy_files.py checks that).
#
# onnxruntime-gpu: for models exported to ONNX and run by onnxruntime inside
# the Python backend (the CUDA execution provider on a GPU instance, the CPU
# one otherwise). 1.23.2 is the last release with Python 3.10 wheels (the
# 24.10 image's interpreter); it is built for CUDA 12 and cuDNN 9, which the
# 24.10 image carries (CUDA 12.6, cuDNN 9.5), so it needs no CUDA pip packages
# of its own. Keep it the same release as requirements.lock's onnxruntime (the
# CPU build) once the lock has one.
ARG TRITON_TAG=24.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}

ARG TORCH_VERSION=2.13.0
ARG NUMPY_VERSION=1.26.4
ARG ONNXRUNTIME_VERSION=1.23.2
ARG TORCH_INDEX_URL=""

# curl is used by the container health check (/v2/health/ready).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m pip install --no-cache-dir \
        ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        "torch==${TORCH_VERSION}" "numpy==${NUMPY_VERSION}" \
        "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" \
    && python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)" \
    && python3 -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

# The model repository is baked in so the image is self-contained (Kubernetes
# runs it as is); docker-compose.yml additionally bind-mounts the working
# tree's model_repository/ read-only over /models for quick iteration.
COPY model_repository/ /models/

# The NGC image ships an unprivileged user for the server.
USER triton-server

EXPOSE 8000 8001 8002

HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS http://localhost:8000/v2/health/ready || exit 1

# The same flags as the embedded CPU default (tools/embedded_triton.py), and
# the only copy of them: docker-compose.yml and deploy/kubernetes/triton.yaml
# set no command or args, so compose and Kubernetes run exactly this.
# --model-control-mode=none: load the whole repository at start, no load API.
# --exit-on-error=false: a model that fails to load is left UNAVAILABLE (its
#   error is the `reason` in the repository index, and the gateway lists it)
#   while the other models serve; with true, one broken model stops them all.
# --strict-readiness=false: /v2/health/ready (the health checks, the pod's
#   readiness, the gateway's health) says the server is up, not that every
#   model is READY; with true, one broken model keeps the server unready and
#   out of the Service, taking the good models with it. Triton opens its
#   ports only after it tried to load every model, so ready still means the
#   repository is loaded; which models serve is the gateway's to report.
CMD ["tritonserver", \
     "--model-repository=/models", \
     "--model-control-mode=none", \
     "--strict-readiness=false", \
     "--exit-on-error=false", \
     "--http-port=8000", \
     "--grpc-port=8001", \
     "--metrics-port=8002", \
     "--allow-metrics=true", \
     "--allow-gpu-metrics=true", \
     "--allow-cpu-metrics=true", \
     "--metrics-interval-ms=2000", \
     "--exit-timeout-secs=30", \
     "--log-verbose=0"]
