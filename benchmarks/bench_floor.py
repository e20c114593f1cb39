"""Every stage next to this machine's physical floor: memory bandwidth and matmul peaks measured here, then each stage's
time, its floor and the share of the floor it reaches, in fp32, bf16 (``--half``) and the AR's int8 (``--int8``).

    python -m tortoise.utils.make_test_models /tmp/full --size full      # once: released-size random weights
    python3 benchmarks/bench_floor.py --models_dir /tmp/full             # every stage
    python3 benchmarks/bench_floor.py --models_dir /tmp/full --stages ar_step --batches 1

The floor of a run is ``max(bytes read / bandwidth, FLOPs / matmul peak of its dtype)``: the bytes are the network's
weights (plus the KV cache of a decode step), read once; the FLOPs are counted by torch's FlopCounterMode on the same
call (matmuls and convolutions). Bandwidth is the best read rate of a 1 GiB tensor (``sum``); the peaks are the
best rate of a few GEMM shapes the stages use (fp32 and bf16 through ``torch.matmul``, int8 through
``torch._int_mm``). A stage near 100% has nothing left to gain on this machine at this precision. The CPU and
whether it has AVX512-BF16 and AMX are printed first: without native bf16 the bf16 rows are emulated (slow), and so
is their floor.

Stages: ``ar_step`` (one decode step at each ``--batches``, rows sharing a prompt of ``--text_tokens`` tokens after
``--context`` decoded codes, through UnifiedVoice.prefill / step as the pipeline runs it), ``prefill`` (one prompt),
``latent`` (the latent pass over ``--codes`` codes), ``diffusion`` (one guided forward at ``--frames`` frames),
``univnet`` (the vocoder at ``--frames`` frames; vocoders run in fp32 only).
"""
import argparse
import statistics
import sys
import time

import torch
from timing import cpu_model  # benchmarks/timing.py

STAGES = ("ar_step", "prefill", "latent", "diffusion", "univnet")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
GEMMS = ((16, 1024, 4096), (256, 1024, 4096), (2176, 1024, 1024), (2176, 1024, 4096))  # (M, K, N) of the stages


