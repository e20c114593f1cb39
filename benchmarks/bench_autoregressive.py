"""Stage timings of the autoregressive model (UnifiedVoice) at full size with random weights, ours or the original.

    python3 benchmarks/bench_autoregressive.py                                  # ours (eager, fp32)
    python3 benchmarks/bench_autoregressive.py --compile                        # ours, compiled decode step
    python3 benchmarks/bench_autoregressive.py --int8                           # ours, int8 linears (+ drift)
    /work/origenv/bin/python benchmarks/bench_autoregressive.py --impl original # tortoise-tts 3.0.0, kv_cache=True

Both implementations run the same public calls, so the numbers compare like for like:
  cond           get_conditioning on two 6 s clips (1, 2, 80, 517)
  prefill x16    inference_speech(num_return_sequences=16, max_generate_length=1): prompt + one sampled token
  step xB @C     one decode step (forward + the pipeline's sampling filters + multinomial) at batch B, rows sharing
                 a prompt, C positions attended (--context codes already decoded); the original's step is its HF
                 inference model with past_key_values and transformers 4.31's processors, as its sample() loop runs
  latent N       forward(..., return_latent=True, clip_inputs=False) on N codes, batch 1
GFLOP/s counts the matmul work the implementation executes (ours prefills one row and shares it; the original
prefills all 16); GB/s (batch-1 step) counts the fp32 weights and KV cache read once per step. Medians over --repeats.
Full size: ~1.7 GB of weights per process; run one benchmark at a time.
"""
import argparse
import statistics
import sys
import time

import torch

RELEASED = dict(max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30, model_dim=1024,
                heads=16, number_text_tokens=255, start_text_token=255, checkpointing=False,
                train_solo_embeddings=False)
SAMPLING = dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0, length_penalty=1.0)
COND_FRAMES = 517  # 132,300 samples (6 s at 22.05 kHz) / hop 256, centred


def build(impl, args):
    if impl == "original" and "tortoise.models.gpt2" in sys.modules:
        raise SystemExit("--impl original must run in the original's environment (/work/origenv/bin/python)")
    from tortoise.models.autoregressive import UnifiedVoice  # ours or the original, whichever env runs this
    torch.manual_seed(0)
    model = UnifiedVoice(**RELEASED).eval()
    if impl == "ours":
        half = getattr(torch, args.dtype) if args.dtype != "float32" else False
        model.post_init_gpt2_config(kv_cache=True, compile=args.compile, int8=args.int8, half=half)
    else:
        model.post_init_gpt2_config(kv_cache=True)
    return model


# -- FLOP / byte model (d = 1024, L = 30, V = 8194) ----------------------------------------------------------------

def token_flops(context, d=1024, layers=30):
    """Matmul FLOPs to push one token through the stack attending to `context` positions."""
    return layers * (24 * d * d + 4 * context * d)


def sequence_flops(n, d=1024, layers=30):
    """A causal pass over n positions (attention counted for the causal half)."""
    return n * layers * 24 * d * d + layers * 2 * n * n * d


def cond_flops(frames=COND_FRAMES, clips=2, d=1024, blocks=6):
    return clips * (2 * 80 * d * frames + blocks * (8 * d * d * frames + 4 * frames * frames * d))


def weight_bytes(d=1024, layers=30, vocab=8194):
    return 4 * (layers * 12 * d * d + d * vocab)


# -- timing --------------------------------------------------------------------------------------------------------

def timed(fn, repeats, clock=time.perf_counter):
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def step_runner_ours(model, cond, text, context, batch):
    """-> one_step(): a decode step (forward + sampling) of `batch` rows sharing a prompt with `context` mel codes,
    through the model's own decode loop (prefill once, then `step`)."""
    from tortoise.utils.sampling import SamplingOptions, choose_next
    ctx = torch.randint(0, 8192, (1, context))
    state = model.prefill(cond, text, 1, context + 64, input_tokens=ctx)  # one row, not timed
    rows = torch.zeros(batch, dtype=torch.long)
    cache = model.gpt.new_cache(batch, state.cache.length, state.cache.tensors[0])
    cache.broadcast_from(state.cache, rows, state.prompt_len)
    state.cache, state.seen = cache, state.seen[rows].clone()
    state.logits, state.latent = state.logits[rows], state.latent[rows]
    if model._should_prepack(batch, cache.tensors[0]):
        model.gpt.prepack(batch)
    opts = SamplingOptions.from_generate_kwargs(**SAMPLING)

    def one_step():
        token = choose_next(state.logits, state.seen, opts)
        state.seen.scatter_(1, token[:, None], True)
        model.step(state, token)
    return one_step


