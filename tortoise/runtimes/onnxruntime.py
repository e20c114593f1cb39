"""ONNX Runtime backend: runs the graphs `tortoise-export` writes, on the CPU, CUDA or OpenVINO execution provider.

Providers (``--ort_provider``): ``cpu``; ``cuda`` (needs the ``onnxruntime-gpu`` package instead of ``onnxruntime``);
``openvino`` (needs ``onnxruntime-openvino``). The AR transformer keeps its KV cache in one buffer per layer and kind,
bound with io_binding as both the graph's ``past`` input and its ``present`` output: GroupQueryAttention writes each
step's keys and values into it in place (device memory with CUDA); only the hidden states and logits come back to
torch. The same io_binding code runs on the CPU provider (tested here) and on CUDA (written
for it, not run here: no NVIDIA GPU on the build machines).
"""
import numpy as np
import torch

from tortoise.runtimes.common import (BackendError, KVCache, Runner, Transformer, require, rows_array, to_numpy,
                                      to_torch)

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
    # The pipeline alternates graphs with torch work: threads that spin after a run take the cores torch needs next,
    # and an arena per session would keep each graph's largest activations (the diffusion's attention at every
    # length seen) for the life of the session.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
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


class OrtCache(KVCache):
    """Per layer and kind one (B, H, capacity, D) buffer (numpy on the CPU, an OrtValue on CUDA), bound as both the
    graph's ``past`` input and its ``present`` output, so GroupQueryAttention writes the new positions into it."""

    def __init__(self, owner, arrays, length):
        super().__init__(arrays[0].shape[0], length, arrays[0].shape[2])
        self.owner, self.arrays = owner, arrays
        self.values = [owner.ortvalue(a) for a in arrays]

    def host_arrays(self):
        return self.arrays if self.owner.device_type == "cpu" else [v.numpy() for v in self.values]

    def select(self, rows, capacity=None):
        idx = rows_array(rows)
        capacity = max(capacity or self.length, self.length)
        out = []
        for a in self.host_arrays():
            b = np.zeros((len(idx), a.shape[1], capacity, a.shape[3]), dtype=a.dtype)
            b[:, :, :self.length] = a[idx, :, :self.length]
            out.append(b)
        return OrtCache(self.owner, out, self.length)

    def reserve(self, needed):
        """Room for ``needed`` positions: when there is less, the buffers are replaced by ones twice as long (or
        ``needed``) holding the same positions."""
        if needed > self.capacity:
            larger = self.select(np.arange(self.batch), max(needed, 2 * self.capacity))
            self.arrays, self.values, self.capacity = larger.arrays, larger.values, larger.capacity


class OrtTransformer(Transformer):
    """The AR transformer graph in one session; its KV cache updated in place through io_binding."""

    runtime = "onnxruntime"

    def __init__(self, path, provider="cpu", threads=None, device_id=0, exact=False):
        self.runner = OrtRunner(path, provider, threads, device_id, exact)
        self.session = self.runner.session
        self.device_type = "cuda" if provider == "cuda" else "cpu"
        self.device_id = device_id
        self.float_dtype, self.precision = self.runner.float_dtype, self.runner.precision
        self.past_names = [n for n in self.runner.input_names if n.startswith("past.")]
        _, self.heads, _, self.head_dim = self.session.get_inputs()[self.runner.input_names.index("past.0.key")].shape

    def describe(self):
        return self.runner.describe()

    def ortvalue(self, array):
        ort = require("onnxruntime")
        return ort.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id)

    def new_cache(self, batch, capacity):
        shape = (batch, self.heads, capacity, self.head_dim)
        return OrtCache(self, [np.zeros(shape, dtype=self.float_dtype) for _ in self.past_names], 0)

    def _run(self, embeds, cache):
        device = embeds.device if isinstance(embeds, torch.Tensor) else None
        binding = self.session.io_binding()
        binding.bind_cpu_input("embeds", to_numpy(embeds, self.float_dtype))
        binding.bind_cpu_input("past_length", np.array([cache.length], dtype=np.int64))
        for name in ("hidden", "logits"):  # bound first: get_outputs() lists the outputs in binding order
            binding.bind_output(name, self.device_type, self.device_id)
        for name, value in zip(self.past_names, cache.values):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output("present." + name[len("past."):], value)
        self.session.run_with_iobinding(binding)
        hidden, logits = (v.numpy() for v in binding.get_outputs()[:2])
        cache.length += embeds.shape[1]
        return to_torch(hidden, device), to_torch(logits, device)

    def prompt(self, embeds):
        cache = self.new_cache(embeds.shape[0], embeds.shape[1])
        hidden, logits = self._run(embeds, cache)
        return hidden, logits, cache

    def step(self, embeds, cache):
        cache.check_rows(embeds)
        cache.reserve(cache.length + embeds.shape[1])
        return self._run(embeds, cache)

    def latents(self, embeds):
        return self.prompt(embeds)[0]
