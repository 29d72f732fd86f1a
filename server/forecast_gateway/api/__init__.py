"""The gRPC edge: server assembly, servicer, proto <-> domain conversion, interceptors, auth.

The only server code that imports grpc or the generated protos.
"""
