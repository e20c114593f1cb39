"""The graph runtimes' wrappers, below both their users: `tortoise.export` (which verifies what it exports by running
it) and `tortoise.backends` (which runs the pipeline's networks on them). `common`: the runner and decoder
interfaces, the graph cache, tensors in and out, the one-line errors for a missing runtime; `onnxruntime` and
`openvino`: each runtime's runner and AR decoder. The runtimes themselves (optional extras) are imported when first
used, so importing these modules needs neither.
"""
