"""Backtests: rolling-origin evaluation of model versions on a caller's own history.

`windows` lays the rolling origins out, `scores` scores each target's
forecasts against the held-out actuals, `comparison` tests two targets on
the same windows (Diebold-Mariano), `results` holds the query and the
report, and `runner` executes the windows through the forecasting core,
batched, without recording anything live.
"""