def step_runner_original(model, cond, text, context, batch):
    """The same step through the original's HF inference model, as transformers 4.31's sample() runs it."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)
    im = model.inference_model
    text_in = torch.nn.functional.pad(torch.nn.functional.pad(text, (0, 1), value=0), (1, 0), value=255)
    emb = torch.cat([cond.unsqueeze(1), model.text_embedding(text_in) + model.text_pos_embedding(text_in)], dim=1)
    im.store_mel_emb(emb)
    ids = torch.ones(1, emb.shape[1] + 1, dtype=torch.long)
    ids[:, -1] = model.start_mel_token
    ids = torch.cat([ids, torch.randint(0, 8192, (1, context))], dim=1)
    out = im(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, return_dict=True)  # not timed
    state = {"ids": ids.repeat(batch, 1), "logits": out.logits[:, -1].repeat(batch, 1),
             "past": tuple((k.repeat(batch, 1, 1, 1), v.repeat(batch, 1, 1, 1)) for k, v in out.past_key_values)}
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(SAMPLING["repetition_penalty"])])
    warpers = LogitsProcessorList([TemperatureLogitsWarper(SAMPLING["temperature"]), TopKLogitsWarper(50),
                                   TopPLogitsWarper(SAMPLING["top_p"])])

    def one_step():
        ids = state["ids"]
        scores = warpers(ids, processors(ids, state["logits"]))
        token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
        ids = torch.cat([ids, token], dim=1)
        inputs = im.prepare_inputs_for_generation(ids, past_key_values=state["past"],
                                                  attention_mask=torch.ones_like(ids), use_cache=True)
        out = im(**inputs, return_dict=True)
        state.update(ids=ids, logits=out.logits[:, -1], past=out.past_key_values)
    return one_step


def run(model, impl, args, clock):
    torch.manual_seed(1)
    text = torch.randint(1, 255, (1, args.text_tokens))
    mels = torch.randn(1, 2, 80, COND_FRAMES)
    prompt = 1 + args.text_tokens + 2 + 1
    rows = []

    def add(stage, seconds, flops, nbytes=None):
        rows.append((stage, seconds, flops / seconds / 1e9, nbytes / seconds / 1e9 if nbytes else None))
        print(f"  {stage:<18} {seconds:8.3f} s", file=sys.stderr, flush=True)

    with torch.no_grad():
        cond = model.get_conditioning(mels)
        add("cond", timed(lambda: model.get_conditioning(mels), args.repeats, clock), cond_flops())
        # warm-up (one-time work such as our lazy weight prepacking is not a per-call cost)
        model.inference_speech(cond, text, num_return_sequences=2, max_generate_length=1, **SAMPLING)
        prefill_rows = 1 if impl == "ours" else 16
        t = timed(lambda: model.inference_speech(cond, text, num_return_sequences=16, max_generate_length=1,
                                                 **SAMPLING), args.repeats, clock)
        add("prefill x16", t, prefill_rows * sequence_flops(prompt))
        runner = step_runner_ours if impl == "ours" else step_runner_original
        ctx = prompt + args.context + args.steps // 2  # positions attended, mid-run
        for batch in args.batches:
            one_step = runner(model, cond, text, args.context, batch)
            one_step()  # warm-up
            t = timed(one_step, args.steps, clock)
            weights = weight_bytes() // 4 if getattr(args, "int8", False) else weight_bytes()  # int8: 1 byte each
            nbytes = weights + 4 * 2 * 30 * ctx * 1024 * batch if batch == 1 else None
            add(f"step x{batch} @{ctx}", t, batch * token_flops(ctx), nbytes)
        for n in args.latent_codes:
            codes = torch.randint(0, 8192, (1, n))
            t = timed(lambda: model(cond, text, torch.tensor([args.text_tokens]), codes, torch.tensor([n * 1024]),
                                    return_latent=True, clip_inputs=False), args.repeats, clock)
            add(f"latent {n}", t, sequence_flops(1 + args.text_tokens + 2 + n + 2))
    return rows


def int8_drift(model, args):
    """How far int8 moves the latent pass (relative L2) and greedy codes (share of identical tokens) from fp32."""
    torch.manual_seed(2)
    cond, text = torch.randn(1, 1024), torch.randint(1, 255, (1, args.text_tokens))
    codes = torch.randint(0, 8192, (1, 250))
    out = {}
    with torch.no_grad():
        for int8 in (True, False):
            model.post_init_gpt2_config(kv_cache=True, int8=int8)
            out[int8] = (model(cond, text, torch.tensor([args.text_tokens]), codes, torch.tensor([250 * 1024]),
                               return_latent=True, clip_inputs=False),
                         model.inference_speech(cond, text, do_sample=False, max_generate_length=32))
    rel = ((out[True][0] - out[False][0]).norm() / out[False][0].norm()).item()
    width = min(out[True][1].shape[1], out[False][1].shape[1])
    same = (out[True][1][:, :width] == out[False][1][:, :width]).float().mean().item()
    return (f"int8 drift (random weights): latent pass relative L2 {rel:.4f}; greedy codes identical for "
            f"{same:.0%} of {width} tokens")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=["ours", "original"], default="ours")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="decode steps timed per batch size (median)")
    parser.add_argument("--context", type=int, default=200, help="mel codes already decoded when steps are timed")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--latent-codes", type=int, nargs="*", default=[250, 500])
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time (steadier on a shared machine; use with --threads 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile the decode step")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="ours: hold the weights in this dtype (the pipeline's --half); float32 norms and heads")
    parser.add_argument("--int8", action="store_true",
                        help="ours: int8 dynamic quantization of the linears; also prints its drift from fp32")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.impl, args)
    if args.impl == "original" and (args.compile or args.int8 or args.dtype != "float32"):
        raise SystemExit("--compile, --int8 and --dtype are options of our implementation")
    mode = (args.impl + (" compiled" if args.compile else "") + (" int8" if args.int8 else "")
            + (f" {args.dtype} weights" if args.dtype != "float32" else ""))
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"UnifiedVoice full size, random weights, CPU, {torch.get_num_threads()} threads, impl={mode}, "
          f"text {args.text_tokens} tokens, {'CPU' if args.cpu_time else 'wall'} seconds, median of {args.repeats} "
          f"({args.steps} for steps)", flush=True)
    rows = run(model, args.impl, args, clock)
    print(f"{'stage':<18} {'seconds':>9} {'GFLOP/s':>9} {'GB/s':>7}")
    for stage, seconds, gflops, gbs in rows:
        print(f"{stage:<18} {seconds:9.3f} {gflops:9.1f} {'' if gbs is None else f'{gbs:7.1f}'}")
    if args.int8:
        print(int8_drift(model, args))


if __name__ == "__main__":
    main()
