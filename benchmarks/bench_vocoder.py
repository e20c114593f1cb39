"""Vocoder timings on full-size random-weight models, CPU fp32: UnivNet, BigVGAN base and the HiFi-GAN decoder.

    python3 benchmarks/bench_vocoder.py                                 # ours
    /work/origenv/bin/python benchmarks/bench_vocoder.py --impl original  # tortoise-tts 3.0.0 (UnivNet, HiFi-GAN)

For each model and mel length: median seconds over --repeats runs (after one short warm-up), real-time factor
(seconds / seconds of audio; below 1 is faster than real time), process CPU seconds (all threads: on a shared,
busy machine a steadier comparison than wall time), and GFLOP/s from torch's FLOP counter (convolutions
and matmuls, counted once on a short input and scaled by length: every network here is linear in length).
HiFi-GAN runs on the GPT-latent length that gives the same audio: 200 codes -> 870 frames, 250 codes -> 1088 frames.
The original HiFi-GAN's ``inference`` hard-codes a move to "cuda", so for it the same latent interpolation is done here
and ``forward`` is timed; the original keeps weight norm live in HiFi-GAN (as its api_fast does) and removes it in
UnivNet (``eval(inference=True)``).
"""
import argparse

import torch
import torch.nn.functional as F
from timing import median_wall_cpu  # benchmarks/timing.py

SAMPLE_RATE, HOP = 24000, 256
CODES_FOR_FRAMES = {870: 200, 1088: 250}      # codes * 4 * 24000 // 22050 == frames
HIFI_KWARGS = dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                   resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                   upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2], cond_channels=1024)


def codes_for(frames):
    return CODES_FOR_FRAMES.get(frames, round(frames * 22050 / (4 * 24000)))


def build(name, impl):
    """A full-size random-weight model and a function frames -> (run callable)."""
    torch.manual_seed(0)
    if name == "univnet":
        from tortoise.models.vocoder import UnivNetGenerator
        model = UnivNetGenerator()
        model.eval(inference=True)
        return lambda frames: _univnet_input(model, frames)
    if name == "hifigan":
        from tortoise.models.hifigan_decoder import HifiganGenerator
        model = HifiganGenerator(**HIFI_KWARGS).eval()
        return lambda frames: _hifigan_input(model, frames, impl)
    if name == "bigvgan_base":
        if impl == "original":
            return None
        from tortoise.models.bigvgan import BigVGAN
        from tortoise.models.vocoder import BIGVGAN_BASE_24KHZ_100BAND
        model = BigVGAN(BIGVGAN_BASE_24KHZ_100BAND).eval()
        return lambda frames: (lambda mel=torch.randn(1, 100, frames) - 5: model(mel))
    raise ValueError(f"unknown model {name!r}; choose univnet, hifigan, bigvgan_base")


def _univnet_input(model, frames):
    mel = torch.randn(1, 100, frames) - 5
    return lambda: model.inference(mel)


def _hifigan_input(model, frames, impl):
    latents, g = torch.randn(1, codes_for(frames), 1024), torch.randn(1, 1024)
    if impl == "ours":
        return lambda: model.inference(latents, g)

    def original():  # the original inference's ops, minus its .to("cuda")
        up = F.interpolate(latents.transpose(1, 2), scale_factor=[1024 / 256], mode="linear")
        up = F.interpolate(up, scale_factor=[24000 / 22050], mode="linear")
        return model(up, g.unsqueeze(0).transpose(1, 2))
    return original


def gflop_per_frame(make_run, frames=64):
    from torch.utils.flop_counter import FlopCounterMode
    run = make_run(frames)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9 / frames


def measure(make_run, frames, repeats):
    """Median wall seconds and median process CPU seconds (all threads; less sensitive to a busy machine)."""
    run = make_run(frames)
    with torch.no_grad():
        return median_wall_cpu(run, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["ours", "original"], default="ours")
    parser.add_argument("--models", default="univnet,bigvgan_base,hifigan")
    parser.add_argument("--frames", default="870,1088")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import tortoise
    is_ours = hasattr(tortoise, "__version__")  # the original package's __init__ is empty
    if is_ours != (args.impl == "ours"):
        raise SystemExit(f"--impl {args.impl} but this interpreter imports the "
                         f"{'ours' if is_ours else 'original'} tortoise; run the original with "
                         f"/work/origenv/bin/python, ours with python3")
    print(f"impl={args.impl} torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'model':<14}{'frames':>7}{'audio s':>9}{'seconds':>9}{'cpu s':>8}{'RTF':>7}{'GFLOP':>8}{'GFLOP/s':>9}")
    for name in args.models.split(","):
        make_run = build(name, args.impl)
        if make_run is None:
            print(f"{name:<14}  (not in the original implementation)")
            continue
        with torch.no_grad():
            make_run(32)()  # warm-up
        per_frame = gflop_per_frame(make_run)
        for frames in (int(f) for f in args.frames.split(",")):
            seconds, cpu = measure(make_run, frames, args.repeats)
            audio = frames * HOP / SAMPLE_RATE
            gflop = per_frame * frames
            print(f"{name:<14}{frames:>7}{audio:>9.2f}{seconds:>9.2f}{cpu:>8.2f}{seconds / audio:>7.3f}{gflop:>8.1f}"
                  f"{gflop / seconds:>9.1f}", flush=True)
        del make_run


if __name__ == "__main__":
    main()
