"""The ``tortoise-tts`` command: text (argument or stdin) -> 24 kHz wav files, clip by clip, in one or more voices.

A thin shell over :mod:`tortoise.api`: it parses arguments, loads voices, splits long text into sentences, calls
``TextToSpeech`` per clip and writes every file atomically. Clips are ``{voice}_{idx:02d}_{cand:02d}.wav`` in the
output directory, then ``{voice}_combined.wav`` (the first candidate of every clip, in order). ``--skip_existing``
resumes an interrupted run; ``--regenerate 3,7`` redoes only those clips. Bad input exits non-zero with one line.
"""
import argparse
import os
import random
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
OUTPUT_SAMPLE_RATE = 24000
VOCODER_CHOICES = ("auto", "univnet", "bigvgan_base", "bigvgan")
TUNING = (  # (flag, type, help): each overrides the preset's value when given
    ("num_autoregressive_samples", int, "samples drawn from the autoregressive model and ranked by CLVP"),
    ("temperature", float, "softmax temperature of the autoregressive model"),
    ("length_penalty", float, "length penalty of the autoregressive decoder"),
    ("repetition_penalty", float, "penalty against repetition (long silences, 'uhhh')"),
    ("top_p", float, "nucleus sampling P in (0, 1]; lower is more 'likely' and duller"),
    ("max_mel_tokens", int, "maximum output length in codes (1..600, 1/20 s each)"),
    ("cvvp_amount", float, "weight of the CVVP model in ranking candidates, 0..1 (0 disables it)"),
    ("diffusion_iterations", int, "diffusion steps (--steps is the same)"),
    ("cond_free", "bool", "conditioning-free (guided) diffusion: true/false"),
    ("cond_free_k", float, "strength of conditioning-free guidance"),
    ("diffusion_temperature", float, "variance of the diffusion noise, 0..1"),
)


class UsageError(Exception):
    """Bad command-line input; the message says what is wrong and how to fix it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def _bool(value):
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _flag(name):
    """``--a_b`` plus its dashed spelling ``--a-b``."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    return flags


