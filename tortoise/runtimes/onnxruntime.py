"""ONNX Runtime backend: runs the graphs `tortoise-export` writes, on the CPU, CUDA or OpenVINO execution provider.

Providers (``--ort_provider``): ``cpu``; ``cuda`` (needs the ``onnxruntime-gpu`` package instead of ``onnxruntime``);
``openvino`` (needs ``onnxruntime-openvino``). The AR decoder keeps its KV cache as ONNX Runtime values bound with
io_binding: each step's ``present`` outputs stay where the provider put them (device memory with CUDA) and are bound
as the next step's ``past`` inputs, so the cache never goes through numpy; only the logits and hidden state (B, V)
and (B, d) come back to torch. The same io_binding code runs on the CPU provider (tested here) and on CUDA (written
for it, not run here: no NVIDIA GPU on the build machines).
"""
import numpy as np
import torch

from tortoise.runtimes.common import BackendError, Decoder, GraphCache, Runner, require, to_numpy, to_torch

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
PROVIDER_PACKAGES = {"cuda": "onnxruntime-gpu", "openvino": "onnxruntime-openvino"}


def available_providers():
    return list(require("onnxruntime").get_available_providers())


def _session(path, provider="cpu", threads=None, device_id=0, exact=False):
    ort = require("onnxruntime")
    if provider not in PROVIDERS:
        raise BackendError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise BackendError(f"ONNX Runtime here has no {provider} provider (it has "
                           f"{', '.join(ort.get_available_providers())}); install {PROVIDER_PACKAGES[provider]} "
                           f"in place of onnxruntime, or use --ort_provider cpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-node placement chatter
    if threads:
        options.intra_op_num_threads = int(threads)
    if provider == "cpu":
        providers = [name]
    else:  # exact: fp32 as fp32 on CUDA (no TF32), for verification
        cuda = {"device_id": device_id, **({"use_tf32": 0} if exact else {})}
        providers = [(name, cuda if provider == "cuda" else {}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # noqa: BLE001 - an unloadable graph becomes one line
        reason = " ".join(str(e).split())[:240]
        raise BackendError(f"ONNX Runtime cannot load {path} ({reason}); re-export it with tortoise-export") from e


class OrtRunner(Runner):
    """One ONNX graph in an ``InferenceSession``. On CUDA the inputs are bound from torch tensors and the outputs
    fetched through io_binding."""

    runtime = "onnxruntime"

    def __init__(self, path, provider="cpu", threads=None, device_id=0, exact=False):
        super().__init__(path)
        self.session = _session(path, provider, threads, device_id, exact)
        self.provider, self.device_id = provider, device_id
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if any(i.type == "tensor(float16)" for i in self.session.get_inputs()):
            self.float_dtype, self.precision = np.float16, "f16"

    def _run(self, arrays):
        if self.provider != "cuda":
            return self.session.run(self.output_names, arrays)
        binding = self.session.io_binding()
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return [v.numpy() for v in binding.get_outputs()]


class OrtDecoder(Decoder):
    """The prefill and decode-step sessions, the KV cache kept as OrtValues between steps (io_binding)."""

    runtime = "onnxruntime"

    def __init__(self, prefill_path, decode_path, provider="cpu", threads=None, device_id=0, exact=False):
        self.prefill_runner = OrtRunner(prefill_path, provider, threads, device_id, exact) if prefill_path else None
        self.step_runner = OrtRunner(decode_path, provider, threads, device_id, exact)
        self.device_type = "cuda" if provider == "cuda" else "cpu"
        self.device_id = device_id
        self.float_dtype = self.step_runner.float_dtype
        self.precision = self.step_runner.precision
        self.past_names = [n for n in self.step_runner.input_names if n.startswith("past.")]

    def describe(self):
        return self.step_runner.describe()

    def _ortvalue(self, array):
        ort = require("onnxruntime")
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def _cache(self, values, length):
        return GraphCache(values, length, lambda v: v.numpy(), self._ortvalue)

    def cache_from_arrays(self, arrays):
        return self._cache([self._ortvalue(np.asarray(a, dtype=self.float_dtype)) for a in arrays], arrays[0].shape[2])

    def _bound_run(self, session, inputs, ortvalues):
        """Run with io_binding: numpy ``inputs``, OrtValue ``ortvalues``; every output left on the device."""
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        for name, value in ortvalues.items():
            binding.bind_ortvalue_input(name, value)
        for out in session.get_outputs():
            binding.bind_output(out.name, self.device_type, self.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def prefill(self, feeds):
        device = feeds["cond_latent"].device if isinstance(feeds["cond_latent"], torch.Tensor) else None
        arrays = {n: to_numpy(feeds[n], self.float_dtype) for n in self.prefill_runner.input_names}
        outs = self._bound_run(self.prefill_runner.session, arrays, {})
        cache = outs[2:]
        length = cache[0].shape()[2]
        return to_torch(outs[0].numpy(), device), to_torch(outs[1].numpy(), device), self._cache(cache, length)

    def step(self, tokens, position, cache):
        inputs = {"tokens": to_numpy(tokens), "position": np.array([int(position)], dtype=np.int64)}
        outs = self._bound_run(self.step_runner.session, inputs, dict(zip(self.past_names, cache.values)))
        device = tokens.device if isinstance(tokens, torch.Tensor) else None
        return (to_torch(outs[0].numpy(), device), to_torch(outs[1].numpy(), device),
                self._cache(outs[2:], cache.length + 1))
