"""Inference backends behind one protocol (`base.InferenceBackend`).

`triton.TritonProxy` is the real one; `fake.FakeBackend` answers in process,
for tests of the gRPC edge and of the core.
"""
