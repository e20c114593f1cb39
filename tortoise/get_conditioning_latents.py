"""``tortoise-get-conditioning-latents``: compute a voice's conditioning latents once and save them as a ``.pth``.

The file holds the tuple (autoregressive latent, diffusion latent) as plain tensors; put it alone in a voice directory
to use it as a voice (``tortoise-tts -V DIR -v NAME``), or pass it to ``TextToSpeech.tts(conditioning_latents=...)``.

``--format ggml`` also writes ``NAME.bin``, the voice file tortoise.cpp reads with ``--voice``: the autoregressive
latent's float32 values, no header. tortoise.cpp takes the diffusion latent from its diffusion model file instead:
``tortoise-export --format ggml --voice NAME.pth`` writes it there (see docs/tortoise-cpp.md).
"""
import argparse
import sys
from pathlib import Path

import torch

from tortoise.export.ggml import write_voice
from tortoise.utils.staging import write_atomically


def build_parser():
    p = argparse.ArgumentParser(prog="tortoise-get-conditioning-latents", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--voice", required=True, help="voice name(s); a comma separates several, a&b averages")
    p.add_argument("-V", "--voices_dir", "--voices-dir", default=None,
                   help="directory of voices (one subdirectory per voice); a comma separates several")
    p.add_argument("-O", "--output_path", "--output-path", default="results/conditioning_latents",
                   help="directory for the NAME.pth files")
    p.add_argument("--models_dir", "--models-dir", default=None, help="checkpoint directory")
    p.add_argument("--device", default=None, help="xpu, cuda, mps or cpu (default: automatic)")
    p.add_argument("--latent_averaging_mode", "--latent-averaging-mode", type=int, choices=(0, 1, 2), default=0,
                   help="diffusion conditioning: 0 first 4.27 s of each clip, 1 all chunks, 2 per-clip average")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop of clips longer than 6 s")
    p.add_argument("--overwrite", action="store_true", help="replace latents files that already exist")
    p.add_argument("--format", choices=("pth", "ggml"), default="pth",
                   help="ggml: also NAME.bin, the voice file tortoise.cpp reads (its autoregressive latent)")
    return p


def save_latents(latents, path):
    """Write the (autoregressive, diffusion) pair atomically as CPU tensors loadable with weights_only=True."""
    return write_atomically(path, lambda tmp: torch.save(tuple(t.detach().cpu() for t in latents), tmp))


def run(args):
    from tortoise.api import TextToSpeech
    from tortoise.utils.voices import VoiceError, get_voices, load_voices, parse_voice_selection
    dirs = [d for d in (args.voices_dir or "").split(",") if d]
    groups = parse_voice_selection(args.voice, get_voices(dirs))
    loaded = [(g, *load_voices(g, dirs)) for g in groups]
    for g, clips, _ in loaded:
        if clips is None:
            raise VoiceError(f"voice {'&'.join(g)!r} has no clips to encode (random, or already .pth latents)")
    out = Path(args.output_path)
    targets = [out / f"{'-'.join(g)}.pth" for g, _, _ in loaded]
    voice_files = [t.with_suffix(".bin") for t in targets] if args.format == "ggml" else [None] * len(targets)
    existing = [t for t in targets + voice_files if t is not None and t.exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{existing[0]} already exists: pass --overwrite to replace it or choose another output")
    out.mkdir(parents=True, exist_ok=True)
    tts = TextToSpeech(models_dir=args.models_dir, device=args.device, enable_redaction=False, preload=False)
    for (g, clips, _), target, voice_file in zip(loaded, targets, voice_files):
        tts.deterministic_state(args.seed)
        latents = tts.get_conditioning_latents(clips, latent_averaging_mode=args.latent_averaging_mode)
        check_finite(latents, "&".join(g), tts.models_dir)
        print(save_latents(latents, target))
        if voice_file is not None:
            print(write_voice(voice_file, latents[0], overwrite=args.overwrite))
    return 0


class NonFiniteLatents(RuntimeError):
    """The models turned finite clips into NaN or infinite latents (a run-time failure: nothing is saved)."""


def check_finite(latents, voice, models_dir):
    for what, t in zip(("autoregressive", "diffusion"), latents):
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteLatents(f"the {what} latent computed for voice {voice!r} holds NaN or infinite values, so "
                                   f"nothing was saved; the clips were finite, so the checkpoints in {models_dir} "
                                   "are likely damaged: download them again (or try --device cpu)")


def main(argv=None):
    """Console entry point; exit codes as in :mod:`tortoise.utils.errors` (2 bad input, 1 failure at run time)."""
    from tortoise.utils.errors import report
    args = build_parser().parse_args(argv)  # bad arguments: argparse exits 2
    try:
        return run(args)
    except (KeyboardInterrupt, Exception) as e:
        return report("tortoise-get-conditioning-latents", e)


if __name__ == "__main__":
    sys.exit(main())