def times_of(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_time(fn, repeats, warmup=1):
    return statistics.median(times_of(fn, repeats, warmup))


def best_time(fn, repeats, warmup=1):
    """The fastest of ``repeats`` calls: what the machine can do (a floor), where a median says what a stage does."""
    return min(times_of(fn, repeats, warmup))


# ---------------------------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------------------------
def machine():
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    flags = [name for name, key in (("AVX2", "avx2"), ("AVX512", "avx512_f"), ("AVX512-BF16", "avx512_bf16"),
                                    ("AMX-BF16", "amx_bf16"), ("AMX-INT8", "amx_int8")) if caps.get(key)]
    return (f"{cpu_model()}; {', '.join(flags) or 'no AVX2'}; threads {torch.get_num_threads()}; "
            f"torch {torch.__version__}")


def bandwidth(repeats):
    """Read bandwidth, bytes/s: the fastest sum of a 1 GiB float32 tensor (far larger than any cache)."""
    x = torch.ones(1 << 28)
    seconds = best_time(lambda: x.sum(), 2 * repeats)
    return x.numel() * 4 / seconds


def matmul_peak(dtype, repeats):
    """FLOP/s: the best of the GEMM shapes in ``GEMMS`` in ``dtype`` (int8: int8 x int8 -> int32)."""
    best = 0.0
    for m, k, n in GEMMS:
        if dtype == torch.int8:
            a = torch.randint(-100, 100, (m, k), dtype=torch.int8)
            b = torch.randint(-100, 100, (k, n), dtype=torch.int8)
            fn = lambda a=a, b=b: torch._int_mm(a, b)  # noqa: E731
        else:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            fn = lambda a=a, b=b: a @ b  # noqa: E731
        try:
            best = max(best, 2 * m * k * n / best_time(fn, 2 * repeats))
        except RuntimeError:  # e.g. no int8 GEMM for this shape on this build
            continue
    return best


# ---------------------------------------------------------------------------------------------------------------
# the stages: each -> (call, bytes it reads once)
# ---------------------------------------------------------------------------------------------------------------
def _bytes(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _ar(args, precision):
    from tortoise.utils import checkpoints
    ar = checkpoints.load_model("autoregressive", models_dir=args.models_dir)
    ar.post_init_gpt2_config(half=torch.bfloat16 if precision == "bf16" else False, kv_cache=True,
                             int8=precision == "int8")
    return ar.requires_grad_(False)  # inference (FlopCounterMode's module tracking trips on grad-requiring outputs)


def _ar_weight_bytes(ar, precision):
    """The bytes a step reads: the GPT stack's linears at their precision (int8: one byte each), the rest as held."""
    if precision != "int8":
        return _bytes(ar.gpt) + _bytes(ar.final_norm) + _bytes(ar.mel_head)
    from tortoise.models.gpt2 import Conv1D
    linear = sum(m.weight.numel() for m in ar.gpt.modules() if isinstance(m, Conv1D))
    return _bytes(ar.gpt) - 3 * linear + _bytes(ar.final_norm) + _bytes(ar.mel_head)


def _ar_prompt(args, precision, seed):
    """The AR model at ``precision`` and a random prompt: (model, conditioning latent, text tokens, generator)."""
    ar = _ar(args, precision)
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, ar.model_dim, generator=gen).to(torch.bfloat16 if precision == "bf16" else torch.float32)
    text = torch.randint(1, ar.number_text_tokens - 1, (1, args.text_tokens), generator=gen)
    return ar, cond, text, gen


def ar_step_stages(args, precision):
    ar, cond, text, gen = _ar_prompt(args, precision, 0)
    for batch in args.batches:
        with torch.no_grad():
            state = ar.prefill(cond, text, batch, args.context + 64)
            tokens = torch.randint(0, ar.stop_mel_token, (args.context + 64, batch), generator=gen)
            for t in range(args.context):
                ar.step(state, tokens[t])
        if ar.gpt.half_plan is not None and batch == args.batches[0]:
            print(f"  {precision} small steps: {ar.gpt.half_plan.describe()}", flush=True)
        queue = iter(tokens[args.context:])
        cache = state.cache.tensors
        cache_bytes = sum(t.numel() * t.element_size() for t in cache) * (args.text_tokens + args.context) \
            // cache[0].shape[2]
        yield f"AR step, batch {batch}", (lambda: ar.step(state, next(queue))), \
            _ar_weight_bytes(ar, precision) + cache_bytes


def prefill_stage(args, precision):
    ar, cond, text, _ = _ar_prompt(args, precision, 1)
    yield f"AR prefill, {args.text_tokens} text tokens", (lambda: ar.prefill(cond, text, 1, 64)), \
        _ar_weight_bytes(ar, precision)


def latent_stage(args, precision):
    ar, cond, text, gen = _ar_prompt(args, precision, 2)
    codes = torch.randint(0, 8192, (1, args.codes), generator=gen)
    call = lambda: ar(cond, text, torch.tensor([args.text_tokens]), codes,  # noqa: E731
                      torch.tensor([args.codes * 1024]), return_latent=True, clip_inputs=False)
    yield f"AR latent pass, {args.codes} codes", call, _ar_weight_bytes(ar, precision)


def diffusion_stage(args, precision):
    from tortoise.utils import checkpoints
    net = checkpoints.load_model("diffusion", models_dir=args.models_dir)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = net.to(dtype).requires_grad_(False)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 100, args.frames, generator=gen).to(dtype)
    emb = torch.randn(1, net.model_channels, args.frames, generator=gen).to(dtype)
    t = torch.tensor([500.0])
    call = lambda: net.forward_guided(x, t, precomputed_aligned_embeddings=emb)  # noqa: E731
    yield f"guided diffusion forward, {args.frames} frames", call, _bytes(net)


