#!/usr/bin/env bash
# grpcurl against the Forecast Gateway, one command per RPC. Uses server
# reflection (grpcurl 1.8.6 speaks reflection v1alpha, which the gateway serves).
#
#   clients/grpcurl/examples.sh [host:port]      (default: $FORECAST_TARGET or localhost:50051)
#
# Without reflection, add: -import-path protos -proto forecast/v1/forecast_service.proto
# JSON field names are lowerCamelCase: model, version, routingKey, history,
# horizon, sequenceLength (grpcurl 1.8.6 prints responses with the proto names,
# e.g. forecast_id). Errors print the status and its google.rpc details
# (BadRequest field violations, ErrorInfo reason) and exit non-zero.
set -euo pipefail

TARGET="${1:-${FORECAST_TARGET:-localhost:50051}}"
GRPCURL="${GRPCURL:-grpcurl}"
SERVICE="forecast.v1.ForecastService"

run() {
  echo "+ grpcurl $*" >&2
  "$GRPCURL" -plaintext "$@"
}

# What the server offers.
run "$TARGET" list
run "$TARGET" describe "$SERVICE"
run "$TARGET" describe forecast.v1.ForecastRequest

# Health (grpc.health.v1): "" is the whole server, or name the service.
run -d '{"service": ""}' "$TARGET" grpc.health.v1.Health/Check

# ListModels: every model, its versions and their readiness.
run -d '{}' "$TARGET" "$SERVICE/ListModels"

# GetModel: one model.
run -d '{"name": "lstm_timeseries"}' "$TARGET" "$SERVICE/GetModel"

# Forecast, letting the gateway choose the version (routingDecision DEFAULT).
# history is oldest first and must hold at least the version's window
# (lstm_timeseries: 52 points for version 2, 10 for version 1).
HISTORY="$(seq -s, 1 60)"
run -d "{\"model\": \"lstm_timeseries\", \"routingKey\": \"store-17\",
         \"history\": [${HISTORY}], \"horizon\": 12}" \
  "$TARGET" "$SERVICE/Forecast"

# Forecast pinned to version 1 with an explicit window (sequenceLength).
run -d "{\"model\": \"lstm_timeseries\", \"version\": \"1\", \"history\": [${HISTORY}],
         \"horizon\": 6, \"sequenceLength\": 10}" \
  "$TARGET" "$SERVICE/Forecast"

# An invalid request: INVALID_ARGUMENT with a field violation on "history".
# grpcurl exits non-zero on an error status, so this one is allowed to fail.
run -d '{"model": "lstm_timeseries", "history": []}' "$TARGET" "$SERVICE/Forecast" || true
