"""The forecasting core, with no transport: plan, execute, record.

`forecaster.Forecaster` is the facade; `plan`, `execute` and `record` are its
stages, handing on the plain data of `results`. Below them: validation,
routing, the catalog, normalization and calibration.
"""