def build_parser():
    from tortoise.api import PRESETS, SAMPLERS
    p = _Parser(prog="tortoise-tts", description="Tortoise text to speech: speak text in a voice, clip by clip.",
                epilog="Examples:  tortoise-tts -v random -o hello.wav \"Hello, how are you?\"   |   "
                       "echo \"Say it like you mean it!\" | tortoise-tts -V my_voices -v alice   |   "
                       "tortoise-tts -O out -v alice,bob --candidates 3 < story.txt")
    g = p.add_argument_group("general")
    g.add_argument("text", nargs="*", help="text to speak; read from stdin when omitted")
    g.add_argument("-t", "--text", dest="text_option", default=None,
                   help="text to speak (the original's --text; same as the positional text)")
    g.add_argument("-v", *_flag("voice"), default="random",
                   help="voice: a name, 'random', 'a&b' (averaged), 'a,b' (each in turn) or 'all'")
    g.add_argument("-V", *_flag("voices_dir"), default=None,
                   help="directory of voices (one subdirectory per voice); a comma separates several")
    g.add_argument("-p", *_flag("preset"), default="fast", choices=list(PRESETS), help="quality/speed preset")
    g.add_argument("-q", *_flag("quiet"), action="store_true", help="print nothing but errors")
    g.add_argument(*_flag("encoding"), default="utf-8",
                   help="encoding of text piped on stdin (default utf-8; e.g. cp1252, latin-1); undecodable input "
                        "is refused, never dropped")
    o = p.add_argument_group("output")
    o.add_argument("-l", *_flag("list_voices"), action="store_true", help="list the available voices and exit")
    o.add_argument("-o", *_flag("output"), default=None, help="also write the combined audio to this file")
    o.add_argument("-O", *_flag("output_dir"), default="results", help="directory for the clips (default: results)")
    m = p.add_argument_group("multiple outputs")
    m.add_argument(*_flag("candidates"), type=int, default=1, help="candidates per clip (best first)")
    m.add_argument(*_flag("regenerate"), default=None, help="comma-separated clip numbers to render again, e.g. 3,7")
    m.add_argument(*_flag("skip_existing"), action="store_true", help="keep clips already written (resume a run)")
    m.add_argument(*_flag("overwrite"), action="store_true",
                   help="replace files of an earlier run in the output directory (refused otherwise)")
    a = p.add_argument_group("advanced")
    a.add_argument(*_flag("seed"), type=int, default=None, help="random seed, to reproduce a run on the same device")
    a.add_argument(*_flag("models_dir"), default=None,
                   help="checkpoint directory (default $TORTOISE_MODELS_DIR or ~/.cache/tortoise/models)")
    a.add_argument(*_flag("text_split"), default=None, help="sentence chunk lengths as DESIRED,MAX (default 200,300)")
    a.add_argument(*_flag("disable_redaction"), action="store_true",
                   help="speak [bracketed] text instead of cutting it from the audio")
    a.add_argument(*_flag("device"), default=None, help="xpu, xpu:1, cuda, mps or cpu (default: automatic)")
    a.add_argument(*_flag("batch_size"), type=int, default=None,
                   help="autoregressive batch size (default: the largest that fits memory)")
    a.add_argument(*_flag("vocoder"), default="auto", type=str.lower,
                   help="univnet, bigvgan_base or bigvgan; auto: bigvgan_base when MODELS_DIR/"
                        "bigvgan_base_24khz_100band exists, else univnet")
    a.add_argument(*_flag("ar_checkpoint"), default=None, help="autoregressive checkpoint file")
    a.add_argument(*_flag("clvp_checkpoint"), default=None, help="CLVP checkpoint file")
    a.add_argument(*_flag("diff_checkpoint"), default=None, help="diffusion checkpoint file")
    t = p.add_argument_group("tuning (overrides the preset)")
    for name, typ, text in TUNING:
        t.add_argument(*_flag(name), *(["--steps"] if name == "diffusion_iterations" else []), dest=name,
                       type=_bool if typ == "bool" else typ, default=None, help=text)
    t.add_argument(*_flag("latent_averaging_mode"), type=int, choices=(0, 1, 2), default=None,
                   help="diffusion conditioning: 0 first 4.27 s of each clip, 1 all chunks, 2 per-clip average")
    t.add_argument(*_flag("exact_ranking"), action="store_true",
                   help="score candidates padded to max_mel_tokens as the original does (its exact ranking; slower)")
    s = p.add_argument_group("speed")
    s.add_argument(*_flag("low_vram"), action="store_true", help="keep models off the device between stages")
    s.add_argument(*_flag("half"), action="store_true", help="half precision where the device does it well")
    s.add_argument(*_flag("no_cache"), action="store_true", help="disable the autoregressive key/value cache")
    s.add_argument(*_flag("compile"), action="store_true", help="torch.compile the autoregressive decode step")
    s.add_argument(*_flag("int8"), action="store_true",
                   help="CPU: int8 dynamic quantization of the autoregressive model (faster, slightly different)")
    s.add_argument(*_flag("original_kv_positions"), action="store_true",
                   help="the codes of the original's kv_cache=True (and the fast fork), whose positions run one ahead")
    s.add_argument(*_flag("sampler"), default=None, choices=SAMPLERS, help="diffusion sampler (default: the preset's)")
    s.add_argument(*_flag("stream"), action="store_true",
                   help="fast path: one sample, HiFi-GAN decoder from AR latents in chunks (no CLVP, no diffusion)")
    return p


# ---------------------------------------------------------------- input checks (all before any model loads)

def read_text(args, stdin=None):
    stdin = sys.stdin if stdin is None else stdin
    if args.text and getattr(args, "text_option", None):
        raise UsageError("text given twice: use either --text \"...\" or the positional text, not both")
    if getattr(args, "text_option", None) is not None:
        text = args.text_option
    elif args.text:
        text = " ".join(args.text)
    elif stdin is not None and not stdin.isatty():
        text = read_stdin(stdin, getattr(args, "encoding", None) or "utf-8")
    else:
        raise UsageError("no text given: pass it as an argument (tortoise-tts \"Hello.\") or pipe it on stdin")
    if any("\ud800" <= c <= "\udfff" for c in text):  # bytes the locale could not decode (surrogateescape)
        raise UsageError("the text holds bytes that are not valid in this system's encoding and would be lost: give "
                         "UTF-8 text, or pipe it on stdin with --encoding (e.g. --encoding cp1252)")
    text = text.strip()
    if not text:
        raise UsageError("the text is empty: give something to say")
    return text


