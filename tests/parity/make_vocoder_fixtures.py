"""Parity fixtures for the vocoders from the ORIGINAL implementation (tortoise-tts 3.0.0).

Run with the original's environment (our package is not installed there):

    /work/origenv/bin/python tests/parity/make_vocoder_fixtures.py

Writes, under ``tests/parity/fixtures/vocoder/``:
  univnet.pt   FULL-SIZE UnivNetGenerator() (released config, 14.8M parameters). Its weights are too big to store,
               so the fixture holds a *recipe*: the released-format state-dict keys and shapes in order (weight-normed
               ``weight_g`` / ``weight_v``, as ``vocoder.pth['model_g']``), a seed, and a checksum; ``recipe_weights``
               below regenerates them (the test repeats those few lines). Inputs: a 20-frame mel batch of 2 and the
               noise z; outputs: ``inference(c, z)`` after ``eval(inference=True)``, and ``inference(c)`` after
               ``torch.manual_seed(seed)`` (the noise the original draws itself).
  hifigan.pt   FULL-SIZE HifiganGenerator (released hifidecoder kwargs) by the same recipe, and a TINY one whose
               released-format state dict is stored as written by the original. Inputs: GPT latents (B, T, C) and
               the conditioning latent g (1, C); outputs: ``inference(c, g)`` (the original moves its input to
               "cuda"; here that move is redirected to the CPU, nothing else changes), ``forward`` on raw frames.
  stream.pt    the original's ``TextToSpeech.handle_chunks`` on a sequence of growing decodes (streaming cross-fade).
  bigvgan.pt   only with ``--bigvgan-src DIR``: NVIDIA's own BigVGAN code (the ``bigvgan`` 2.4.1 wheel, unpacked:
               ``pip download --no-deps bigvgan==2.4.1 -d /tmp/w && unzip /tmp/w/bigvgan-*.whl -d DIR``; Tortoise has
               no BigVGAN of its own) on two tiny configs: config, weight-normed state dict as NVIDIA saves it, a mel
               and the output after ``remove_weight_norm()``. Its import of matplotlib (plotting helpers only) is
               stubbed out.
Deterministic: re-running produces the same tensors.
"""
import argparse
import os
import sys
import types

import torch

from weight_recipe import checksum, recipe_weights  # this directory: shared with the tests
from tortoise.models.hifigan_decoder import HifiganGenerator
from tortoise.models.vocoder import UnivNetGenerator

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vocoder")

HIFI_RELEASED = dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                     resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                     upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2], cond_channels=1024)
HIFI_TINY = dict(HIFI_RELEASED, in_channels=64, cond_channels=64, upsample_initial_channel=32)


class _CudaToCpu:
    """Redirect ``Tensor.to("cuda")`` to the CPU (the original's HifiganGenerator.inference hard-codes "cuda")."""

    def __enter__(self):
        self._to = torch.Tensor.to
        orig = self._to

        def to(t, *args, **kwargs):
            if args and args[0] == "cuda":
                args = ("cpu",) + args[1:]
            return orig(t, *args, **kwargs)

        torch.Tensor.to = to

    def __exit__(self, *exc):
        torch.Tensor.to = self._to


def make_univnet():
    seed = 1234
    model = UnivNetGenerator()
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    sd = recipe_weights(keys, seed)
    model.load_state_dict(sd, strict=True)
    model.eval(inference=True)
    gen = torch.Generator().manual_seed(7)
    c = torch.randn(2, 100, 20, generator=gen) * 2.0 - 6.0             # log-mel-like values
    z = torch.randn(2, 64, 30, generator=gen)                          # 20 frames + the 10 padding frames
    with torch.no_grad():
        out = model.inference(c, z)
        torch.manual_seed(seed)
        out_own_noise = model.inference(c)
    return dict(keys=keys, seed=seed, checksum=checksum(sd), c=c, z=z, out=out, noise_seed=seed,
                out_own_noise=out_own_noise)


def _hifi_case(config, sd, codes, batch, seed):
    model = HifiganGenerator(**config).eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, codes, config["in_channels"], generator=gen)
    g = torch.randn(1, config["cond_channels"], generator=gen)
    frames = torch.randn(batch, config["in_channels"], 9, generator=gen)
    with torch.no_grad(), _CudaToCpu():
        out = model.inference(latents, g)
        out_forward = model(frames, g.unsqueeze(0).transpose(1, 2))
    return dict(config=config, latents=latents, g=g, out=out, frames=frames, out_forward=out_forward)


