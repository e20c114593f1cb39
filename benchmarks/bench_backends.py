"""Stage timings of the exported graphs on ONNX Runtime and OpenVINO against torch eager, side by side in one run.

    python -m tortoise.utils.make_test_models /tmp/full --size full         # once: released-size random weights
    python3 benchmarks/bench_backends.py --models_dir /tmp/full             # every stage, every variant
    python3 benchmarks/bench_backends.py --models_dir /tmp/full --stages ar_step --past 10,250,500 \
        --variants torch,ort,ov-f32                                         # step time against context length
    python3 benchmarks/bench_backends.py --models_dir /tmp/tiny --text_tokens 8 --past 20 --frames 64 \
        --batches 1,2 --repeats 1                                           # a quick check on tiny models

Stages (each at fp32 in torch; the graphs exported with dynamic axes by `tortoise.export`, on first use):
  ar_step bB @P  one AR decode step at batch B (rows sharing one prefilled prompt of --text_tokens text tokens,
               after P decoded codes, for each P of --past): torch's cached step (oneDNN-prepacked weights at B >= 2,
               as the pipeline runs it) vs each backend's transformer graph with its KV cache written in place
               (GroupQueryAttention on one bound buffer / OpenVINO state). Timed over --steps chained steps,
               reported per step.
  prefill      the prompt pass at batch 1.
  latent       the latent pass (the diffusion's input) at batch 1 over --codes codes after the prompt.
  codes        drift in codes: --codes codes sampled at batch 1 from one seed (top-p 0.8, temperature 0.8, the
               shared decode loop), torch against the graph; the diff column counts the leading codes equal to
               torch's (fp32 graphs must draw them all; a reduced precision drifts after a while).
  diffusion    one guided diffusion forward (cond + uncond, 2 items) at --frames mel frames.
  univnet, bigvgan_base, hifigan   the vocoders at --frames frames (HiFi-GAN: the codes that give them); BigVGAN only
               when its directory is in the models dir.
Variants: torch (eager fp32); ort (ONNX Runtime CPU, fp32); ov-f32 (OpenVINO CPU at f32); ov-bf16 (OpenVINO's bf16
inference precision: native with AVX512-BF16 / AMX, emulated on other AVX512 CPUs, f32 on AVX2 — the precision
column says what ran); ov-int8 (the backend's ``int8`` precision: the AR transformer with int8 weights; AR stages
only); ort-int8 (ONNX Runtime dynamic int8 quantization of the transformer graph, AR stages only).
Each row: median wall and process-CPU seconds over --repeats, the ratio to torch, and the largest difference from
torch's output (max |x - torch| / max |torch|) — the drift of the reduced-precision variants.
"""
import argparse
import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import torch
from timing import cpu_model, median_wall_cpu  # benchmarks/timing.py

VARIANTS = ("torch", "ort", "ov-f32", "ov-bf16", "ov-int8", "ort-int8")
AR_STAGES = ("ar_step", "prefill", "latent", "codes")
STAGES = ("ar_step", "prefill", "latent", "codes", "diffusion", "univnet", "bigvgan_base", "hifigan")


@contextlib.contextmanager
def quiet():
    """Keep the quantizers' progress bars and advice out of the table."""
    loggers = [logging.getLogger(), logging.getLogger("nncf")]  # nncf's logger has its own handler and level
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


class Skip(Exception):
    """A stage that ``variant`` cannot run; the message says why."""


def difference(got, want):
    """The table's diff cell: ``max |got - want| / max |want|``, or for codes how many lead the same as torch's."""
    if not got.is_floating_point():
        same = (got.cpu() == want.cpu()).long().cumprod(-1).sum(-1).min().item()
        return f"{same}/{want.shape[-1]} same"
    got, want = got.float().cpu(), want.float().cpu()
    return f"{(got - want).abs().max().item() / max(want.abs().max().item(), 1e-12):.1e}"


