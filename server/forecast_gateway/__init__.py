"""Forecast Gateway: a typed gRPC forecasting service in front of Triton."""
