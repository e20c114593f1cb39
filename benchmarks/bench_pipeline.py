"""End-to-end pipeline timings on random-weight checkpoints, ours or the original, stage by stage.

    python -m tortoise.utils.make_test_models /tmp/full --size full         # once: ~4.5 GB of random weights
    python3 benchmarks/bench_pipeline.py --models_dir /tmp/full                # ours: ultra_fast, original_ultra_fast
    /work/origenv/bin/python benchmarks/bench_pipeline.py --impl original --models_dir /tmp/full
    python3 benchmarks/bench_pipeline.py --impl both --models_dir /tmp/full   # both (the original as a subprocess)

One 70-character sentence, two 6 s synthetic reference clips, k = 1. The generation length is fixed so both
implementations do the same work with random weights: the stop token is masked until ``--codes`` codes, then forced
(``max_mel_tokens`` stays 500, so the original pads to 500 for CLVP and the latent pass, as it does in real use).
Stages: conditioning latents, AR sampling, CLVP ranking, latent pass, diffusion, vocoder, then the total of the
whole ``tts_with_preset`` call (the rest is glue). Medians over ``--repeats``. Presets: ours take any name of
``tortoise.api.PRESETS`` (``original_ultra_fast`` is the original's ``ultra_fast`` run by this implementation); the
original takes its own names (``ultra_fast`` = 16 samples, 30 ``p`` steps, no guidance).
Full size holds the AR, CLVP, diffusion and vocoder models at once (~4 GB fp32): run one benchmark at a time.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

TEXT = "The old lighthouse keeper watched the storm roll in over the cold bay."  # 70 characters
STAGES = ("conditioning", "ar_sampling", "clvp", "latent_pass", "diffusion", "vocoder")
STOP_TOKEN = 8193


def synthetic_clips(seconds=6.0, sr=22050):
    out = []
    for i, f0 in enumerate((180.0, 230.0)):
        t = torch.arange(int(sr * seconds)) / sr
        g = torch.Generator().manual_seed(i)
        out.append((0.3 * torch.sin(2 * torch.pi * f0 * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t))
                    + 0.01 * torch.randn(t.shape[0], generator=g))[None])
    return out


def peak_rss_gib(reset=False):
    """This process's peak resident memory (VmHWM) in GiB; ``reset``: start a new peak from here (Linux's
    ``clear_refs`` 5), so each stage's own peak can be read. None where /proc does not say."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib / 2 ** 20
    except (OSError, StopIteration, ValueError):
        return None


