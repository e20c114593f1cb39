"""What every inference-engine backend shares: the runner interface, tensor conversion, the missing-runtime message.

A *runner* executes one exported graph: ``run({input name: tensor}) -> [output tensors]`` (torch tensors in, torch
tensors out, on the caller's device). A *transformer* runs the AR model's GPT-2 graph and owns its KV cache, written in
place (ONNX Runtime: one buffer bound as both the cache input and output; OpenVINO: the model's state). The
per-network objects the pipeline calls (`tortoise.backends.networks`) are built on these and are the same for every
runtime.
"""
import importlib

import numpy as np
import torch

from tortoise.utils.errors import install_hint as extra_hint

# runtime name -> (the module to import, the package extra that installs it, a display name)
RUNTIMES = {
    "onnxruntime": ("onnxruntime", "onnx", "ONNX Runtime"),
    "openvino": ("openvino", "openvino", "OpenVINO"),
}


class BackendError(RuntimeError):
    """A backend cannot run as asked; the message is one line that says how to fix it."""


class MissingRuntime(BackendError):
    """The inference engine's package is not installed."""


def install_hint(runtime):
    """The pip command that installs ``runtime`` (its extra of this package: see :func:`errors.install_hint`)."""
    return extra_hint(RUNTIMES[runtime][1])


def require(runtime):
    """Import a runtime's module, or raise MissingRuntime naming the extra that installs it."""
    module, _, display = RUNTIMES[runtime]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingRuntime(f"{display} is not installed (needed for --backend {runtime}): "
                             f"{install_hint(runtime)}") from e
    except Exception as e:  # a broken install (missing shared library, ABI mismatch): still one line
        reason = " ".join(str(e).split())[:160]
        raise MissingRuntime(f"{display} failed to import ({type(e).__name__}: {reason}); reinstall it: "
                             f"{install_hint(runtime)}") from e


def runtime_version(runtime):
    """The installed runtime's version, or None."""
    from importlib import metadata
    names = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
             "openvino": ("openvino",)}[runtime]
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


_NUMPY_FLOAT = {torch.float32: np.float32, torch.float16: np.float16}


def to_numpy(t, float_dtype=np.float32):
    """A tensor (any device) as a contiguous numpy array for a graph input: floats as ``float_dtype``, ints int64."""
    if isinstance(t, np.ndarray):
        return t
    t = t.detach()
    if t.is_floating_point():
        t = t.to(torch.float32 if float_dtype == np.float32 else torch.float16)
    elif t.dtype != torch.bool:
        t = t.to(torch.long)
    return t.cpu().contiguous().numpy()


def to_torch(a, device=None):
    """A runtime's output array as a torch tensor (float32 for floating outputs) on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t if device is None else t.to(device)


class Runner:
    """One compiled graph. Subclasses set ``input_names``, ``output_names``, ``runtime``, ``device`` and implement
    ``_run(numpy feeds) -> list of numpy arrays``; ``precision`` says in which precision it computes."""

    runtime = ""
    device = "cpu"
    precision = "f32"
    float_dtype = np.float32

    def __init__(self, path):
        self.path = path
        self.input_names, self.output_names = [], []

    def run(self, feeds, device=None):
        """{input name: tensor or array} -> [torch tensors] in output order, on ``device`` (default: the first
        input tensor's device)."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path}: inputs {missing} not given")
        if device is None:
            device = next((v.device for v in feeds.values() if isinstance(v, torch.Tensor)), None)
        arrays = {n: to_numpy(feeds[n], self.float_dtype) for n in self.input_names}
        return [to_torch(a, device) for a in self._run(arrays)]

    def _run(self, arrays):
        raise NotImplementedError

    def release(self):
        """Give back the working memory the runtime keeps between runs (its activation buffers at the largest shapes
        seen); the next run allocates what it needs again. Nothing to do where the runtime keeps none."""

    def describe(self):
        return f"{self.runtime} {self.device} {self.precision}"


class KVCache:
    """A transformer graph's KV cache for ``batch`` rows: ``length`` positions written, room for ``capacity``. What
    holds the keys and values is the runtime's (buffers bound in and out, or the model's own state)."""

    def __init__(self, batch, length, capacity):
        self.batch, self.length, self.capacity = batch, length, capacity

    def check_rows(self, embeds):
        """A step feeds one row per cache row."""
        if self.batch != embeds.shape[0]:
            raise BackendError(f"the KV cache has {self.batch} rows, the step {embeds.shape[0]}")


class Transformer:
    """The AR model's GPT-2 graph (`tortoise.export.transformer`) with its KV cache written in place. Embeddings in,
    (hidden (B, S, d) final-normed, logits (B, V) of the last position) out, as torch float32 tensors.

    ``prompt(embeds)`` runs a sequence from an empty cache and returns it with the outputs; ``cache.select(rows,
    capacity)`` -> the cache whose row i continues row ``rows[i]`` (one prompt for every sample), with room for
    ``capacity`` positions; ``step(embeds, cache)`` appends S positions to ``cache`` in place; ``latents(embeds)``
    is the whole-sequence pass (its own cache, dropped after)."""

    def prompt(self, embeds):
        raise NotImplementedError

    def step(self, embeds, cache):
        raise NotImplementedError

    def latents(self, embeds):
        raise NotImplementedError

    def release(self):
        """Give back the working memory kept between calls (see `Runner.release`). A cache that lives in the
        runtime's state rather than in the caller's objects is dropped with it; caches the caller holds stay valid."""

    def describe(self):
        raise NotImplementedError


def rows_array(rows):
    """Row indices (tensor, list or array) as an int64 numpy array."""
    return rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows, dtype=np.int64)