# ---------------------------------------------------------------------------------------------------------------
# runtimes for the graph variants
# ---------------------------------------------------------------------------------------------------------------
class Variants:
    """Which variants can run here, and runners / transformers for each, from the cached graphs."""

    def __init__(self, args):
        self.args, self.notes = args, {}
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_backends_"))

    def available(self, variant, ar_only_ok):
        """None if ``variant`` can run, else the reason it is skipped."""
        import importlib.util
        if variant in ("ort", "ort-int8") and importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime not installed: pip install -e '.[onnx]'"
        if variant.startswith("ov") and importlib.util.find_spec("openvino") is None:
            return "openvino not installed: pip install -e '.[openvino]'"
        if variant in ("ov-int8", "ort-int8") and not ar_only_ok:
            return "AR stages only"
        return None

    def path(self, component, variant):
        from tortoise.export.exporter import ensure_exported
        backend = "onnxruntime" if variant.startswith("ort") else "openvino"
        path = ensure_exported(component, self.args.models_dir, backend, output_dir=self.args.export_dir,
                               opset=self.args.opset, int8=variant == "ov-int8")
        if variant == "ort-int8":
            return self.ort_int8(path, component)
        return path

    def ort_int8(self, path, component):
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic
        out = self.tmp / f"{component}-int8.onnx"
        if not out.exists():
            with quiet():
                quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, use_external_data_format=True,
                                 extra_options={"DefaultTensorType": TensorProto.FLOAT})  # past GroupQueryAttention
        return out

    def runtime(self, variant):
        """The backend object (tortoise.backends) that runs ``variant``'s graphs on the CPU."""
        from tortoise.backends import get_backend
        if variant.startswith("ort"):
            return get_backend("onnxruntime", provider="cpu", threads=self.args.threads)
        return get_backend("openvino", device="CPU", precision=self.precision(variant), threads=self.args.threads)

    def runner(self, component, variant):
        return self.runtime(variant).runner(self.path(component, variant))

    def transformer(self, variant):
        """The AR transformer graph on ``variant`` and its embedding tables."""
        from tortoise.export.transformer import Embeddings
        exported = self.path("ar_transformer", "ort" if variant == "ort-int8" else variant)  # beside its tables
        tables = Embeddings.load(Path(exported).parent, self.args.ar)
        return self.runtime(variant).transformer(self.path("ar_transformer", variant)), tables

    @staticmethod
    def precision(variant):
        return {"ov-f32": "f32", "ov-bf16": "bf16", "ov-int8": "int8"}[variant]


# ---------------------------------------------------------------------------------------------------------------
# stages: each returns {variant: (callable, outputs getter)}
# ---------------------------------------------------------------------------------------------------------------
def load(network, args):
    from tortoise.export.exporter import load_network
    return load_network(network, args.models_dir)


def ar_prompt(ar, args, gen):
    cond = torch.randn(1, ar.model_dim, generator=gen)
    text = torch.randint(1, ar.number_text_tokens - 1, (1, args.text_tokens), generator=gen)
    return cond, text


def ar_step_stage(ar, batch, past, args, variants, variant):
    """Chained decode steps from a prompt + ``past`` codes; -> (run, last outputs) with per-call = --steps steps."""
    gen = torch.Generator().manual_seed(0)
    cond, text = ar_prompt(ar, args, gen)
    tokens = torch.randint(0, ar.stop_mel_token, (past + args.steps * (args.repeats + 2), batch), generator=gen)
    state = {"t": 0, "out": None}
    if variant == "torch":
        return _torch_steps(ar, cond, text, tokens, batch, past, state, args.steps)
    transformer, tables = variants.transformer(variant)
    start = torch.full((1, 1), ar.start_mel_token)
    _, _, cache = transformer.prompt(tables.prompt(cond, text, start))
    cache = cache.select(torch.zeros(batch, dtype=torch.long), capacity=cache.length + len(tokens))

    def step():
        t = state["t"]
        _, logits = transformer.step(tables.step(tokens[t], 1 + t), cache)
        state["t"], state["out"] = t + 1, logits
    for _ in range(past):  # the codes already decoded (untimed)
        step()
    return (lambda: [step() for _ in range(args.steps)]), lambda: state["out"], transformer.precision


def _torch_steps(ar, cond, text, tokens, batch, past, state, steps):
    from tortoise.models.gpt2 import can_prepack
    start = torch.full((1, 1), ar.start_mel_token)
    prompt = ar.prompt_embeddings(cond, text, start)
    total = prompt.shape[1] + len(tokens)
    small = ar.gpt.new_cache(1, prompt.shape[1], prompt)
    ar.gpt.prefill(prompt, small)
    cache = ar.gpt.new_cache(batch, total, prompt)
    cache.broadcast_from(small, torch.zeros(batch, dtype=torch.long), prompt.shape[1])
    if batch >= 2 and can_prepack():
        ar.gpt.prepack(batch)
    else:
        ar.gpt.unpack()

    def step():
        t = state["t"]
        x = ar._mel_step_embedding(tokens[t], 1 + t)
        state["out"] = ar._final(ar.gpt.step(x, cache, prompt.shape[1] + t)[:, 0])[1]
        state["t"] = t + 1
    for _ in range(past):
        step()
    return (lambda: [step() for _ in range(steps)]), lambda: state["out"], "f32"


