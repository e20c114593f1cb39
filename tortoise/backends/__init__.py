"""Inference-engine backends: run Tortoise's networks as exported graphs on ONNX Runtime or OpenVINO.

    from tortoise.backends import load
    ar = load("autoregressive", models_dir, backend="openvino", device="CPU")   # exports on first use
    codes = ar.inference_speech(cond_latent, text_tokens, do_sample=False, num_return_sequences=4)

``load(network, models_dir, backend, **options)`` returns an object with the calls the pipeline makes on the torch
network (`tortoise.backends.networks`); graphs are exported, verified and cached by `tortoise.export` the first
time they are needed. Options: ONNX Runtime ``provider`` ("cpu", "cuda", "openvino"), ``precision`` ("f32", or
"f16": float16 graphs, for CUDA), ``threads``; OpenVINO ``device`` ("CPU", "GPU", "AUTO"), ``precision`` ("f32" by
default on every device, "bf16", "f16": set as the inference precision hint, so a CPU with native bf16 does not pick
bf16 by itself; "int8": the AR transformer with int8 weights, every graph computing in f32), ``threads``. A missing
runtime raises `MissingRuntime` with the pip command that installs it.
"""
from tortoise.backends import networks
from tortoise.runtimes.common import BackendError, MissingRuntime, install_hint, require  # noqa: F401
from tortoise.runtimes.onnxruntime import OrtRunner, OrtTransformer
from tortoise.runtimes.openvino import OvRunner, OvTransformer, check_device, check_precision

BACKENDS = ("torch", "onnxruntime", "openvino")
NETWORKS = ("autoregressive", "clvp", "diffusion", "vocoder", "bigvgan_base", "bigvgan", "hifidecoder")


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, provider="cpu", threads=None, device_id=0, precision="f32"):
        require("onnxruntime")
        if precision not in ("f32", "f16"):
            raise BackendError(f"ONNX Runtime runs f32 or f16 graphs, not {precision!r}; for bf16 use --backend "
                               f"openvino")
        self.provider, self.threads, self.device_id, self.precision = provider, threads, device_id, precision
        self.half_graphs = precision == "f16"  # the graphs are exported in float16

    int8_weights = False

    def runner(self, path):
        return OrtRunner(path, self.provider, self.threads, self.device_id)

    def transformer(self, path):
        return OrtTransformer(path, self.provider, self.threads, self.device_id)

    def describe(self):
        return f"onnxruntime {self.provider} {self.precision}"


class OpenVinoBackend:
    name = "openvino"

    half_graphs = False  # f32 IR; the precision is the compiled model's inference precision hint

    def __init__(self, device="CPU", precision="f32", threads=None):
        require("openvino")
        self.device, self.threads = check_device(device), threads
        # int8: the AR transformer's weights as int8 (its own IR), computing in f32 like every other graph
        self.int8_weights = precision == "int8"
        self.precision = "int8" if self.int8_weights else check_precision(precision)
        self.compute_precision = "f32" if self.int8_weights else self.precision

    def runner(self, path):
        return OvRunner(path, self.device, self.compute_precision, self.threads)

    def transformer(self, path):
        transformer = OvTransformer(path, self.device, self.compute_precision, self.threads)
        if self.int8_weights:
            transformer.precision = "int8"  # int8 weights, f32 compute
        return transformer

    def describe(self):
        return f"openvino {self.device} {self.precision}"


def get_backend(name, **options):
    """The runtime backend ``name`` ("onnxruntime" or "openvino") with its options."""
    if name == "onnxruntime":
        return OnnxRuntimeBackend(**options)
    if name == "openvino":
        return OpenVinoBackend(**options)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def load(network, models_dir=None, backend="onnxruntime", *, export_dir=None, checkpoint=None, dynamic=True,
         verify=True, cpu_only=False, **backend_options):
    """The graph object for ``network`` (see the module docstring) on ``backend``."""
    if network not in NETWORKS:
        raise BackendError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
    runtime = backend if not isinstance(backend, str) else get_backend(backend, **backend_options)
    graphs = networks.GraphSet(runtime, models_dir, network, export_dir=export_dir, checkpoint=checkpoint,
                               dynamic=dynamic, verify=verify, cpu_only=cpu_only)
    if network == "autoregressive":
        return networks.AutoregressiveGraphs(graphs, networks.network_config(network, models_dir))
    if network == "clvp":
        return networks.ClvpGraphs(graphs)
    if network == "diffusion":
        return networks.DiffusionGraphs(graphs, networks.network_config(network, models_dir))
    if network == "vocoder":
        return networks.UnivNetGraph(graphs, networks.network_config(network, models_dir))
    if network in ("bigvgan_base", "bigvgan"):
        return networks.BigVGANGraph(graphs, network)
    return networks.HifiganGraph(graphs)
