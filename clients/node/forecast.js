#!/usr/bin/env node
// Calls ListModels, Forecast and CompareVersions on the Forecast Gateway, loading
// protos/forecast/v1/forecast_service.proto at run time (no generated code).
//
//   node forecast.js [host:port] [model]
//
// The target defaults to $FORECAST_TARGET, then localhost:50051; the model to
// lstm_timeseries. Exit status: 0 ok, 2 invalid request (INVALID_ARGUMENT,
// NOT_FOUND, OUT_OF_RANGE), 1 any other failure.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const TIMEOUT_MS = 10_000;

// keepCase: false gives the proto JSON names (routingKey, sequenceLength);
// enums as strings (ROUTING_DECISION_PINNED); unset fields as their defaults.
const definition = protoLoader.loadSync('forecast/v1/forecast_service.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
});
const { ForecastService } = grpc.loadPackageDefinition(definition).forecast.v1;

// Wrap a unary call in a promise with a deadline.
function call(client, method, request) {
  const deadline = new Date(Date.now() + TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// A smooth demo series, oldest point first; long enough for a 52-point window.
function demoHistory(points = 60) {
  return Array.from({ length: points }, (_, i) => 100 + 10 * Math.sin((2 * Math.PI * i) / 52));
}

async function main() {
  const target = process.argv[2] || process.env.FORECAST_TARGET || 'localhost:50051';
  const model = process.argv[3] || 'lstm_timeseries';
  const client = new ForecastService(target, grpc.credentials.createInsecure());
  try {
    const { models } = await call(client, 'ListModels', {});
    for (const m of models) {
      const versions = m.versions
        .map((v) => `${v.version}:${v.state.replace('MODEL_VERSION_STATE_', '').toLowerCase()}`)
        .join(' ');
      console.log(`${m.name}  default ${m.defaultVersion || '-'}  versions ${versions}`);
    }

    const forecast = await call(client, 'Forecast', {
      model,
      routingKey: 'node-example',
      history: demoHistory(),
      horizon: 12,
    });
    const decision = forecast.routingDecision.replace('ROUTING_DECISION_', '').toLowerCase();
    console.log(
      `${forecast.model} version ${forecast.version} (${decision}), ` +
        `window ${forecast.sequenceLength}, horizon ${forecast.horizon}`,
    );
    console.log(forecast.values.map((v) => v.toFixed(4)).join(' '));

    // The same series on every ready version (a version that failed has an error).
    const comparison = await call(client, 'CompareVersions', {
      model,
      history: demoHistory(),
      horizon: 12,
    });
    for (const f of comparison.forecasts) {
      const outcome = f.error
        ? `error: ${f.error.message}`
        : f.values.map((v) => v.toFixed(4)).join(' ');
      console.log(
        `compare version ${f.version} (window ${f.sequenceLength}, ` +
          `${f.latencyMs.toFixed(1)} ms): ${outcome}`,
      );
    }
  } finally {
    client.close();
  }
}

const INVALID_INPUT = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.OUT_OF_RANGE,
]);

main().catch((error) => {
  if (typeof error.code !== 'number') throw error;
  // error.details is the status message; the google.rpc details (BadRequest,
  // ErrorInfo) are the serialized google.rpc.Status in the
  // grpc-status-details-bin trailer: error.metadata.get('grpc-status-details-bin').
  console.error(`error: ${grpc.status[error.code]}: ${error.details}`);
  process.exitCode = INVALID_INPUT.has(error.code) ? 2 : 1;
});