def prefill_stage(ar, args, variants, variant):
    cond, text = ar_prompt(ar, args, torch.Generator().manual_seed(1))
    start = torch.full((1, 1), ar.start_mel_token)
    out = {}
    if variant == "torch":
        ar.gpt.unpack()

        def prompt_pass():
            prompt = ar.prompt_embeddings(cond, text, start)
            cache = ar.gpt.new_cache(1, prompt.shape[1], prompt)
            out["r"] = ar._final(ar.gpt.prefill(prompt, cache)[:, -1])[1]
        return prompt_pass, lambda: out["r"], "f32"
    transformer, tables = variants.transformer(variant)
    return (lambda: out.update(r=transformer.prompt(tables.prompt(cond, text, start))[1])), lambda: out["r"], \
        transformer.precision


def latent_stage(ar, args, variants, variant):
    """The latent pass over ``--codes`` codes: the final-normed states the diffusion model is conditioned on."""
    gen = torch.Generator().manual_seed(3)
    cond, text = ar_prompt(ar, args, gen)
    codes = torch.randint(0, ar.stop_mel_token, (1, args.codes), generator=gen)
    out = {}
    if variant == "torch":
        ar.gpt.unpack()
        lengths = torch.tensor([text.shape[1]]), torch.tensor([args.codes * ar.mel_length_compression])
        return (lambda: out.update(r=ar(cond, text, lengths[0], codes, lengths[1], return_latent=True,
                                        clip_inputs=False))), lambda: out["r"], "f32"
    transformer, tables = variants.transformer(variant)

    def latent_pass():
        embeds, first = tables.latent(cond, text, codes)
        out["r"] = transformer.latents(embeds)[:, first:first + args.codes]
    return latent_pass, lambda: out["r"], transformer.precision


def codes_stage(ar, args, variants, variant):
    """``--codes`` codes sampled from one seed by the shared decode loop, on torch or on the variant's graph."""
    if variant == "ort-int8":
        raise Skip("the quantized graph has no decoder object (ar_step / prefill / latent only)")
    cond, text = ar_prompt(ar, args, torch.Generator().manual_seed(4))
    net = ar
    if variant != "torch":
        from tortoise.backends import load as load_graphs
        net = load_graphs("autoregressive", args.models_dir, variants.runtime(variant),
                          export_dir=args.export_dir)
    net.post_init_gpt2_config(kv_cache=True)
    out = {}

    def sample():
        torch.manual_seed(0)
        out["r"] = net.inference_speech(cond, text, max_generate_length=args.codes, do_sample=True, top_p=0.8,
                                        temperature=0.8)[:, :args.codes]
    precision = "f32" if variant == "torch" else net.graphs.transformer()[0].precision
    return sample, lambda: out["r"], precision


def graph_stage(component, net, reference, inputs, variants, variant):
    """A single-graph stage: torch ``reference(**inputs)`` vs the graph's first output."""
    out = {}
    if variant == "torch":
        return (lambda: out.update(r=reference(inputs))), lambda: out["r"], "f32"
    runner = variants.runner(component, variant)
    return (lambda: out.update(r=runner.run(inputs)[0])), lambda: out["r"], runner.precision


def stage_inputs(stage, args):
    """-> (component, network, reference function, inputs) of a single-graph stage."""
    from tortoise.utils.diffusion import output_length
    gen = torch.Generator().manual_seed(2)
    codes = round(args.frames * 22050 / (4 * 24000))
    while output_length(codes) < args.frames:
        codes += 1
    if stage == "diffusion":
        net = load("diffusion", args)
        x = {"x": torch.randn(1, 100, args.frames, generator=gen), "timesteps": torch.tensor([500.0]),
             "code_emb": torch.randn(1, net.model_channels, args.frames, generator=gen)}
        return "diffusion_step", net, lambda i: net.forward_guided(
            i["x"], i["timesteps"], precomputed_aligned_embeddings=i["code_emb"])[0], x
    if stage == "univnet":
        net = load("vocoder", args)
        x = {"mel": torch.randn(1, 100, args.frames, generator=gen) - 5,
             "z": torch.randn(1, net.noise_dim, args.frames + 10, generator=gen)}
        return "univnet", net, lambda i: net.inference(i["mel"], i["z"]), x
    if stage == "bigvgan_base":
        net = load("bigvgan_base", args)
        return "bigvgan_base", net, lambda i: net(i["mel"]).clamp(-1, 1), {
            "mel": torch.randn(1, 100, args.frames, generator=gen) - 5}
    net = load("hifidecoder", args)
    x = {"latents": torch.randn(1, codes, net.conv_pre.in_channels, generator=gen),
         "cond_latent": torch.randn(1, net.cond_layer.in_channels, generator=gen)}
    return "hifigan", net, lambda i: net.inference(i["latents"], i["cond_latent"]), x


