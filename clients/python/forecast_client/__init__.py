"""Python client and `forecast` command line for the Forecast Gateway."""
