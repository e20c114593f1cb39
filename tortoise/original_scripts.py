"""The original Tortoise's scripts, ``tortoise/do_tts.py``, ``tortoise/read.py`` and ``tortoise/read_fast.py``, with
their flags, defaults and file names, run by this package's command line (:func:`tortoise.cli.main`): the same render
loop as ``tortoise-tts`` (resumable, atomic writes, one-line errors, nothing replaced unless asked).

What each writes under ``--output_path``:
- ``do_tts``: ``{voice}_{k}.wav`` per voice of ``--voice a,b`` (``k``: its place in that list), ``{voice}_{k}_{j}.wav``
  for each candidate when ``--candidates`` is more than 1 (the original's default is 3). The text is one clip.
- ``read`` / ``read_fast``: ``{voice}/{i}.wav`` per clip of the text file (``{voice}/{i}/{j}.wav`` with candidates)
  and ``{voice}/{output_name}.wav``, the clips joined. The text is split as the original splits it: at ``|`` where
  the file has one, else into sentences of about 200 characters. ``read_fast`` uses the fast path (one sample,
  HiFi-GAN decoder, no CLVP or diffusion), as the original's does.

Differences, each for a reason: the original parsed its yes/no flags with ``type=bool``, so ``--half False`` meant
True; here ``true/false, yes/no, on/off, 1/0`` mean what they say, and a bare ``--half`` means true. ``--half``
defaults to the original's effective behaviour: half precision on a GPU, float32 on a CPU (the original's autocast
was CUDA-only). An earlier run's files are not replaced unless asked (``--overwrite``; ``--skip_existing`` resumes;
``read``'s ``--regenerate 3,7`` renders those clips again and keeps the rest). ``--output_name combined.wav`` names
``combined.wav``, not the original's ``combined.wav.wav``; a merged voice ``a&b`` is written ``a-b`` (tortoise-tts's
file-name form of a voice group). ``--use_deepspeed`` is accepted and ignored (no DeepSpeed
here), and ``--produce_debug_state`` writes no ``debug_states/`` file: every clip file records its seed, text and
voice instead (``tortoise-tts``'s clip record).
"""
import sys

import xpu
from tortoise import cli, render
from tortoise.api import MODELS_DIR

DO_TTS_TEXT = ("The expressiveness of autoregressive transformers is literally nuts! I absolutely adore them.")


def _switch(parser, name, default, text):
    """A yes/no flag (the original's ``type=bool`` took any non-empty text, "False" too, as True)."""
    parser.add_argument(f"--{name}", type=cli.yes_no, nargs="?", const=True, default=default, metavar="true|false",
                        help=text)


