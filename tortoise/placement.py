"""Where the networks run and in what precision, decided once from :class:`tortoise.options.ModelOptions`: the
torch dtype on a device (:func:`resolve_dtype`), the backend (:func:`resolve_backend`), a graph backend's precision
and runtime options (:func:`graph_precision`, :func:`backend_options`), the precision a pipeline computes in
(:func:`run_precision`), and a clip record's model identity (:func:`model_identity`)."""
import os
from pathlib import Path

import torch

import xpu
from tortoise.options import BACKENDS, GRAPH_PRECISIONS, IDENTITY_CHECKPOINTS, ORT_PROVIDERS, check, dtype_name
from tortoise.utils import checkpoints


def resolve_dtype(device_info, half=False, dtype=None):
    """The dtype the half-tolerant networks are held in: ``dtype`` when given (``float32``, ``bfloat16``,
    ``float16``), else the device's half dtype when ``half``, else None (float32). ``half`` on a device without a
    useful half dtype (a CPU without native bf16) says so once and runs float32."""
    if dtype is not None:
        return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name(dtype)]
    if not half:
        return None
    chosen = xpu.half_dtype(device_info)
    if chosen is None:
        xpu.warn_once(f"half-{device_info.type}", f"--half: {xpu.half_policy_reason(device_info)}; running float32")
    return chosen


def options_precision(options):
    """The precision (f32, bf16, f16) the pipeline of ``options`` computes in on this machine
    (:func:`run_precision`)."""
    return run_precision(options.backend, options.device, options.half, options.dtype, options.ort_provider,
                         options.ov_device, options.backend_precision)


def model_identity(options):
    """The model identity of a clip's record for the pipeline of ``options`` (:meth:`ModelOptions.identity`): what
    it reads from disk, and the precision it computes in on this machine."""
    home = Path(options.models_dir).expanduser() if options.models_dir else checkpoints.default_models_dir()
    filenames = {name: checkpoints.CHECKPOINTS[name].filename for name in IDENTITY_CHECKPOINTS}
    return options.identity(options_precision(options), filenames, home)


BACKEND_ENV = "TORTOISE_BACKEND"


def resolve_backend(backend=None):
    """``backend``, else ``$TORTOISE_BACKEND``, else ``torch``; one of :data:`tortoise.options.BACKENDS`."""
    name = (backend or os.environ.get(BACKEND_ENV) or "torch").lower()
    check(name in BACKENDS, f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


PRECISIONS = GRAPH_PRECISIONS
_DTYPE_PRECISION = {None: "f32", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def precision_name(dtype):
    """A torch half dtype (None: float32) as a precision name: ``f32``, ``bf16`` or ``f16``."""
    return _DTYPE_PRECISION[dtype]


def graph_precision(backend, half=False, dtype=None, ort_provider="cpu", ov_device="CPU", override=None):
    """The precision a graph backend computes in, decided as torch decides its own (:func:`resolve_dtype`):

    - no ``half``: ``f32`` on every device and CPU (set explicitly: OpenVINO's CPU plugin would otherwise pick bf16
      by itself on CPUs with native bf16, and its codes would no longer be torch's);
    - ``half``: the device's half precision. OpenVINO CPU: ``bf16`` where the CPU has native bf16 (AVX512-BF16 /
      AMX), else ``f32`` (said once, as for torch); OpenVINO GPU / AUTO: ``f16`` (Arc's XMX precision; on AUTO the
      CPU plugin maps it to its own half type). ONNX Runtime CUDA: ``f16`` graphs; ONNX Runtime's CPU and OpenVINO
      providers: ``f32`` (said once: ONNX Runtime has no half-precision CPU path);
    - ``override`` (``--backend_precision``), else ``dtype`` (a forced torch dtype), wins over ``half``; OpenVINO
      also takes ``int8``: the AR transformer with int8 weights (weight-only), every graph computing in f32.
    """
    if backend == "torch":
        return None
    check(override in (None,) + PRECISIONS, f"unknown precision {override!r}: use {', '.join(PRECISIONS)}")
    check(override != "int8" or backend == "openvino", "int8 weights are an OpenVINO precision: use --backend openvino "
          "--backend_precision int8 (ONNX Runtime computes f32, or f16 graphs on CUDA)")
    if override == "int8":
        return "int8"
    if override is not None:
        wanted = override
    elif dtype is not None:
        wanted = precision_name(resolve_dtype(None, dtype=dtype))
    else:
        wanted = "half" if half else "f32"
    if wanted == "f32":
        return "f32"
    if backend == "onnxruntime":
        if ort_provider == "cuda":
            return "f16"
        xpu.warn_once(f"half-ort-{ort_provider}", f"--half: ONNX Runtime's {ort_provider} provider computes float32 "
                      "here (no half-precision CPU path); --backend openvino runs bf16 on CPUs with native bf16")
        return "f32"
    if wanted != "half":
        return wanted
    if ov_device.split(".")[0].upper() == "CPU":
        return precision_name(resolve_dtype(xpu.describe("cpu"), half=True))
    return "f16"


def backend_options(backend, device, ort_provider="cpu", ov_device="CPU", precision=None, half=False, dtype=None):
    """The runtime options of a graph backend (see :func:`tortoise.backends.load`), checked, with the precision it
    computes in (:func:`graph_precision`): a runtime that is not installed is one line naming the extra to
    install."""
    if backend == "torch":
        return {}
    from tortoise import backends
    backends.require(backend)
    check(backend != "onnxruntime" or ort_provider in ORT_PROVIDERS,
          f"unknown ONNX Runtime provider {ort_provider!r}: use cpu, cuda or openvino")
    computes = graph_precision(backend, half, dtype, ort_provider, ov_device, precision)
    if backend == "onnxruntime":
        return {"provider": ort_provider, "precision": computes}
    return {"device": ov_device, "precision": computes}


def run_precision(backend="torch", device=None, half=False, dtype=None, ort_provider="cpu", ov_device="CPU",
                  backend_precision=None):
    """The precision (f32, bf16, f16) a pipeline with these settings computes in: a graph backend's
    (:func:`graph_precision`), else that of the torch networks on ``device`` (:func:`resolve_dtype`)."""
    if backend and backend != "torch":
        return graph_precision(backend, half, dtype, ort_provider, ov_device, backend_precision)
    return precision_name(resolve_dtype(xpu.describe(xpu.resolve_device(device)), half, dtype))