def read_stdin(stdin, encoding="utf-8"):
    """All of stdin decoded with ``encoding`` (strictly: a byte that does not decode is an error naming it, never a
    silently dropped character); a UTF-8 byte-order mark is removed."""
    import codecs
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise UsageError(f"--encoding {encoding!r} is not an encoding Python knows: use e.g. utf-8, cp1252 or "
                         "latin-1") from None
    raw = getattr(stdin, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (an embedding application, tests)
        return stdin.read()
    data = raw.read()
    try:
        return data.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(f"the text on stdin is not valid {encoding}: byte(s) {data[e.start:e.end][:4].hex(' ')} on "
                         f"line {line} (offset {e.start}) do not decode; pass the file's encoding (e.g. --encoding "
                         f"cp1252) or convert it to UTF-8 (iconv -f cp1252 -t utf-8)") from None


def split_text(text, text_split):
    from tortoise.utils.text import split_and_recombine_text
    desired, maximum = 200, 300
    if text_split:
        try:
            desired, maximum = (int(x) for x in text_split.split(","))
        except ValueError:
            raise UsageError(f"--text_split {text_split!r} must be DESIRED,MAX, e.g. 200,300") from None
        if not 0 < desired <= maximum:
            raise UsageError(f"--text_split: need 0 < DESIRED <= MAX, got {desired},{maximum}")
    texts = [t for t in split_and_recombine_text(text, desired, maximum) if t.strip()]
    if not texts:
        raise UsageError("the text is empty after cleaning: give something to say")
    return texts


def parse_regenerate(value, n_clips):
    if not value:
        return None
    try:
        clips = {int(x) for x in value.split(",") if x.strip()}
    except ValueError:
        raise UsageError(f"--regenerate {value!r} must be comma-separated clip numbers, e.g. 3,7") from None
    bad = sorted(c for c in clips if not 0 <= c < n_clips)
    if bad:
        raise UsageError(f"--regenerate: clip {bad[0]} does not exist; the text has clips 0..{n_clips - 1}")
    return clips


def generation_options(args):
    from tortoise.api import preset_options
    overrides = {name: getattr(args, name) for name, _, _ in TUNING if getattr(args, name) is not None}
    for name in ("sampler", "latent_averaging_mode"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.half:
        overrides["half"] = True
    if args.exact_ranking:
        overrides["exact_ranking"] = True
    try:
        return preset_options(args.preset, **overrides)
    except ValueError as e:
        raise UsageError(f"{e} (check the tuning flags)") from None


def choose_vocoder(name, models_dir):
    """``auto``: BigVGAN base (the fast fork's default) when its checkpoint is in the models dir, else UnivNet."""
    if name not in VOCODER_CHOICES:
        raise UsageError(f"unknown --vocoder {name!r}: use one of {', '.join(VOCODER_CHOICES)}")
    if name != "auto":
        return name
    from tortoise.api import bigvgan_dir
    from tortoise.utils.checkpoints import default_models_dir
    local = bigvgan_dir("bigvgan_base", models_dir or default_models_dir(), download=False)
    return "bigvgan_base" if local.is_dir() else "univnet"


def check_args(args, opts, n_clips):
    if args.candidates < 1:
        raise UsageError("--candidates must be at least 1")
    if args.candidates > opts.num_autoregressive_samples:
        raise UsageError(f"--candidates {args.candidates} exceeds the {opts.num_autoregressive_samples} "
                         "autoregressive samples of this preset: raise --num_autoregressive_samples")
    if args.stream and args.candidates > 1:
        raise UsageError("--stream renders one candidate: drop --candidates or --stream")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch_size must be at least 1")
    if args.skip_existing and args.regenerate:
        raise UsageError("--skip_existing and --regenerate contradict each other: use one")


def prepare_output_dir(path):
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output directory {str(path)!r} ({e.strerror}): choose another with -O")
    if not os.access(path, os.W_OK):
        raise UsageError(f"output directory {str(path)!r} is not writable: choose another with -O")
    return path


def load_voice_groups(args):
    """[(label, clips, latents)] for every voice group of --voice, loaded now so bad clips fail before any model."""
    from tortoise.utils.voices import expected_latent_widths, get_voices, load_voices, parse_voice_selection
    dirs = [d for d in (args.voices_dir or "").split(",") if d]
    groups = parse_voice_selection(args.voice, get_voices(dirs))
    widths = expected_latent_widths(args.models_dir)  # a .pth voice must fit these models
    return [("-".join(g), *load_voices(g, dirs, latent_widths=widths)) for g in groups]


# ---------------------------------------------------------------- files

def write_wav(path, audio):
    """Write 24 kHz audio (any shape holding one channel) atomically: a temporary file then a rename."""
    from tortoise.utils.audio import save_wav
    save_wav(str(path), audio.detach().float().cpu().reshape(1, -1), OUTPUT_SAMPLE_RATE)


def read_wav(path):
    from tortoise.utils.audio import load_audio
    return load_audio(str(path), OUTPUT_SAMPLE_RATE, allow_silent=True).reshape(1, -1)


# ---------------------------------------------------------------- rendering

class Renderer:
    """Renders the clips of one run; every finished clip is on disk before the next one starts."""

    def __init__(self, tts, args, opts, texts, out_dir, seed, say):
        self.tts, self.args, self.opts, self.texts = tts, args, opts, texts
        self.out_dir, self.seed, self.say = out_dir, seed, say
        self.regenerate = parse_regenerate(args.regenerate, len(texts))
        self.written = []

    def clip_path(self, label, idx, cand=0):
        return self.out_dir / f"{label}_{idx:02d}_{cand:02d}.wav"

    def planned_overwrites(self, labels):
        """Existing files this run would replace that the user did not ask to replace (--regenerate and
        --skip_existing ask for it; the combined file is derived from the clips and is always rewritten then)."""
        if self.args.overwrite or self.args.skip_existing or self.regenerate is not None:
            return []
        paths = [self.clip_path(label, idx, cand) for label in labels for idx in range(len(self.texts))
                 for cand in range(self.args.candidates)]
        paths += [self.out_dir / f"{label}_combined.wav" for label in labels]
        paths += [Path(self.args.output)] if self.args.output else []
        return [p for p in paths if p.exists()]

    def keep_existing(self, label, idx):
        if not (self.args.skip_existing or (self.regenerate is not None and idx not in self.regenerate)):
            return False
        return self.clip_path(label, idx).is_file()

    def render_voice(self, label, clips, latents, n_done, total):
        parts = []
        for idx, text in enumerate(self.texts):
            if self.keep_existing(label, idx):
                self.say(f"Keeping {self.clip_path(label, idx).name}")
                parts.append(read_wav(self.clip_path(label, idx)))
                continue
            self.say(f"Rendering {label}_{idx:02d} ({n_done + idx + 1} of {total}): {text}")
            parts.append(self.render_clip(label, idx, text, clips, latents))
        combined = self.out_dir / f"{label}_combined.wav"
        audio = _cat(parts)
        write_wav(combined, audio)
        self.written.append(combined)
        return audio

    def render_clip(self, label, idx, text, clips, latents):
        verbose = not self.args.quiet
        if self.args.stream:
            candidates = [self.stream_clip(text, clips, latents, verbose)]
        else:
            gen = self.tts.tts(text, voice_samples=clips, conditioning_latents=latents, k=self.args.candidates,
                               verbose=verbose, use_deterministic_seed=self.seed, options=self.opts)
            candidates = gen if isinstance(gen, list) else [gen]
        for cand, audio in enumerate(candidates):
            path = self.clip_path(label, idx, cand)
            write_wav(path, audio)
            self.written.append(path)
        return candidates[0].reshape(1, -1).float().cpu()

    def stream_clip(self, text, clips, latents, verbose):
        """Collect the streamed chunks of one clip, reporting when the first audio arrived."""
        t0, chunks = time.time(), []
        for chunk in self.tts.tts_stream(text, voice_samples=clips, conditioning_latents=latents,
                                         use_deterministic_seed=self.seed, verbose=verbose, **self._stream_kwargs()):
            if not chunks:
                self.say(f"  first audio after {time.time() - t0:.1f} s")
            chunks.append(chunk.reshape(1, -1).float().cpu())
        return _cat(chunks)

    def _stream_kwargs(self):
        o = self.opts
        return dict(temperature=o.temperature, length_penalty=o.length_penalty,
                    repetition_penalty=o.repetition_penalty, top_p=o.top_p, max_mel_tokens=o.max_mel_tokens)


def _cat(parts):
    import torch
    return torch.cat([p.reshape(1, -1).float().cpu() for p in parts], dim=-1)


def list_voices(args):
    from tortoise.utils.voices import get_voices
    dirs = [d for d in (args.voices_dir or "").split(",") if d]
    for name in ["random"] + sorted(get_voices(dirs)):
        print(name)


def run(args, say):
    if args.list_voices:
        list_voices(args)
        return 0
    text = read_text(args)
    texts = split_text(text, args.text_split)
    from tortoise.utils.wav2vec_alignment import check_redaction  # [brackets]: fail now, not after a clip
    check_redaction(texts, args.models_dir, enabled=not (args.disable_redaction or args.stream))
    opts = generation_options(args)
    check_args(args, opts, len(texts))
    vocoder = choose_vocoder(args.vocoder, args.models_dir)
    voices = load_voice_groups(args)
    if args.output and len(voices) > 1:
        raise UsageError("-o takes one voice; with several voices use -O DIR (each gets DIR/{voice}_combined.wav)")
    out_dir = prepare_output_dir(args.output_dir)
    seed = args.seed if args.seed is not None else random.randint(0, 2 ** 32 - 1)
    say(f"Seed {seed} (pass --seed {seed} to reproduce this run)")
    renderer = Renderer(None, args, opts, texts, out_dir, seed, say)
    clash = renderer.planned_overwrites([label for label, _, _ in voices])
    if clash:
        raise UsageError(f"{clash[0]} exists (from an earlier run) and would be replaced: pass --skip_existing to "
                         "resume, --regenerate N to redo clips, --overwrite to replace, or choose another -O / -o")
    renderer.tts = make_tts(args, vocoder, say)
    try:
        for v, (label, clips, latents) in enumerate(voices):
            audio = renderer.render_voice(label, clips, latents, v * len(texts), len(voices) * len(texts))
            if args.output:
                write_wav(args.output, audio)
                renderer.written.append(Path(args.output))
    except BaseException:
        if renderer.written:
            print(f"tortoise-tts: {len(renderer.written)} finished file(s) kept in {out_dir}; "
                  "rerun with --skip_existing to resume", file=sys.stderr)
        raise
    say(f"Wrote {len(renderer.written)} file(s) to {out_dir}" + (f" and {args.output}" if args.output else ""))
    return 0


def make_tts(args, vocoder, say):
    from tortoise.api import TextToSpeech
    say(f"Loading models ({vocoder} vocoder)...")
    t0 = time.time()
    tts = TextToSpeech(autoregressive_batch_size=args.batch_size, models_dir=args.models_dir,
                       enable_redaction=not args.disable_redaction, device=args.device,
                       high_vram=not args.low_vram, kv_cache=not args.no_cache, half=args.half,
                       ar_checkpoint=args.ar_checkpoint, clvp_checkpoint=args.clvp_checkpoint,
                       diff_checkpoint=args.diff_checkpoint, vocoder=vocoder, preload=not args.stream,
                       compile=args.compile, int8=args.int8,
                       kv_cache_positions="original" if args.original_kv_positions else "contiguous")
    if args.stream:
        tts.preload(("autoregressive", "hifidecoder"))
    say(f"Loaded on {tts.device} in {time.time() - t0:.1f} s (batch size {tts.autoregressive_batch_size})")
    return tts


def _one_line(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv=None):
    """Console entry point ``tortoise-tts``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"tortoise-tts: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    try:
        return run(args, say)
    except KeyboardInterrupt:
        print("tortoise-tts: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # every failure is one line; TORTOISE_DEBUG=1 shows the traceback
        if os.environ.get("TORTOISE_DEBUG"):
            raise
        code = EXIT_BAD_INPUT if _is_input_error(e) else EXIT_FAILED
        prefix = "" if _is_input_error(e) else f"{type(e).__name__}: "
        hint = "" if _is_input_error(e) else " (set TORTOISE_DEBUG=1 for the traceback)"
        print(f"tortoise-tts: error: {prefix}{_one_line(e)}{hint}", file=sys.stderr)
        return code


def _is_input_error(e):
    from tortoise.utils.checkpoints import CheckpointError
    from tortoise.utils.voices import VoiceError
    try:
        from xpu.device import DeviceUnavailable
    except ImportError:  # pragma: no cover - the device layer is part of this package
        DeviceUnavailable = ()
    return isinstance(e, (UsageError, VoiceError, CheckpointError, DeviceUnavailable, ValueError))


if __name__ == "__main__":
    sys.exit(main())