def build_parser(script):
    """The original script's flags (``do_tts``, ``read`` or ``read_fast``), plus the resume / replace flags."""
    p = cli.Parser(prog=f"{script}.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--voice", default={"do_tts": "random", "read": "pat", "read_fast": "lj"}[script],
                   help="voice: a name, 'random', 'a&b' (averaged), 'a,b' (each in turn)")
    p.add_argument("--preset", default="standard" if script == "read" else "fast", help="quality/speed preset")
    p.add_argument("--output_path", default="results/" if script == "do_tts" else "results/longform/",
                   help="where the files go")
    p.add_argument("--model_dir", default=MODELS_DIR, help="checkpoints (default $TORTOISE_MODELS_DIR or the cache)")
    p.add_argument("--voices_dir", default=None,
                   help="(not in the original) a directory of voices searched before tortoise/voices")
    p.add_argument("--seed", type=int, default=None, help="random seed, to reproduce a run")
    _switch(p, "use_deepspeed", False, "accepted for the original's scripts; ignored (no DeepSpeed here)")
    _switch(p, "kv_cache", True, "use the autoregressive key/value cache")
    _switch(p, "half", None, "half precision (default: on a GPU, not on a CPU, as the original)")
    if script == "do_tts":
        p.add_argument("--text", default=DO_TTS_TEXT, help="text to speak")
        p.add_argument("--cvvp_amount", type=float, default=0.0, help="weight of CVVP in ranking, 0..1")
    else:
        p.add_argument("--textfile", default="tortoise/data/riding_hood.txt", help="file with the text to read")
        p.add_argument("--output_name", default="combined.wav", help="name of the joined file")
        p.add_argument("--regenerate", default=None, help="comma-separated clip numbers to render again")
    if script != "read_fast":
        p.add_argument("--candidates", type=int, default=3 if script == "do_tts" else 1,
                       help="candidates per clip")
        _switch(p, "produce_debug_state", True, "accepted; each clip file records its seed, text and voice")
    p.add_argument("--skip_existing", action="store_true", help="keep files already written (resume a run)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _read_textfile(path):
    try:
        with open(path, encoding="utf-8") as f:
            return " ".join(f.readlines())  # the original joins the lines with spaces
    except OSError as e:
        raise cli.UsageError(f"--textfile {path}: {e.strerror or e}; pass the file with the text to read") from None


def split_like_read(text):
    """``read.py``'s clips: at ``|`` where the text has one, else sentences of about 200 characters."""
    parts = [t for t in text.split("|") if t.strip()] if "|" in text else cli.split_text(text, None)
    if not parts:
        raise cli.UsageError("the text file holds nothing to read between its '|' marks")
    return parts


def _half(value):
    """``--half`` as given, else the original's effective default: half on a GPU, float32 on a CPU."""
    return value if value is not None else xpu.resolve_device(None).type != "cpu"


def command_line(script, args):
    """The ``tortoise-tts`` arguments that run ``args`` (the script's parsed flags)."""
    argv = ["--voice", args.voice, "--preset", args.preset, "-O", args.output_path, "--models_dir", args.model_dir]
    argv += ["--voices_dir", args.voices_dir] if args.voices_dir else []
    if script == "do_tts":
        argv += [f"--text={args.text}", "--cvvp_amount", str(args.cvvp_amount)]
    else:
        argv += [f"--text={_read_textfile(args.textfile)}"]
        if args.regenerate:
            argv += ["--regenerate", args.regenerate]
    if script != "read_fast":
        argv += ["--candidates", str(args.candidates)]
    else:
        argv += ["--stream"]
    argv += ["--seed", str(args.seed)] if args.seed is not None else []
    argv += [] if args.kv_cache else ["--no_cache"]
    argv += ["--half"] if _half(args.half) else []
    argv += [f for f, on in (("--skip_existing", args.skip_existing), ("--overwrite", args.overwrite),
                             ("-q", args.quiet)) if on]
    return argv


def layout(script, args):
    if script == "do_tts":
        return render.original_layout("do_tts")
    name = args.output_name[:-4] if args.output_name.lower().endswith(".wav") else args.output_name
    return render.original_layout("read", name)


def main(script, argv=None):
    """Run the original's ``script`` (``do_tts``, ``read``, ``read_fast``) with ``argv``; returns the exit status."""
    from tortoise.utils import errors
    prog = f"{script}.py"
    try:
        args = build_parser(script).parse_args(argv)
        line = command_line(script, args)
    except cli.UsageError as e:
        return errors.report(prog, e, extra_input_errors=(cli.UsageError,))
    given = sys.argv[1:] if argv is None else argv
    if args.use_deepspeed:
        print(f"{prog}: warning: --use_deepspeed: DeepSpeed is not used here; ignored", file=sys.stderr)
    if getattr(args, "produce_debug_state", False) and any(a.startswith("--produce_debug_state") for a in given):
        print(f"{prog}: warning: --produce_debug_state: no debug_states/ file is written; each clip file records "
              "its seed, text and voice", file=sys.stderr)
    split = (lambda text: [text]) if script == "do_tts" else split_like_read
    return cli.main(line, prog=prog, layout=layout(script, args), split=split)