def univnet_stage(args, precision):
    from tortoise.utils import checkpoints
    net = checkpoints.load_model("vocoder", models_dir=args.models_dir).requires_grad_(False)
    gen = torch.Generator().manual_seed(4)
    mel = torch.randn(1, 100, args.frames, generator=gen) - 5
    z = torch.randn(1, net.noise_dim, args.frames + 10, generator=gen)
    yield f"UnivNet, {args.frames} frames", (lambda: net.inference(mel, z)), _bytes(net)


MAKERS = {"ar_step": ar_step_stages, "prefill": prefill_stage, "latent": latent_stage, "diffusion": diffusion_stage,
          "univnet": univnet_stage}
PRECISIONS = {"ar_step": ("fp32", "bf16", "int8"), "prefill": ("fp32", "bf16"), "latent": ("fp32", "bf16"),
              "diffusion": ("fp32", "bf16"), "univnet": ("fp32",)}


def flops_of(call):
    """The FLOPs of ``call``. FlopCounterMode sees aten's matmuls, not oneDNN's prepacked or the quantized linears, so
    the AR's linears run on addmm while counting (the same arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tortoise.models.gpt2 import Conv1D
    saved = Conv1D._use_packed, Conv1D._use_int8
    Conv1D._use_packed = Conv1D._use_int8 = lambda self, x2d: False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call()
    finally:
        Conv1D._use_packed, Conv1D._use_int8 = saved
    return counter.get_total_flops()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models_dir", required=True, help="checkpoints (make_test_models --size full)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--precisions", default="fp32,bf16,int8", help="of fp32, bf16 (--half), int8 (--int8, AR only)")
    ap.add_argument("--batches", default="1,4,16", help="AR decode-step batch sizes")
    ap.add_argument("--text_tokens", type=int, default=100)
    ap.add_argument("--context", type=int, default=100, help="codes decoded before a step is timed")
    ap.add_argument("--codes", type=int, default=250, help="codes of the latent pass")
    ap.add_argument("--frames", type=int, default=1088, help="mel frames of diffusion and UnivNet")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batches = [int(b) for b in args.batches.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    precisions = [p for p in args.precisions.split(",") if p]
    bad = [s for s in stages if s not in STAGES] + [p for p in precisions if p not in DTYPES]
    if bad:
        raise SystemExit(f"unknown stage or precision: {', '.join(bad)}")

    print(machine())
    bw = bandwidth(args.repeats)
    peaks = {p: matmul_peak(DTYPES[p], args.repeats) for p in precisions}
    print(f"memory read {bw / 1e9:.1f} GB/s; matmul peak " +
          ", ".join(f"{p} {peaks[p] / 1e9:.0f} GFLOP/s" for p in precisions), flush=True)
    print(f"{'stage':<40}{'prec':<6}{'seconds':>9}{'floor s':>9}{'% floor':>9}  bound   {'GB':>6}{'GFLOP':>9}")
    failed = 0
    for stage in stages:
        for precision in (p for p in PRECISIONS[stage] if p in precisions):
            try:
                for label, call, nbytes in MAKERS[stage](args, precision):
                    flops = flops_of(call)
                    with torch.no_grad():
                        seconds = median_time(call, args.repeats)
                    mem_s, compute_s = nbytes / bw, flops / peaks[precision] if peaks[precision] else 0.0
                    floor = max(mem_s, compute_s)
                    print(f"{label:<40}{precision:<6}{seconds:>9.4f}{floor:>9.4f}{100 * floor / seconds:>8.0f}%  "
                          f"{'memory' if mem_s >= compute_s else 'compute':<8}{nbytes / 1e9:>6.2f}"
                          f"{flops / 1e9:>9.1f}", flush=True)
            except Exception as e:  # noqa: BLE001 - one row per failure, then exit 1
                failed += 1
                print(f"{stage:<40}{precision:<6}  failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}",
                      flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
