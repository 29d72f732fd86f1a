# syntax=docker/dockerfile:1
# Forecast Gateway: the grpc.aio service in front of Triton. CPU only; it does
# not need torch, nvidia-pytriton or the dev tooling from requirements.lock.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build the project wheel (setuptools is only needed here) ---
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
# README.m[d]: pyproject.toml names README.md as the readme; the glob keeps the
# build working before that file exists (setuptools only warns without it).
COPY pyproject.toml README.m[d] ./
COPY server/ server/
COPY gen/ gen/
COPY clients/ clients/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./clients/python .

# --- runtime ---
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned runtime dependencies; the lock constrains the transitive ones too.
COPY docker/gateway-requirements.txt requirements.lock /tmp/req/
RUN pip install -r /tmp/req/gateway-requirements.txt -c /tmp/req/requirements.lock \
    && rm -rf /tmp/req

# The project itself, without dependencies (they are all installed above).
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels

COPY docker/grpc_healthcheck.py /usr/local/bin/grpc_healthcheck.py
# The served models and limits, and the routing policies that gateway.toml
# names (routing_file = "routing.toml": relative to gateway.toml's directory).
# Kubernetes mounts its own pair of files over this directory
# (deploy/kubernetes/gateway.yaml); FORECAST_* vars override single keys.
COPY config/gateway.toml config/routing.toml /etc/forecast-gateway/
# Held-out calibration scores of each model version (make calibrate), so
# intervals are calibrated from the first request: one line per version, as
# the Triton image ships the versions (a test checks that none is missing).
# Outside /etc/forecast-gateway, which Kubernetes hides under its ConfigMap.
COPY model_repository/lstm_timeseries/1/calibration.json /usr/share/forecast-gateway/calibration/lstm_timeseries/1/
COPY model_repository/lstm_timeseries/2/calibration.json /usr/share/forecast-gateway/calibration/lstm_timeseries/2/
COPY model_repository/moving_average/1/calibration.json /usr/share/forecast-gateway/calibration/moving_average/1/
COPY model_repository/moving_average/2/calibration.json /usr/share/forecast-gateway/calibration/moving_average/2/

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/forecast-gateway
USER 10001:10001
# The only place the gateway writes (the A/B store's SQLite file): a volume
# (compose: a named volume, which starts with this directory's owner;
# Kubernetes: an emptyDir), so the root filesystem can be read-only.
VOLUME /var/lib/forecast-gateway
WORKDIR /var/lib/forecast-gateway

# The gateway reads FORECAST_CONFIG_FILE, then FORECAST_<KEY> variables that
# override its [gateway] keys. Absolute paths: the gateway does not depend on
# its working directory.
ENV FORECAST_CONFIG_FILE=/etc/forecast-gateway/gateway.toml \
    FORECAST_STORE_PATH=/var/lib/forecast-gateway/experiments.sqlite3 \
    FORECAST_CALIBRATION_DIR=/usr/share/forecast-gateway/calibration \
    FORECAST_TRITON_URL=triton:8001 \
    FORECAST_PORT=50051 \
    FORECAST_METRICS_PORT=9100 \
    FORECAST_LOG_FORMAT=json

EXPOSE 50051 9100

# gRPC health (grpc.health.v1) through the bundled Python script: no extra
# binary needed. docker-compose.yml runs the same command; Kubernetes ignores
# HEALTHCHECK and uses its own probes (deploy/kubernetes/gateway.yaml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/grpc_healthcheck.py"]

# SIGTERM (the default stop signal) triggers the gateway's graceful stop.
CMD ["python", "-m", "forecast_gateway"]
