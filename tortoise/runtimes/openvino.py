"""OpenVINO backend: runs the IR `tortoise-export --format openvino` writes, on an OpenVINO device (CPU, GPU, AUTO).

Precision: ``"f32"`` (the default), ``"bf16"`` or ``"f16"``, always set as the inference precision hint. Left unset,
OpenVINO would pick its device default (bf16 on CPUs with native bf16, AVX512-BF16 / AMX; f16 on GPUs), and the same
call would compute differently from one CPU to the next. What runs is reported by ``describe()`` / ``precision``
(read back from the compiled model: a CPU without bf16 runs ``"bf16"`` as f32). Verification always runs in f32.

The AR decode graph is stored *stateful* (OpenVINO's MakeStateful transformation): its ``past.*`` inputs and
``present.*`` outputs become internal variables, so the KV cache stays inside the runtime between steps (the form
OpenVINO's CPU plugin fuses with its attention for an in-place cache). The prefill's cache is written into those
variables before the first step (``GraphCache`` of numpy arrays -> state); reading it back (``select``) copies.
"""
import numpy as np
import torch

from tortoise.runtimes.common import BackendError, Decoder, GraphCache, Runner, require, to_numpy, to_torch

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


def compile_model(model_or_path, device="CPU", precision="f32", threads=None):
    """Read (if a path) and compile an OpenVINO model at ``precision`` -> (compiled model, precision that runs)."""
    ov, core = _core()
    device = check_device(device)
    config = {"INFERENCE_PRECISION_HINT": check_precision(precision)}
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        model = core.read_model(str(model_or_path)) if not isinstance(model_or_path, ov.Model) else model_or_path
        compiled = core.compile_model(model, device, config)
    except Exception as e:  # noqa: BLE001 - one line, with the fix
        reason = " ".join(str(e).split())[:240]
        raise BackendError(f"OpenVINO cannot compile {model_or_path} for {device} ({reason}); re-export it with "
                           f"tortoise-export --format openvino, or try --ov_device CPU") from e
    return compiled, _precision_of(compiled)


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

    def __init__(self, path, device="CPU", precision="f32", threads=None):
        super().__init__(path)
        self.compiled, self.precision = compile_model(path, device, precision, threads)
        self.device = device.upper()
        self.request = self.compiled.create_infer_request()
        self.input_names = _names(self.compiled.inputs)
        self.output_names = _names(self.compiled.outputs)

    def _run(self, arrays):
        results = self.request.infer(arrays, share_outputs=False)
        return [np.asarray(results[out]) for out in self.compiled.outputs]


class OvDecoder(Decoder):
    """Prefill model + stateful decode-step model. The step's KV cache is the request's state."""

    runtime = "openvino"

    def __init__(self, prefill_path, decode_path, device="CPU", precision="f32", threads=None):
        self.prefill_runner = OvRunner(prefill_path, device, precision, threads) if prefill_path else None
        self.step_runner = OvRunner(decode_path, device, precision, threads)
        self.precision = self.step_runner.precision
        self.states = {s.name: s for s in self.step_runner.request.query_state()}
        self.stateful = bool(self.states)
        if self.stateful:  # MakeStateful names each variable after its pair: "past.0.key" + "present.0.key"
            names = [name[name.index("present."):] for name in self.states]
            self.cache_names = sorted(names, key=lambda n: (int(n.split(".")[1]), n.split(".")[2] != "key"))
        else:
            self.cache_names = [n for n in self.step_runner.output_names if n.startswith("present.")]
        self._live = None  # the cache object whose contents are in the state right now

    def describe(self):
        return self.step_runner.describe() + (" stateful" if self.stateful else "")

    def _state_for(self, present_name):
        past = "past." + present_name[len("present."):]
        state = self.states.get(past + present_name)
        if state is None:
            raise BackendError(f"the OpenVINO decode graph has no state for {past}; re-export it with "
                               f"tortoise-export --format openvino")
        return state

    def _numpy_cache(self, arrays, length):
        return GraphCache(arrays, length, lambda a: a, lambda a: a)

    def cache_from_arrays(self, arrays):
        return self._numpy_cache([np.asarray(a, dtype=np.float32) for a in arrays], arrays[0].shape[2])

    def prefill(self, feeds):
        outs = self.prefill_runner.run(feeds)
        arrays = [t.numpy() for t in outs[2:]]
        return outs[0], outs[1], self._numpy_cache(arrays, arrays[0].shape[2])

    def _load(self, cache):
        ov = require("openvino")
        for name, array in zip(self.cache_names, cache.arrays()):
            self._state_for(name).state = ov.Tensor(np.ascontiguousarray(array))

    def _read_state(self):
        return [np.array(self._state_for(name).state.data, copy=True) for name in self.cache_names]

    def step(self, tokens, position, cache):
        device = tokens.device if isinstance(tokens, torch.Tensor) else None
        feeds = {"tokens": to_numpy(tokens), "position": np.array([int(position)], dtype=np.int64)}
        if not self.stateful:  # a stateless IR: the cache goes in and out
            feeds.update({"past." + n[len("present."):]: a for n, a in zip(self.cache_names, cache.arrays())})
            outs = self.step_runner._run(feeds)
            return to_torch(outs[0], device), to_torch(outs[1], device), self._numpy_cache(outs[2:], cache.length + 1)
        if cache is not self._live:
            if isinstance(cache, LiveCache):
                raise BackendError("this KV cache was superseded by a later step (OpenVINO keeps one cache per "
                                   "decoder): continue from the cache the last step returned")
            self._load(cache)
        outs = self.step_runner._run(feeds)
        self._live = LiveCache(self, cache.length + 1)
        return to_torch(outs[0], device), to_torch(outs[1], device), self._live


class LiveCache(GraphCache):
    """The KV cache inside an OpenVINO decoder's state; reading it (``arrays``/``select``) copies it out."""

    def __init__(self, decoder, length):
        super().__init__([], length, lambda a: a, lambda a: a)
        self.decoder = decoder

    def arrays(self):
        if self.decoder._live is not self:
            raise BackendError("this KV cache was superseded by a later step: use the cache the last step returned")
        return self.decoder._read_state()

    @property
    def batch(self):
        return self.arrays()[0].shape[0]

    def select(self, rows):
        idx = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        return GraphCache([np.ascontiguousarray(a[idx]) for a in self.arrays()], self.length,
                          lambda a: a, lambda a: a)


def make_stateful(model, pairs):
    """Turn the decode graph's (past input, present output) pairs into OpenVINO variables. -> True if done."""
    try:
        from openvino._offline_transformations import apply_make_stateful_transformation
    except ImportError:
        return False
    apply_make_stateful_transformation(model, dict(pairs))
    return True