def make_hifigan():
    full_keys = [[k, list(v.shape)] for k, v in HifiganGenerator(**HIFI_RELEASED).state_dict().items()]
    full_sd = recipe_weights(full_keys, 4321)
    full = _hifi_case(HIFI_RELEASED, full_sd, codes=6, batch=1, seed=11)
    full.update(keys=full_keys, seed=4321, checksum=checksum(full_sd))
    tiny_keys = [[k, list(v.shape)] for k, v in HifiganGenerator(**HIFI_TINY).state_dict().items()]
    tiny_sd = recipe_weights(tiny_keys, 99)
    tiny = _hifi_case(HIFI_TINY, tiny_sd, codes=5, batch=2, seed=12)
    tiny.update(state_dict=tiny_sd)
    return dict(full=full, tiny=tiny)


def make_stream():
    from tortoise.api_fast import TextToSpeech
    gen = torch.Generator().manual_seed(5)
    overlap = 64
    lengths = [1024, 1536, 2304, 2304 + 512]
    wav_full = torch.randn(lengths[-1], generator=gen)
    decodes, chunks = [], []
    prev, tail = None, None
    for n in lengths:
        # each decode re-renders everything so far: its prefix drifts a little from the previous decode
        wav = wav_full[:n] + 0.01 * torch.randn(n, generator=gen)
        decodes.append(wav.clone())
        chunk, prev, tail = TextToSpeech.handle_chunks(None, wav, prev, tail, overlap)
        chunks.append(chunk.clone())
    return dict(overlap=overlap, decodes=decodes, chunks=chunks)


BIGVGAN_BASE = dict(resblock="1", upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
                    upsample_initial_channel=512, resblock_kernel_sizes=[3, 7, 11],
                    resblock_dilation_sizes=[[1, 3, 5]] * 3, activation="snakebeta", snake_logscale=True, num_mels=100,
                    n_fft=1024, hop_size=256, win_size=1024, sampling_rate=24000, fmin=0, fmax=12000)
BIGVGAN_TINY = [dict(BIGVGAN_BASE, upsample_initial_channel=32),
                dict(BIGVGAN_BASE, upsample_initial_channel=16, resblock="2", activation="snake",
                     snake_logscale=False, use_tanh_at_final=False, use_bias_at_final=False)]


def make_bigvgan(src):
    for name in ("matplotlib", "matplotlib.pylab"):
        stub = types.ModuleType(name)
        stub.use = lambda *a, **k: None
        sys.modules.setdefault(name, stub)
    sys.path.insert(0, src)
    from bigvgan.bigvgan import BigVGAN
    from bigvgan.env import AttrDict
    cases = []
    for i, config in enumerate(BIGVGAN_TINY):
        torch.manual_seed(20 + i)
        model = BigVGAN(AttrDict(dict(config)), use_cuda_kernel=False)
        with torch.no_grad():  # trained-looking periodic activations instead of the all-equal initial values
            for n, p in model.named_parameters():
                if n.endswith(("alpha", "beta")):
                    p.copy_(torch.randn_like(p) * 0.3 + (0.0 if config["snake_logscale"] else 1.0))
        state_dict = {k: v.clone() for k, v in model.state_dict().items()}
        model.remove_weight_norm()
        model.eval()
        mel = torch.randn(2, config["num_mels"], 9, generator=torch.Generator().manual_seed(30 + i)) - 4.0
        with torch.no_grad():
            out = model(mel)
        cases.append(dict(config=config, state_dict=state_dict, mel=mel, out=out))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigvgan-src", help="unpacked bigvgan 2.4.1 wheel: also write bigvgan.pt")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.bigvgan_src:
        torch.save(make_bigvgan(args.bigvgan_src), os.path.join(OUT, "bigvgan.pt"))
    torch.save(make_univnet(), os.path.join(OUT, "univnet.pt"))
    torch.save(make_hifigan(), os.path.join(OUT, "hifigan.pt"))
    torch.save(make_stream(), os.path.join(OUT, "stream.pt"))
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
