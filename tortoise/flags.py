"""What the command-line front ends share (``tortoise-tts``, ``tortoise-server``, the Ray reader, the original's
scripts): the one-line usage error, the parser that raises it, the yes/no and ``--a_b``/``--a-b`` flag spellings, the
generation tuning flags, and the model options: their flags (:func:`add_model_arguments`), their checks before
anything loads (:func:`check_model_args`), and the one place flags become :class:`tortoise.options.ModelOptions`
(:func:`model_options`) and a loaded :class:`tortoise.session.Session` (:func:`make_session`).
"""
import argparse
import time
from pathlib import Path

from tortoise.backends import MissingRuntime
from tortoise.options import ModelOptions
from tortoise.placement import backend_options, resolve_backend
from tortoise.session import Session
from tortoise.utils.checkpoints import bigvgan_dir, default_models_dir

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


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def yes_no(value):
    """A yes/no flag value as people type it: true/false, yes/no, on/off, 1/0, t/f, y/n (any case)."""
    v = str(value).strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def flag(name):
    """``--a_b`` plus its dashed spelling ``--a-b``."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    return flags


def add_model_arguments(a, s):
    """The options that choose, load and place the networks, added to the argument groups ``a`` (models and device)
    and ``s`` (speed). Shared by ``tortoise-tts`` and ``tortoise-server``; :func:`model_options` reads them."""
    a.add_argument(*flag("models_dir"), default=None,
                   help="checkpoint directory (default $TORTOISE_MODELS_DIR or ~/.cache/tortoise/models)")
    a.add_argument(*flag("disable_redaction"), action="store_true",
                   help="speak [bracketed] text instead of cutting it from the audio")
    a.add_argument(*flag("device"), default=None, help="xpu, xpu:1, cuda, mps or cpu (default: automatic)")
    a.add_argument(*flag("batch_size"), type=int, default=None,
                   help="autoregressive batch size (default: the largest that fits memory)")
    a.add_argument(*flag("vocoder"), default="auto", type=str.lower,
                   help="univnet, bigvgan_base or bigvgan; auto: bigvgan_base when MODELS_DIR/"
                        "bigvgan_base_24khz_100band exists, else univnet")
    a.add_argument(*flag("ar_checkpoint"), default=None, help="autoregressive checkpoint file")
    a.add_argument(*flag("clvp_checkpoint"), default=None, help="CLVP checkpoint file")
    a.add_argument(*flag("diff_checkpoint"), default=None, help="diffusion checkpoint file")
    a.add_argument(*flag("tokenizer"), default=None,
                   help="tokenizer.json a fine-tuned autoregressive checkpoint was trained with "
                        "(default: the released)")
    a.add_argument(*flag("hub_revision"), default=None,
                   help="hub revision (branch, tag or commit) to download checkpoints from "
                        "(default $TORTOISE_HUB_REVISION, else main)")
    s.add_argument(*flag("low_vram"), action="store_true", help="keep models off the device between stages")
    s.add_argument(*flag("threads"), type=int, default=None,
                   help="CPU threads (default: one per physical core, capped by the CPUs this process may use); "
                        "lower it on a machine shared with other jobs")
    s.add_argument(*flag("half"), action="store_true",
                   help="half precision where the device does it well (python -m xpu shows which dtype)")
    s.add_argument(*flag("dtype"), default=None, choices=("float32", "bfloat16", "float16"),
                   help="force the dtype of the half-tolerant networks (e.g. bfloat16 on a CPU without native bf16)")
    s.add_argument(*flag("no_cache"), action="store_true", help="disable the autoregressive key/value cache")
    s.add_argument(*flag("compile"), action="store_true", help="torch.compile the autoregressive decode step")
    s.add_argument(*flag("int8"), action="store_true",
                   help="CPU: int8 weights for the autoregressive decode steps (weight-only with bf16 activations "
                        "where the CPU has native bf16, else dynamic quantization; faster, slightly different)")
    s.add_argument(*flag("original_kv_positions"), action="store_true",
                   help="the codes of the original's kv_cache=True (and the fast fork), whose positions run one ahead")
    s.add_argument(*flag("backend"), default=None, choices=("torch", "onnxruntime", "openvino"),
                   help="run the networks as exported graphs on ONNX Runtime or OpenVINO (default $TORTOISE_BACKEND, "
                        "else torch); graphs are exported and verified on first use")
    s.add_argument(*flag("ort_provider"), default="cpu", choices=("cpu", "cuda", "openvino"),
                   help="ONNX Runtime execution provider (default cpu)")
    s.add_argument(*flag("ov_device"), default="CPU", type=str.upper, choices=("CPU", "GPU", "AUTO"),
                   help="OpenVINO device (default CPU)")
    s.add_argument(*flag("backend_precision"), default=None, choices=("f32", "bf16", "f16", "int8"),
                   help="graph backend's precision (default f32; with --half bf16 on CPUs with native bf16, f16 on "
                        "GPUs and ONNX Runtime CUDA; int8: OpenVINO with the AR transformer's weights in int8)")


# ---------------------------------------------------------------- input checks (all before any model loads)

def choose_vocoder(name, models_dir):
    """``auto``: BigVGAN base (the fast fork's default) when its checkpoint is in the models dir, else UnivNet."""
    if name not in VOCODER_CHOICES:
        raise UsageError(f"unknown --vocoder {name!r}: use one of {', '.join(VOCODER_CHOICES)}")
    if name != "auto":
        return name
    local = bigvgan_dir("bigvgan_base", models_dir or default_models_dir(), download=False)
    return "bigvgan_base" if local.is_dir() else "univnet"


def check_model_args(args):
    """The checks of :func:`add_model_arguments`' options that need no model (before anything loads)."""
    try:
        args.backend = resolve_backend(args.backend)
        backend_options(args.backend, None, args.ort_provider, args.ov_device, args.backend_precision, args.half,
                        args.dtype)
    except (MissingRuntime, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch_size must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.tokenizer and not Path(args.tokenizer).expanduser().is_file():
        raise UsageError(f"--tokenizer {args.tokenizer}: no such file; pass the tokenizer.json the model was trained "
                         "with")


def model_options(args, vocoder, stream=None):
    """The :class:`tortoise.options.ModelOptions` these flags ask for (the server and the Ray actors take them too);
    ``stream`` (default ``args.stream``): load only what the streaming fast path needs."""
    stream = args.stream if stream is None else stream
    return ModelOptions(
        models_dir=args.models_dir, device=args.device, high_vram=not args.low_vram, half=args.half, dtype=args.dtype,
        ar_checkpoint=args.ar_checkpoint, clvp_checkpoint=args.clvp_checkpoint, diff_checkpoint=args.diff_checkpoint,
        vocoder="univnet" if stream else vocoder, tokenizer_vocab_file=args.tokenizer, hub_revision=args.hub_revision,
        kv_cache=not args.no_cache, kv_cache_positions="original" if args.original_kv_positions else "contiguous",
        compile=args.compile, int8=args.int8, backend=args.backend, ort_provider=args.ort_provider,
        ov_device=args.ov_device, backend_precision=args.backend_precision, autoregressive_batch_size=args.batch_size,
        enable_redaction=not args.disable_redaction, threads=args.threads, preload=not stream, stream=bool(stream))


def make_session(args, vocoder, say, stream=None):
    """The loaded :class:`~tortoise.session.Session` of the model options, said as it loads; ``stream`` (default
    ``args.stream``): load only what the streaming fast path needs."""
    stream = args.stream if stream is None else stream
    say("Loading models (HiFi-GAN decoder, streaming)..." if stream else f"Loading models ({vocoder} vocoder)...")
    t0 = time.time()
    tts = Session.load(model_options(args, vocoder, stream))
    on = tts.device if tts.backend == "torch" else f"{tts.device}, {tts.backend}"
    threads = f"{tts.threads} thread{'s' if tts.threads != 1 else ''}"
    say(f"Loaded on {on} in {time.time() - t0:.1f} s ({tts.precision}, {threads}, batch size "
        f"{tts.autoregressive_batch_size})")
    return tts