# ---------------------------------------------------------------------------------------------------------------
def run_stage(label, make, variants, args, ar_only):
    """Time every variant of one stage and print its rows; -> the number of variants that failed."""
    failed = 0
    torch_out, torch_time = None, None
    for variant in args.variants:
        reason = variants.available(variant, ar_only) if variant != "torch" else None
        if reason:
            print(f"{label:<18}{variant:<10}{'':>10}  skipped: {reason}", flush=True)
            continue
        try:
            try:
                run, output, precision = make(variant)
            except Skip as e:
                print(f"{label:<18}{variant:<10}{'':>10}  skipped: {e}", flush=True)
                continue
            with torch.no_grad():
                run()  # warm-up (first-call allocations, OpenVINO's lazy init)
                wall, cpu = median_wall_cpu(lambda: run(), args.repeats)
        except Exception as e:  # noqa: BLE001 - one variant failing must not hide the others
            print(f"{label:<18}{variant:<10}{'':>10}  failed: {type(e).__name__}: {' '.join(str(e).split())[:150]}",
                  flush=True)
            failed += 1
            continue
        per = args.steps if label.startswith("ar_step") else 1
        wall, cpu = wall / per, cpu / per
        out = output()
        if variant == "torch":
            torch_out, torch_time = out, wall
        ratio = f"{wall / torch_time:.2f}" if torch_time else "-"
        diff = difference(out, torch_out) if torch_out is not None and variant != "torch" else "-"
        print(f"{label:<18}{variant:<10}{precision:>10}{wall:>10.4f}{cpu:>10.4f}{ratio:>9} {diff:>10}", flush=True)
    return failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models_dir", required=True, help="checkpoints (make_test_models --size full for the real "
                                                        "benchmark; tiny for a quick check)")
    ap.add_argument("--export_dir", help="graph cache (default: <models_dir>/exported)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batches", default="1,16", help="AR decode-step batch sizes")
    ap.add_argument("--text_tokens", type=int, default=100)
    ap.add_argument("--past", default="100", help="codes decoded before the timed steps (a comma list: one row each)")
    ap.add_argument("--steps", type=int, default=8, help="chained decode steps per timed call")
    ap.add_argument("--codes", type=int, default=250, help="codes of the latent pass and of the sampled codes")
    ap.add_argument("--frames", type=int, default=1088, help="mel frames for diffusion and the vocoders")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="threads for every runtime (0: each one's default)")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset of the exported graphs (23: the Attention, "
                                                          "LayerNormalization and Gelu ops instead of their parts)")
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} cpu={cpu_model()} repeats={args.repeats} "
          f"models={args.models_dir}")
    print(f"{'stage':<18}{'variant':<10}{'precision':>10}{'wall s':>10}{'cpu s':>10}{'x torch':>9}{'max diff':>11}")
    variants = Variants(args)
    stages = args.stages.split(",")
    failed = 0
    with torch.no_grad():
        if set(stages) & set(AR_STAGES):
            ar = args.ar = load("autoregressive", args)
            for batch in (int(b) for b in args.batches.split(",")) if "ar_step" in stages else ():
                for past in (int(p) for p in args.past.split(",")):
                    failed += run_stage(f"ar_step b{batch} @{past}",
                                        lambda v, b=batch, p=past: ar_step_stage(ar, b, p, args, variants, v),
                                        variants, args, True)
            if "prefill" in stages:
                failed += run_stage("prefill", lambda v: prefill_stage(ar, args, variants, v), variants, args, True)
            if "latent" in stages:
                failed += run_stage("latent", lambda v: latent_stage(ar, args, variants, v), variants, args, True)
            if "codes" in stages:
                failed += run_stage("codes", lambda v: codes_stage(ar, args, variants, v), variants, args, True)
            del ar, args.ar
        for stage in (s for s in stages if s not in AR_STAGES):
            try:
                component, net, reference, inputs = stage_inputs(stage, args)
            except Exception as e:  # noqa: BLE001 - e.g. no BigVGAN directory
                print(f"{stage:<14}skipped: {' '.join(str(e).split())[:150]}")
                continue
            failed += run_stage(stage, lambda v: graph_stage(component, net, reference, inputs, variants, v),
                                variants, args, False)
    if failed:
        print(f"{failed} variant(s) failed (the rows above say why)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
