"""The gRPC edge: server assembly, servicer, proto <-> domain conversion, interceptors, auth.

The only server code that imports the generated forecast.v1 protos, and, with
`backends/triton.py` (Triton's client), the only package code that imports grpc.
"""
