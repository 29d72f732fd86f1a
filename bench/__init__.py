"""`make bench`: the side-by-side throughput benchmark of Forecast Gateway.

One run starts the embedded Triton, the gateway and the hand-written baseline
server, then drives them from a separate load-generator process and reports
series/s, latency, Triton's batch sizes, CPU per process and the gateway's RSS.
See docs/benchmarks.md.
"""
