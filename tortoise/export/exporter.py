"""Export a component to ONNX (``torch.onnx.export``, the torch.export-based exporter) or to OpenVINO IR
(``openvino.convert_model`` of that ONNX graph), verify it against the torch network, and keep it in the cache.

The OpenVINO IR is converted from the exported ONNX graph rather than from the torch module: OpenVINO's own
PyTorch frontend traces with TorchScript, which mis-records the networks' in-place kernels (the diffusion trunk and
UnivNet came out wrong by 20-85 % in a trial), while the ONNX graph comes from ``torch.export`` and is verified.

Verification: every output of the graph, run by its runtime (ONNX Runtime's CPU provider; OpenVINO on CPU at f32
inference precision) on seeded inputs, is compared with the torch network's own method on the same inputs:
``max |graph - torch| / max |torch|`` must be at most 1e-4 in fp32 (1e-2 for half-precision graphs or
fp16-compressed IR). Dynamic graphs are checked at the example sizes and at other sizes (every dynamic axis
changed). A graph that fails is deleted, never published.
"""
import contextlib
import inspect
import io
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import tortoise.export.cache as cache
from tortoise.export.components import COMPONENTS, Shapes
from tortoise.export.transformer import Embeddings, fake_quantize
from tortoise.models.bigvgan import BigVGAN
from tortoise.models.vocoder import VOCODERS
from tortoise.runtimes.common import MissingRuntime, install_hint, require, runtime_version
from tortoise.runtimes.onnxruntime import OrtRunner, OrtTransformer, available_providers
from tortoise.runtimes.openvino import OvRunner, OvTransformer
from tortoise.utils import checkpoints
from tortoise.utils.checkpoints import default_models_dir

DEFAULT_OPSET = 18
TOLERANCE = 1e-4       # fp32: max |graph - torch| / max |torch|
HALF_TOLERANCE = 1e-2  # fp16 graphs and fp16-compressed OpenVINO weights
FORMATS = ("onnx", "openvino")
BACKEND_FORMATS = {"onnxruntime": "onnx", "onnx": "onnx", "openvino": "openvino"}
SEED = 1234


class ExportError(RuntimeError):
    """An export cannot be made; the message is one line that says why and what to do."""


class VerificationError(ExportError):
    """The exported graph does not compute what the torch network computes; nothing was published."""

    def __init__(self, message, checks):
        super().__init__(message)
        self.checks = checks


@dataclass
class Check:
    """One verified output: how far the graph's output is from the torch network's."""
    component: str
    format: str
    case: str
    output: str
    shape: tuple
    max_abs: float
    max_rel: float
    tolerance: float
    ok: bool


@dataclass
class ExportResult:
    component: str
    format: str
    path: Path                 # model.onnx or model.xml
    cached: bool               # True: found in the cache, nothing exported
    verification: str          # "passed", "skipped"
    checks: list = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Networks: where they come from and how they are loaded
# ---------------------------------------------------------------------------------------------------------------
def network_source(network, models_dir, checkpoint=None):
    """-> (checkpoint files, config dict) of ``network`` in ``models_dir`` (a BigVGAN: its NVIDIA-layout dir)."""
    if network in ("bigvgan_base", "bigvgan"):
        directory = _bigvgan_dir(network, models_dir, checkpoint)
        return [directory / "config.json", directory / "bigvgan_generator.pt"], json.loads(
            (directory / "config.json").read_text())
    try:
        path = checkpoints.resolve_checkpoint(network, models_dir=models_dir, path=checkpoint)
        return [path], checkpoints.model_config(network, models_dir)
    except checkpoints.CheckpointError as e:
        raise ExportError(str(e)) from None


def _bigvgan_dir(network, models_dir, checkpoint=None):
    repo = VOCODERS[network]["hub_repo"]
    directory = Path(checkpoint) if checkpoint else Path(models_dir or default_models_dir()).expanduser() / repo.split(
        "/")[-1]
    for name in ("config.json", "bigvgan_generator.pt"):
        if not (directory / name).is_file():
            raise ExportError(f"{network}: {directory / name} is missing; download {repo} into {directory} "
                              f"(config.json + bigvgan_generator.pt) or leave {network} out of --components")
    return directory


