#!/usr/bin/env bash
# grpcurl against the Forecast Gateway, one command per RPC. Uses server
# reflection (grpcurl 1.8.6 speaks reflection v1alpha, which the gateway serves).
#
#   clients/grpcurl/examples.sh [host:port]      (default: $FORECAST_TARGET or localhost:50051)
#
# Without reflection, add: -import-path protos -proto forecast/v1/forecast_service.proto
# JSON field names are lowerCamelCase: model, version, routingKey, history,
# horizon, sequenceLength, forecastId, requestId (grpcurl 1.8.6 prints responses
# with the proto names, e.g. forecast_id). Errors print the status and its google.rpc details
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

# ListModels: every model, its versions and their readiness
# (MODEL_VERSION_STATE_READY).
run -d '{}' "$TARGET" "$SERVICE/ListModels"

# GetModel: one model.
run -d '{"name": "lstm_timeseries"}' "$TARGET" "$SERVICE/GetModel"

# Forecast, letting the gateway choose the version. Under `make run`
# (config/routing.toml: lstm_timeseries split 10/90 between versions 1 and 2)
# a routingKey makes the choice sticky, ROUTING_DECISION_STICKY: the same key
# always gets the same version (store-17: version 2); without one it is a
# random draw by the weights (ROUTING_DECISION_WEIGHTED, as in ReportActuals
# below), and a model without a policy answers ROUTING_DECISION_DEFAULT.
# history is oldest first and must hold at least the version's window
# (lstm_timeseries: 52 points for version 2, 10 for version 1).
HISTORY="$(seq -s, 1 60)"
run -d "{\"model\": \"lstm_timeseries\", \"routingKey\": \"store-17\",
         \"history\": [${HISTORY}], \"horizon\": 12}" \
  "$TARGET" "$SERVICE/Forecast"

# Forecast pinned to version 1 (ROUTING_DECISION_PINNED) with an explicit
# window (sequenceLength).
run -d "{\"model\": \"lstm_timeseries\", \"version\": \"1\", \"history\": [${HISTORY}],
         \"horizon\": 6, \"sequenceLength\": 10}" \
  "$TARGET" "$SERVICE/Forecast"

# Forecast with calibrated 80% and 95% prediction intervals and the 0.1/0.9
# quantiles (split conformal per version and horizon step): "intervals",
# "quantiles" and "uncertainty" (status UNCERTAINTY_STATUS_CALIBRATED, method,
# calibration scores per step). moving_average has no routing policy:
# ROUTING_DECISION_DEFAULT, its default version (1).
run -d "{\"model\": \"moving_average\", \"history\": [${HISTORY}], \"horizon\": 3,
         \"intervalCoverages\": [0.8, 0.95], \"quantileLevels\": [0.1, 0.9]}" \
  "$TARGET" "$SERVICE/Forecast"

# An invalid request: INVALID_ARGUMENT with a field violation on "history".
# grpcurl exits non-zero on an error status, so this one is allowed to fail.
run -d '{"model": "lstm_timeseries", "history": []}' "$TARGET" "$SERVICE/Forecast" || true

# ForecastBatch: many series of one model in one call. Each series is routed by
# its routingKey (default: its id) and answered on its own: the short one gets
# an "error" in its result, the others their "forecast".
run -d "{\"model\": \"lstm_timeseries\", \"horizon\": 6, \"series\": [
          {\"id\": \"store-17\", \"history\": [${HISTORY}]},
          {\"id\": \"store-18\", \"routingKey\": \"customer-4\", \"history\": [${HISTORY}]},
          {\"id\": \"too-short\", \"history\": [1, 2, 3]}]}" \
  "$TARGET" "$SERVICE/ForecastBatch"

# StreamForecast: several requests on one bidirectional call (grpcurl sends
# each JSON object in -d as one message). Answers carry the requestId and may
# come in any order; a failed request is an "error" answer, the stream goes on.
run -d "{\"requestId\": \"a\", \"request\": {\"model\": \"lstm_timeseries\", \"history\": [${HISTORY}], \"horizon\": 3}}
        {\"requestId\": \"b\", \"request\": {\"model\": \"moving_average\", \"version\": \"2\", \"history\": [${HISTORY}]}}
        {\"requestId\": \"c\", \"request\": {\"model\": \"no_such_model\", \"history\": [${HISTORY}]}}" \
  "$TARGET" "$SERVICE/StreamForecast"

# CompareVersions: the same request on several versions (empty "versions": every
# ready version), each version's forecast and latency, and their differences.
# Nothing is recorded for A/B scoring.
run -d "{\"model\": \"lstm_timeseries\", \"versions\": [\"1\", \"2\"], \"history\": [${HISTORY}],
         \"horizon\": 6}" \
  "$TARGET" "$SERVICE/CompareVersions"

# ReportActuals: observed values for an earlier forecast (by its forecastId),
# for horizon steps offset, offset+1, ...; the reply has the served version's
# scores (SCORE_ROLE_SERVED) and any shadow version's (under `make run` version 1
# shadows the forecasts version 2 serves). Here: forecast 4 steps, report 2,
# then 2 more.
FORECAST_ID="$(run -d "{\"model\": \"lstm_timeseries\", \"history\": [${HISTORY}], \"horizon\": 4}" \
  "$TARGET" "$SERVICE/Forecast" | sed -n -E 's/.*"(forecast_id|forecastId)": "([^"]*)".*/\2/p')"
run -d "{\"forecastId\": \"${FORECAST_ID}\", \"actuals\": [61, 62]}" \
  "$TARGET" "$SERVICE/ReportActuals"
run -d "{\"forecastId\": \"${FORECAST_ID}\", \"actuals\": [63, 64], \"offset\": 2}" \
  "$TARGET" "$SERVICE/ReportActuals"
# An unknown (or expired) forecastId: NOT_FOUND, reason FORECAST_NOT_FOUND.
run -d '{"forecastId": "no-such-id", "actuals": [1]}' "$TARGET" "$SERVICE/ReportActuals" || true

# GetExperiment: the model's current experiment ("local-demo" under `make
# run`, where these made-up actuals belong; never run this script against a
# gateway whose experiment matters): per version pair the verdict, whether it
# is conclusive (valid however often you look) and the tests; per version,
# traffic, actuals received, mean MAE/sMAPE/MASE and latency percentiles.
run -d '{"model": "lstm_timeseries"}' "$TARGET" "$SERVICE/GetExperiment"
# ListExperiments: the experiments the gateway holds, newest first.
run -d '{"model": "lstm_timeseries"}' "$TARGET" "$SERVICE/ListExperiments"
