"""OpenVINO backend: runs the IR `tortoise-export --format openvino` writes, on an OpenVINO device (CPU, GPU, AUTO).

Precision: ``"f32"`` (the default), ``"bf16"`` or ``"f16"``, always set as the inference precision hint. Left unset,
OpenVINO would pick its device default (bf16 on CPUs with native bf16, AVX512-BF16 / AMX; f16 on GPUs), and the same
call would compute differently from one CPU to the next. What runs is reported by ``describe()`` / ``precision``
(read back from the compiled model: a CPU without bf16 runs ``"bf16"`` as f32). Verification always runs in f32.

The AR transformer IR is *stateful* (`tortoise.export.transformer`): its KV cache is the model's state, in the form
OpenVINO's CPU plugin fuses with its attention (the cache grows in place; rows are reordered by ``beam_idx`` without a
copy), stored at the inference precision.
"""
import ctypes
import sys
from pathlib import Path

import numpy as np
import torch

from tortoise.runtimes.common import (BackendError, KVCache, Runner, Transformer, require, rows_array, to_numpy,
                                      to_torch)

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


def _core():
    ov = require("openvino")
    return ov, ov.Core()


def check_device(device):
    ov, core = _core()
    base = device.split(":")[0].split(".")[0].upper()
    if base == "AUTO" or base in {d.split(".")[0] for d in core.available_devices}:
        return device.upper()
    raise BackendError(f"OpenVINO has no {device} device here (it has {', '.join(core.available_devices) or 'none'}); "
                       f"for an Intel GPU install its driver (intel-opencl-icd / level-zero), or use --ov_device CPU")


def check_precision(precision):
    """``precision`` as OpenVINO names it (f32, bf16, f16); None is f32."""
    if precision is None:
        return "f32"
    if precision not in PRECISIONS:
        raise BackendError(f"unknown OpenVINO precision {precision!r}; choose one of f32, bf16, f16")
    return PRECISIONS[precision]


def compile_model(model_or_path, device="CPU", precision="f32", threads=None, kv_cache=False):
    """Read (if a path) and compile an OpenVINO model at ``precision`` -> (compiled model, precision that runs).
    ``kv_cache``: the model keeps a KV cache in its state, stored at the same precision."""
    ov, core = _core()
    device = check_device(device)
    config = {"INFERENCE_PRECISION_HINT": check_precision(precision)}
    if kv_cache and device.startswith(("CPU", "GPU")):
        config["KV_CACHE_PRECISION"] = KV_CACHE_PRECISIONS[check_precision(precision)]
    if device == "CPU":  # int8 weights stay weight-only: no activation quantisation the precision did not ask for
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        model = core.read_model(str(model_or_path)) if not isinstance(model_or_path, ov.Model) else model_or_path
        compiled = core.compile_model(model, device, config)
    except Exception as e:  # noqa: BLE001 - one line, with the fix
        reason = " ".join(str(e).split())[:240]
        raise BackendError(f"OpenVINO cannot compile {model_or_path} for {device} ({reason}); re-export it with "
                           f"tortoise-export --format openvino, or try --ov_device CPU") from e
    if not isinstance(model_or_path, ov.Model):
        page_out(Path(model_or_path).with_suffix(".bin"))
    return compiled, _precision_of(compiled)


_MADV_PAGEOUT = 21  # Linux >= 5.4


def page_out(weights_file):
    """Hand the kernel back the resident pages of ``weights_file`` that OpenVINO mapped to read the weights (Linux).

    Compiling reads every weight once, and the CPU plugin repacks most of them into its own buffers (about two
    thirds of the AR transformer's), so the mapping keeps the file resident, counted in the process's memory, for
    weights nothing reads again. ``MADV_PAGEOUT`` only drops clean pages from memory (it never changes their contents):
    those the plugin still reads come back from the file at their first use. Returns the bytes advised; 0 where the
    file is not mapped or the system has no such advice (the memory then stays resident, nothing else changes)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        target = str(Path(weights_file).resolve())
        ranges = []
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end - start))
        if not ranges:
            return 0
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return sum(size for start, size in ranges if libc.madvise(start, size, _MADV_PAGEOUT) == 0)
    except (OSError, AttributeError, ValueError):
        return 0


_TYPE_NAMES = {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16", "f16": "f16"}


def _precision_of(compiled):
    """The inference precision the compiled model runs at: f32, bf16 or f16 (or what the plugin reports)."""
    try:
        name = str(compiled.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: '", "").rstrip("'>")
    except Exception:  # noqa: BLE001 - AUTO and some plugins do not report it
        return "device default"
    return _TYPE_NAMES.get(name, name)


def _names(ports):
    return [p.get_any_name() for p in ports]


class OvRunner(Runner):
    """One compiled OpenVINO model and its infer request."""

    runtime = "openvino"

    def __init__(self, path, device="CPU", precision="f32", threads=None, kv_cache=False):
        super().__init__(path)
        self.compiled, self.precision = compile_model(path, device, precision, threads, kv_cache)
        self.device = device.upper()
        self.request = self.compiled.create_infer_request()
        self.input_names = _names(self.compiled.inputs)
        self.output_names = _names(self.compiled.outputs)

    def _run(self, arrays):
        results = self.request.infer(arrays, share_outputs=False)
        return [np.asarray(results[out]) for out in self.compiled.outputs]

    def release(self):
        """The compiled model's intermediate buffers (kept at the largest shapes it ran) back to the system."""
        self.compiled.release_memory()