def load_network(network, models_dir, checkpoint=None, device="cpu"):
    """The torch network in eval mode, gradients off, on ``device`` (fp32)."""
    with torch.random.fork_rng(devices=[]):  # building a network draws init weights: keep the caller's seed
        if network in ("bigvgan_base", "bigvgan"):
            net = BigVGAN.from_pretrained(_bigvgan_dir(network, models_dir, checkpoint))
        else:
            try:
                net = checkpoints.load_model(network, models_dir=models_dir, path=checkpoint)
            except checkpoints.CheckpointError as e:
                raise ExportError(str(e)) from None
    return net.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------------------------------------------------------
# torch -> ONNX
# ---------------------------------------------------------------------------------------------------------------
def _dims(axes):
    """Axis names -> torch.export Dims; "name+10" is the Dim "name" plus 10 (a derived size)."""
    from torch.export import Dim
    made = {}

    def dim(name):
        base, _, plus = name.partition("+")
        if base not in made:
            made[base] = Dim(base, min=1)
        return made[base] + int(plus) if plus else made[base]

    return {inp: {axis: dim(name) for axis, name in spec.items()} for inp, spec in axes.items()}


def _dynamic_shapes(form, names, axes):
    """The ``dynamic_shapes`` structure torch.export wants: one entry per forward() parameter, a tuple for *args."""
    dims = _dims(axes)
    specs = [dims.get(n) or None for n in names]
    params = list(inspect.signature(form.forward).parameters.values())
    out = []
    for i, p in enumerate(params):
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            out.append(tuple(specs[i:]))
            break
        out.append(specs[i])
    return tuple(out)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress to stdout and logs warnings about unrelated optional packages: keep them out of
    the user's terminal (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(component, net, path, *, shapes, dynamic, opset):
    """Write ``component``'s graph of ``net`` to ``path`` (ONNX, weights in ``path.data``)."""
    comp = COMPONENTS[component]
    form = comp.form(net).eval()
    example_shapes = shapes.traceable() if dynamic else shapes
    device = next(net.parameters()).device
    inputs = comp.inputs(net, example_shapes, torch.Generator().manual_seed(SEED))
    inputs = {k: _as_input(v, net).to(device) for k, v in inputs.items()}
    names = list(inputs)
    axes = comp.axes(net)
    if not dynamic:
        axes = {}
    dynamic_shapes = _dynamic_shapes(form, names, axes) if any(axes.values()) else None
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(form, tuple(inputs.values()), str(path), input_names=names,
                              output_names=comp.outputs(net), opset_version=opset, dynamo=True,
                              dynamic_shapes=dynamic_shapes, external_data=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; the user gets one line
        raise ExportError(f"{component}: torch.onnx.export failed ({type(e).__name__}: {_first_line(e)}); "
                          f"run with --verbose for the exporter's report, or try without --dynamic_axes") from e


def _first_line(e):
    for line in str(e).splitlines():
        line = line.strip()
        if line and not line.startswith(("Failed to export", "- ", "#")):
            return line[:200]
    return type(e).__name__


def _as_input(t, net):
    """Float example inputs in the network's dtype (half exports)."""
    dtype = next(net.parameters()).dtype
    return t.to(dtype) if t.is_floating_point() else t


# ---------------------------------------------------------------------------------------------------------------
# ONNX -> OpenVINO IR
# ---------------------------------------------------------------------------------------------------------------
def convert_openvino(component, onnx_path, xml_path, *, half):
    """``openvino.convert_model`` of the ONNX graph, saved as IR (weights fp16-compressed only with ``half``)."""
    ov = require("openvino")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{component}: openvino.convert_model failed ({_first_line(e)})") from e
    ov.save_model(model, str(xml_path), compress_to_fp16=half)


# ---------------------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------------------
class _GraphRun:
    """The graph at ``path`` loaded once in its runtime; called with torch inputs -> list of torch outputs."""

    def __init__(self, component, fmt, path, provider, net):
        self.component = component
        threads = torch.get_num_threads()  # as many as torch uses for the reference
        if component == "ar_transformer":
            self.transformer = (OrtTransformer(path, provider=provider, threads=threads, exact=True) if fmt == "onnx"
                                else OvTransformer(path, precision="f32", threads=threads))
            self.embeddings = Embeddings.load(Path(path).parent, net)
        elif fmt == "onnx":
            self.runner = OrtRunner(path, provider=provider, threads=threads, exact=True)
        else:
            self.runner = OvRunner(path, precision="f32", threads=threads)

    def __call__(self, inputs):
        if self.component != "ar_transformer":
            return self.runner.run(inputs)
        return self._transformer_passes(inputs)

    def _transformer_passes(self, x):
        """The passes `ArTransformerComponent.reference` makes, through the graph (see there)."""
        t, emb = self.transformer, self.embeddings
        cond, text, steps = x["cond_latent"], x["text_tokens"], x["step_tokens"]
        u, rows = cond.shape[0], steps.shape[0]
        start = torch.full((u, 1), emb.start_mel_token, dtype=torch.long)
        hidden, logits, cache = t.prompt(emb.prompt(cond, text, start))
        cache = cache.select(torch.arange(rows) % u, capacity=cache.length + steps.shape[1])
        step_hidden, step_logits = [], []
        for j in range(steps.shape[1]):
            h, lg = t.step(emb.step(steps[:, j], j + 1), cache)
            step_hidden.append(h[:, -1])
            step_logits.append(lg)
        codes = x["codes"]
        embeds, first = emb.latent(x["latent_cond"], x["latent_text"], codes)
        latents = t.latents(embeds)[:, first:first + codes.shape[1]]
        return [logits, hidden[:, -1], torch.stack(step_logits, 1), torch.stack(step_hidden, 1), latents]


def verify(component, fmt, net, path, *, shapes, dynamic, tolerance, provider="cpu"):
    """Compare the graph with the torch network on seeded inputs -> list of Check (one per output and case)."""
    comp = COMPONENTS[component]
    cases = [("example", shapes)] + ([("other sizes", shapes.varied())] if dynamic else [])
    device = next(net.parameters()).device
    checks = []
    graph = _GraphRun(component, fmt, path, provider, net)
    with _no_tf32():
        for label, case_shapes in cases:
            checks += _verify_case(comp, component, fmt, net, graph, label, case_shapes, tolerance, device)
    return checks


@contextlib.contextmanager
def _no_tf32():
    """CUDA verification compares fp32 with fp32: TF32 matmuls/convolutions off while it runs."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _verify_case(comp, component, fmt, net, graph, label, case_shapes, tolerance, device):
    inputs = comp.inputs(net, case_shapes, torch.Generator().manual_seed(SEED + 1))
    inputs = {k: _as_input(v, net).to(device) for k, v in inputs.items()}
    with torch.no_grad():
        expected = comp.reference(net, {k: v.clone() for k, v in inputs.items()})
        got = graph(inputs)
    checks = [_compare(component, fmt, label, name, want, have, tolerance)
              for name, want, have in zip(comp.outputs(net), expected, got)]
    if len(got) != len(expected):
        checks.append(Check(component, fmt, label, f"{len(got)} outputs (want {len(expected)})", (), float("inf"),
                            float("inf"), tolerance, False))
    return checks


def _compare(component, fmt, case, name, want, have, tolerance):
    want = want.detach().float().cpu()
    have = have.detach().float().cpu()
    if tuple(want.shape) != tuple(have.shape):
        return Check(component, fmt, case, f"{name} shape {tuple(have.shape)}", tuple(want.shape), float("inf"),
                     float("inf"), tolerance, False)
    diff = (have - want).abs().max().item() if want.numel() else 0.0
    scale = want.abs().max().item() if want.numel() else 0.0
    rel = diff / max(scale, 1e-12)
    ok = bool(torch.isfinite(have).all()) and rel <= tolerance
    return Check(component, fmt, case, name, tuple(want.shape), diff, rel, tolerance, ok)


def _failure(component, fmt, checks):
    bad = [c for c in checks if not c.ok]
    worst = max(bad, key=lambda c: c.max_rel)
    return VerificationError(
        f"{component} ({fmt}): the exported graph differs from the torch network: {worst.output} ({worst.case}) "
        f"max relative error {worst.max_rel:.2e} > {worst.tolerance:.0e}; nothing was kept", checks)


# ---------------------------------------------------------------------------------------------------------------
# The whole export of one component
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    dynamic: bool = True
    shapes: Shapes = Shapes()
    half: bool = False
    verify: bool = True
    cpu_only: bool = False
    int8: bool = False  # int8 weights (OpenVINO; the components that have them: the AR transformer)


def _device(options):
    return "cuda" if not options.cpu_only and torch.cuda.is_available() else "cpu"


def _ort_provider(device):
    if device != "cuda":
        return "cpu"
    return "cuda" if "CUDAExecutionProvider" in available_providers() else "cpu"


def require_exporter(runtime):
    """The runtime (it verifies the graph and will run it) and the ONNX exporter's packages, or one line naming the
    extra that installs them."""
    import importlib.util
    require(runtime)
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingRuntime(f"the ONNX exporter needs {' and '.join(missing)}, which is not installed: "
                             f"{install_hint(runtime)}")


def graph_entry(component, models_dir=None, fmt="onnx", *, output_dir=None, options=ExportOptions(),
                checkpoint=None):
    """-> (cache entry, fingerprint) where ``component``'s graph with these options lives (exported or not)."""
    root = Path(output_dir).expanduser() if output_dir else cache.default_root(models_dir)
    files, config = network_source(COMPONENTS[component].network, models_dir, checkpoint)
    fp = cache.fingerprint(component, files, config, root, opset=options.opset, dynamic=options.dynamic,
                           shapes=asdict(options.shapes), dtype=_weights_dtype(component, fmt, options))
    return cache.Entry(root, component, cache.key_of(fp)), fp


def _weights_dtype(component, fmt, options):
    """The graph's weight type, part of its cache key: float16 ONNX graphs, int8 OpenVINO AR transformer."""
    if options.int8 and fmt == "openvino" and getattr(COMPONENTS[component], "built", False):
        return "int8"
    return "float16" if options.half and fmt == "onnx" else "float32"


def export(component, models_dir=None, fmt="onnx", *, output_dir=None, options=ExportOptions(), checkpoint=None,
           force=False):
    """Make (or find in the cache) ``component``'s verified graph in format ``fmt`` -> ExportResult."""
    if component not in COMPONENTS:
        raise ExportError(f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}")
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose onnx or openvino")
    runtime = "onnxruntime" if fmt == "onnx" else "openvino"
    require_exporter(runtime)
    start = time.perf_counter()
    comp = COMPONENTS[component]
    entry, fp = graph_entry(component, models_dir, fmt, output_dir=output_dir, options=options,
                            checkpoint=checkpoint)
    onnx_half = options.half and fmt == "onnx"
    version = runtime_version(runtime)
    final = entry.onnx_dir if fmt == "onnx" else entry.openvino_dir(version, options.half)
    stamp = entry.ort_stamp(version) if fmt == "onnx" else final / "verified.json"
    if not force and stamp.is_file():
        return _cached_result(component, fmt, final, stamp, start)
    if force and final.exists():
        shutil.rmtree(final)
    if entry.onnx_dir.exists() and not entry.onnx.is_file():  # damaged by hand: start that graph afresh
        shutil.rmtree(entry.onnx_dir)
    device = _device(options)
    net = load_network(comp.network, models_dir, checkpoint, device)
    if onnx_half:
        net = net.half()
    if _weights_dtype(component, fmt, options) == "int8":
        net = fake_quantize(net)  # the graph is verified against the weights it computes with
    tolerance = HALF_TOLERANCE if options.half else TOLERANCE
    entry.dir.mkdir(parents=True, exist_ok=True)
    cache.write_json_atomic(entry.dir / "fingerprint.json", fp)
    tmp = entry.temp_dir()
    try:
        return _export_into(component, fmt, net, entry, tmp, final, stamp, version, options, tolerance, device, start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_into(component, fmt, net, entry, tmp, final, stamp, version, options, tolerance, device, start):
    provider = _ort_provider(device)
    if getattr(COMPONENTS[component], "built", False):
        return _build_into(component, fmt, net, tmp, final, stamp, version, options, tolerance, provider, start)
    have_onnx = entry.onnx.is_file()
    onnx_path = entry.onnx if have_onnx else tmp / "onnx" / "model.onnx"
    if not have_onnx:
        onnx_path.parent.mkdir()
        export_onnx(component, net, onnx_path, shapes=options.shapes, dynamic=options.dynamic, opset=options.opset)
    note = ""
    if fmt == "onnx":
        target, out_dir = onnx_path, onnx_path.parent
    else:
        out_dir = tmp / "openvino"
        out_dir.mkdir()
        target = out_dir / "model.xml"
        convert_openvino(component, onnx_path, target, half=options.half)
    checks, record = _verified(component, fmt, net, target, options, tolerance, provider, version, note)
    verification = record["verification"]
    if fmt == "onnx" and have_onnx:  # an existing graph (exported for OpenVINO) now verified by ONNX Runtime
        cache.write_json_atomic(stamp, record)
        return ExportResult(component, fmt, entry.onnx, False, verification, checks, time.perf_counter() - start,
                            f"graph from the cache, verified with onnxruntime {version}")
    stamp_in_tmp = out_dir / stamp.name
    cache.write_json_atomic(stamp_in_tmp, record)
    if fmt == "openvino" and not have_onnx:
        cache.publish(tmp / "onnx", entry.onnx_dir)  # kept for other OpenVINO versions; no ONNX Runtime stamp
    published = cache.publish(out_dir, final)
    path = final / ("model.onnx" if fmt == "onnx" else "model.xml")
    if not published:  # another process made the same graph meanwhile: use theirs
        return _cached_result(component, fmt, final, stamp, start)
    return ExportResult(component, fmt, path, False, verification, checks, time.perf_counter() - start, note)


def _verified(component, fmt, net, target, options, tolerance, provider, version, note):
    """Verify the graph at ``target`` (unless skipped) -> (checks, the record its stamp keeps); raises on a failure."""
    checks = []
    if options.verify:
        checks = verify(component, fmt, net, target, shapes=options.shapes, dynamic=options.dynamic,
                        tolerance=tolerance, provider=provider)
        if not all(c.ok for c in checks):
            raise _failure(component, fmt, checks)
    return checks, {"verification": "passed" if options.verify else "skipped", "runtime_version": version,
                    "checks": [asdict(c) for c in checks], "note": note}


def _build_into(component, fmt, net, tmp, final, stamp, version, options, tolerance, provider, start):
    """A built component (`tortoise.export.transformer`): written straight in its format, verified, published."""
    out_dir = tmp / fmt
    out_dir.mkdir()
    target = out_dir / ("model.onnx" if fmt == "onnx" else "model.xml")
    try:
        COMPONENTS[component].build(net, fmt, target, half=options.half, int8=options.int8)
    except Exception as e:  # noqa: BLE001 - one line
        raise ExportError(f"{component}: building the {fmt} graph failed ({type(e).__name__}: {_first_line(e)})") from e
    note = "int8 weights" if _weights_dtype(component, fmt, options) == "int8" else ""
    checks, record = _verified(component, fmt, net, target, options, tolerance, provider, version, note)
    verification = record["verification"]
    cache.write_json_atomic(out_dir / stamp.name, record)
    if not cache.publish(out_dir, final):
        return _cached_result(component, fmt, final, stamp, start)
    return ExportResult(component, fmt, final / target.name, False, verification, checks,
                        time.perf_counter() - start, note)


def _cached_result(component, fmt, final, stamp, start):
    record = json.loads(stamp.read_text())
    checks = [Check(**{**c, "shape": tuple(c["shape"])}) for c in record.get("checks", [])]
    path = final / ("model.onnx" if fmt == "onnx" else "model.xml")
    return ExportResult(component, fmt, path, True, record.get("verification", "passed"), checks,
                        time.perf_counter() - start, record.get("note", ""))


def ensure_exported(component, models_dir=None, backend="onnxruntime", *, output_dir=None, dynamic=True,
                    shapes=None, half=False, opset=DEFAULT_OPSET, verify=True, cpu_only=False, checkpoint=None,
                    int8=False):
    """The path of ``component``'s verified graph for ``backend`` ("onnxruntime" / "onnx" -> model.onnx,
    "openvino" -> model.xml): exported, verified and cached on first use, found in the cache afterwards.

    Graphs the pipeline uses are dynamic (any batch, text length, code count, frame count) by default.
    """
    if backend not in BACKEND_FORMATS:
        raise ExportError(f"unknown backend {backend!r}; choose onnxruntime or openvino")
    options = ExportOptions(opset=opset, dynamic=dynamic, shapes=shapes or Shapes(), half=half, verify=verify,
                            cpu_only=cpu_only, int8=int8)
    return export(component, models_dir, BACKEND_FORMATS[backend], output_dir=output_dir, options=options,
                  checkpoint=checkpoint).path