class StageTimer:
    """Accumulates wall time per stage, and each stage's peak resident memory, by wrapping callables on objects or
    modules."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.times = {s: 0.0 for s in STAGES}
        self.peaks = {s: 0.0 for s in STAGES}

    def wrap(self, owner, name, stage):
        fn = getattr(owner, name)

        def timed(*a, **kw):
            peak_rss_gib(reset=True)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.times[stage] += time.perf_counter() - t0
                self.peaks[stage] = max(self.peaks[stage], peak_rss_gib() or 0.0)
        setattr(owner, name, timed)


def fix_length(ar, codes):
    """Mask the stop token until ``codes`` codes are drawn, then force it: every sample is exactly that long.
    Works for both implementations: each decode step calls ``mel_head`` once (the prefill's last position too); ours
    on graph backends has no ``mel_head``, so there the logits of its prompt pass and of each step are edited.
    -> the state dict (``state["codes"]`` may be changed, e.g. for a short warm-up)."""
    state = {"step": 0, "codes": codes}

    def edit(out):
        if state["step"] < state["codes"]:
            out[..., STOP_TOKEN] = -float("inf")
        else:
            keep = out[..., STOP_TOKEN].clone()
            out.fill_(-float("inf"))
            out[..., STOP_TOKEN] = keep
        state["step"] += 1
        return out

    if hasattr(ar, "mel_head"):  # torch (ours and the original): every step's logits come from mel_head
        start = "prefill" if hasattr(ar, "prefill") else "inference_speech"  # ours decodes from prefill
        real = getattr(ar, start)
        ar.mel_head.register_forward_hook(lambda _module, _inputs, out: edit(out))

        def restart(*a, **kw):
            state["step"] = 0
            return real(*a, **kw)
        setattr(ar, start, restart)
    else:  # graphs: the logits the decode loop gets from the prompt pass and from each step (decoding.Decoder)
        real_encode, real_feed = ar.encode_prompt, ar.feed

        def encode_prompt(plan, decode):
            state["step"] = 0
            real_encode(plan, decode)
            edit(decode.logits)

        def feed(decode, tokens, mel_pos):
            logits, latent = real_feed(decode, tokens, mel_pos)
            return edit(logits), latent
        ar.encode_prompt, ar.feed = encode_prompt, feed
    return state


def timed_original(tts, api_module, codes):
    """Fix the generation length and time each stage of the original's TextToSpeech."""
    timer = StageTimer()
    fix_length(tts.autoregressive, codes)
    timer.wrap(tts, "get_conditioning_latents", "conditioning")
    timer.wrap(tts.autoregressive, "inference_speech", "ar_sampling")
    timer.wrap(tts.clvp, "forward", "clvp")
    timer.wrap(tts.autoregressive, "forward", "latent_pass")
    timer.wrap(api_module, "do_spectrogram_diffusion", "diffusion")
    timer.wrap(tts.vocoder, "inference", "vocoder")
    return tts, timer, tts.autoregressive_batch_size


def timed_ours(tts, codes):
    """Fix the generation length and time each of our pipeline's stage functions."""
    from tortoise import pipeline
    timer = StageTimer()
    length = fix_length(tts.autoregressive, codes)
    if tts.backend != "torch":  # untimed: export / verify the graphs on first use and open their sessions
        length["codes"] = 2
        with torch.no_grad():
            tts.tts_with_preset(TEXT, preset="ultra_fast", voice_samples=synthetic_clips(), k=1, verbose=False,
                                num_autoregressive_samples=tts.autoregressive_batch_size, diffusion_iterations=2)
        length["codes"] = codes
    for fn, stage in (("condition", "conditioning"), ("sample_codes", "ar_sampling"), ("rank", "clvp"),
                      ("ar_latents", "latent_pass"), ("diffuse", "diffusion"), ("vocode", "vocoder")):
        timer.wrap(pipeline, fn, stage)
    return tts, timer, tts.autoregressive_batch_size


def build_ours(args):
    from tortoise import api
    tts = api.TextToSpeech(models_dir=args.models_dir, device=args.device, enable_redaction=False,
                           autoregressive_batch_size=args.batch_size, half=args.half, dtype=args.dtype,
                           backend=args.backend, backend_precision=args.backend_precision)
    return timed_ours(tts, args.codes)


def build_original(args):
    import importlib.util
    if importlib.util.find_spec("tortoise.models.gpt2") is not None:  # a module only this implementation has
        raise SystemExit("--impl original must run in the original's environment (/work/origenv/bin/python)")
    import tortoise.api as oapi
    # Our checkpoint directories hold plain files; the original looks them up in a hub cache layout.
    oapi.get_model_path = lambda name, models_dir=None: os.path.join(args.models_dir, name)
    tts = oapi.TextToSpeech(autoregressive_batch_size=args.batch_size, models_dir=args.models_dir,
                            enable_redaction=False, kv_cache=True, half=args.half)
    return timed_original(tts, oapi, args.codes)


def overrides(args):
    out = {}
    if args.samples:
        out["num_autoregressive_samples"] = args.samples
    if args.steps:
        out["diffusion_iterations"] = args.steps
    return out


def run_impl(args):
    assert len(TEXT) == 70
    torch.manual_seed(0)
    tts, timer, batch = (build_ours if args.impl == "ours" else build_original)(args)
    clips = synthetic_clips()
    rows = []
    for preset in args.presets:
        runs = []
        for r in range(args.repeats):
            if hasattr(tts, "_latent_cache"):  # time the voice's encoding every repeat, as the original does
                tts._latent_cache = type(tts._latent_cache)(tts._latent_cache.size)
            timer.reset()
            t0 = time.perf_counter()
            with torch.no_grad():
                wav = tts.tts_with_preset(TEXT, preset=preset, voice_samples=clips, k=1, verbose=False,
                                          use_deterministic_seed=r, max_mel_tokens=500, **overrides(args))
            total = time.perf_counter() - t0
            peaks = {f"rss_{s}": timer.peaks[s] for s in STAGES}
            runs.append(dict(timer.times, total=total, audio_s=wav.shape[-1] / 24000, **peaks,
                             rss_peak=max(list(peaks.values()) + [peak_rss_gib() or 0.0])))
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        med["other"] = med["total"] - sum(med[s] for s in STAGES)
        impl = args.impl if getattr(args, "backend", "torch") == "torch" else f"ours-{args.backend}"
        rows.append({"impl": impl, "preset": preset, "batch": batch, "codes": args.codes, **med})
    return rows


def print_table(rows):
    cols = list(STAGES) + ["other", "total"]
    print(f"{'impl':17} {'preset':20} {'batch':>5} " + " ".join(f"{c:>12}" for c in cols) + f" {'RTF':>7}")
    for r in rows:
        rtf = r["total"] / max(r["audio_s"], 1e-9)
        print(f"{r['impl']:17} {r['preset']:20} {r['batch']:>5} " + " ".join(f"{r[c]:>11.2f}s" for c in cols)
              + f" {rtf:>7.1f}")
        if r.get("rss_peak"):  # each stage's peak resident memory, then the whole call's
            print(f"{'  peak RSS GiB':43} " + " ".join(f"{r.get('rss_' + c, 0.0):>12.2f}" for c in STAGES)
                  + f" {'':>12} {r['rss_peak']:>12.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("ours", "original", "both"), default="ours")
    p.add_argument("--models_dir", required=True, help="checkpoints (make_test_models --size full)")
    p.add_argument("--presets", nargs="+", default=None,
                   help="ours: ultra_fast original_ultra_fast (default); original: ultra_fast")
    p.add_argument("--codes", type=int, default=250, help="fixed AR output length in codes (250 -> 1088 frames)")
    p.add_argument("--batch_size", type=int, default=16, help="AR batch size (the original's best setting: 16)")
    p.add_argument("--samples", type=int, default=None, help="override num_autoregressive_samples (quick checks)")
    p.add_argument("--steps", type=int, default=None, help="override diffusion_iterations (quick checks)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu", help="ours only; the original picks cuda if present")
    p.add_argument("--half", action="store_true", help="the device's half dtype (ours: none on a CPU without bf16)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="ours only: force this dtype for the half-tolerant networks (e.g. bf16 on any CPU)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "openvino"),
                   help="ours: run the networks as exported graphs (exported and verified on first use, untimed)")
    p.add_argument("--backend_precision", default=None,
                   help="ours, on a graph backend: f32 / bf16 / f16 (default f32; with --half the device's half)")
    p.add_argument("--json", action="store_true", help="print rows as JSON lines (the driver reads these)")
    p.add_argument("--original_python", default="/work/origenv/bin/python")
    args = p.parse_args()

    if args.impl == "both":
        rows = []
        for impl in ("ours", "original"):
            cmd = [sys.executable if impl == "ours" else args.original_python, os.path.abspath(__file__),
                   "--impl", impl, "--json"] + _forward_args(args, impl)
            env = dict(os.environ)
            if impl == "original":  # the original must import its own tortoise, never this checkout's
                env.pop("PYTHONPATH", None)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                                 cwd=os.path.dirname(os.path.abspath(__file__))).stdout
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        print_table(rows)
        return
    if args.presets is None:
        args.presets = ["ultra_fast", "original_ultra_fast"] if args.impl == "ours" else ["ultra_fast"]
    rows = run_impl(args)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print_table(rows)


def _forward_args(args, impl):
    out = ["--models_dir", args.models_dir, "--codes", str(args.codes), "--batch_size", str(args.batch_size),
           "--repeats", str(args.repeats)]
    if args.samples:
        out += ["--samples", str(args.samples)]
    if args.steps:
        out += ["--steps", str(args.steps)]
    if args.half:
        out.append("--half")
    if args.presets:
        out += ["--presets", *args.presets]
    if impl == "ours":
        out += ["--device", args.device] + (["--dtype", args.dtype] if args.dtype else [])
        out += ["--backend", args.backend] + (["--backend_precision", args.backend_precision]
                                              if args.backend_precision else [])
    return out


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