# The KV cache's element type for each inference precision: the cache computes as the attention does (OpenVINO's CPU
# default would store it as u8, a quantisation no precision asked for).
KV_CACHE_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


class OvCache(KVCache):
    """The KV cache held in the decode request's state of an `OvTransformer` (``owner``). ``beam`` is the row of the
    state each row continues from at the next step (None: its own); only the owner's newest cache can step."""

    def __init__(self, owner, batch, length, beam=None):
        super().__init__(batch, length, None)
        self.owner, self.beam = owner, beam

    def select(self, rows, capacity=None):
        """The rows ``rows`` of this cache: applied by the next step's ``beam_idx`` (nothing is copied here)."""
        self.owner.check_live(self)
        idx = rows_array(rows).astype(np.int32)
        self.owner._live = OvCache(self.owner, len(idx), self.length, idx if self.beam is None else self.beam[idx])
        return self.owner._live


class OvTransformer(Transformer):
    """The stateful AR transformer IR: one compiled model (one copy of the weights), one infer request for the decode
    and one for the latent pass, each with its own state."""

    runtime = "openvino"

    def __init__(self, path, device="CPU", precision="f32", threads=None):
        self.runner = OvRunner(path, device, precision, threads, kv_cache=True)
        self.precision = self.runner.precision
        self._latent_request = None
        self._live = None

    @property
    def request(self):
        """The decode's infer request (the runner's own: the transformer never runs the runner otherwise)."""
        return self.runner.request

    def release(self):
        """The decode's KV cache (the request's state: 1.4 GB at batch 16 and 350 positions in f32) and the compiled
        model's buffers back to the system; the next prompt starts a new request."""
        self._live = None
        self.runner.request = self.runner.compiled.create_infer_request()
        self._latent_request = None
        self.runner.release()

    def describe(self):
        return self.runner.describe() + " stateful"

    def check_live(self, cache):
        """The state holds ``cache`` (OpenVINO keeps one cache per decoder: a later prompt or selection replaced any
        other)."""
        if cache is not self._live:
            raise BackendError("this KV cache was superseded by a later prompt or selection (OpenVINO keeps one cache "
                               "per decoder): continue from the newest one")

    def _infer(self, request, embeds, length, beam):
        device = embeds.device if isinstance(embeds, torch.Tensor) else None
        results = request.infer({"embeds": to_numpy(embeds), "past_length": np.array([length], dtype=np.int64),
                                 "beam_idx": beam}, share_outputs=False)
        hidden, logits = (np.asarray(results[out]) for out in self.runner.compiled.outputs)
        return to_torch(hidden, device), to_torch(logits, device)

    def prompt(self, embeds):
        self.request.reset_state()
        batch = embeds.shape[0]
        hidden, logits = self._infer(self.request, embeds, 0, np.arange(batch, dtype=np.int32))
        self._live = OvCache(self, batch, embeds.shape[1])
        return hidden, logits, self._live

    def step(self, embeds, cache):
        self.check_live(cache)
        cache.check_rows(embeds)
        beam = cache.beam if cache.beam is not None else np.arange(cache.batch, dtype=np.int32)
        out = self._infer(self.request, embeds, cache.length, beam)
        cache.beam, cache.length = None, cache.length + embeds.shape[1]
        return out

    def latents(self, embeds):
        if self._latent_request is None:
            self._latent_request = self.runner.compiled.create_infer_request()
        self._latent_request.reset_state()
        hidden, _ = self._infer(self._latent_request, embeds, 0, np.arange(embeds.shape[0], dtype=np.int32))
        self._latent_request.reset_state()  # the state is released, not kept for the next call
        return hidden
