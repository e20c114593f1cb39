"""The ``tortoise-tts`` command: text (argument or stdin) -> 24 kHz wav files, clip by clip, in one or more voices.

A thin shell over :mod:`tortoise.render` (the render loop the web UI, the speech server and the Ray reader share):
it parses arguments, loads voices, splits long text into sentences and hands the run over. Clips are
``{voice}_{idx:02d}_{cand:02d}.wav`` in the output directory, then ``{voice}_combined.wav`` (the first candidate of
every clip, in order). ``--skip_existing`` resumes an interrupted run (keeping only clips made from the same text,
voice and settings); ``--regenerate 3,7`` redoes those clips. Bad input exits 2 with one line, a failure at run time 1.
"""
import dataclasses
import functools
import os
import random
import sys
import warnings
from pathlib import Path

from tortoise.flags import (TUNING, VOCODER_CHOICES, Parser, UsageError, add_model_arguments,  # noqa: F401
                            check_model_args, choose_vocoder, flag, make_session, model_options, yes_no)
from tortoise.progress import TqdmProgress
from tortoise.utils import errors
from tortoise.utils.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED  # noqa: F401 (the CLI's codes)



def build_parser():
    from tortoise.api import PRESETS, SAMPLERS
    p = Parser(prog="tortoise-tts", description="Tortoise text to speech: speak text in a voice, clip by clip.",
                epilog="Examples:  tortoise-tts -v random -o hello.wav \"Hello, how are you?\"   |   "
                       "echo \"Say it like you mean it!\" | tortoise-tts -V my_voices -v alice   |   "
                       "tortoise-tts -O out -v alice,bob --candidates 3 < story.txt")
    g = p.add_argument_group("general")
    g.add_argument("text", nargs="*", help="text to speak; read from stdin when omitted")
    g.add_argument("-t", "--text", dest="text_option", default=None,
                   help="text to speak (the original's --text; same as the positional text)")
    g.add_argument("-v", *flag("voice"), default="random",
                   help="voice: a name, 'random', 'a&b' (averaged), 'a,b' (each in turn) or 'all'")
    g.add_argument("-V", *flag("voices_dir"), default=None,
                   help="directory of voices (one subdirectory per voice); a comma separates several")
    g.add_argument("-p", *flag("preset"), default="fast", choices=list(PRESETS), help="quality/speed preset")
    g.add_argument("-q", *flag("quiet"), action="store_true", help="print nothing but errors")
    g.add_argument(*flag("encoding"), default="utf-8",
                   help="encoding of text piped on stdin (default utf-8; e.g. cp1252, latin-1); undecodable input "
                        "is refused, never dropped")
    o = p.add_argument_group("output")
    o.add_argument("-l", *flag("list_voices"), action="store_true", help="list the available voices and exit")
    o.add_argument("-o", *flag("output"), default=None, help="also write the combined audio to this file")
    o.add_argument("-O", *flag("output_dir"), default=None,
                   help="directory for the clips (default: results, or results/NAME with -o NAME.wav)")
    m = p.add_argument_group("multiple outputs")
    m.add_argument(*flag("candidates"), type=int, default=1, help="candidates per clip (best first)")
    m.add_argument(*flag("regenerate"), default=None, help="comma-separated clip numbers to render again, e.g. 3,7")
    m.add_argument(*flag("skip_existing"), action="store_true", help="keep clips already written (resume a run)")
    m.add_argument(*flag("overwrite"), action="store_true",
                   help="replace files of an earlier run in the output directory (refused otherwise)")
    a = p.add_argument_group("advanced")
    a.add_argument(*flag("seed"), type=int, default=None, help="random seed, to reproduce a run on the same device")
    a.add_argument(*flag("text_split"), default=None, help="sentence chunk lengths as DESIRED,MAX (default 200,300)")
    t = p.add_argument_group("tuning (overrides the preset)")
    for name, typ, text in TUNING:
        t.add_argument(*flag(name), *(["--steps"] if name == "diffusion_iterations" else []), dest=name,
                       type=yes_no if typ == "bool" else typ, default=None, help=text)
    t.add_argument(*flag("latent_averaging_mode"), type=int, choices=(0, 1, 2), default=None,
                   help="diffusion conditioning: 0 first 4.27 s of each clip, 1 all chunks, 2 per-clip average")
    t.add_argument(*flag("exact_ranking"), action="store_true",
                   help="score candidates padded to max_mel_tokens as the original does (its exact ranking; slower)")
    s = p.add_argument_group("speed")
    add_model_arguments(a, s)
    s.add_argument(*flag("sampler"), default=None, choices=SAMPLERS, help="diffusion sampler (default: the preset's)")
    s.add_argument(*flag("stream"), action="store_true",
                   help="fast path: one sample, HiFi-GAN decoder from AR latents in chunks (no CLVP, no diffusion)")
    r = p.add_argument_group("Ray cluster (the ray extra: pip install -e '.[ray]')")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="read on a Ray cluster, clips spread over its GPUs (or CPUs): a new local cluster, or the "
                        "one at ADDRESS (HOST:PORT, ray://HOST:PORT, auto); give the text before --ray or by --text")
    r.add_argument(*flag("ray_actors"), type=int, default=None, metavar="N",
                   help="Ray actors, each holding the models (default: one per GPU, else one per CPU)")
    return p


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
    if args.exact_ranking:
        overrides["exact_ranking"] = True
    try:
        return preset_options(args.preset, **overrides)
    except ValueError as e:
        raise UsageError(f"{e} (check the tuning flags)") from None


def check_args(args, opts, n_clips):
    if args.candidates < 1:
        raise UsageError("--candidates must be at least 1")
    if args.candidates > opts.num_autoregressive_samples:
        raise UsageError(f"--candidates {args.candidates} exceeds the {opts.num_autoregressive_samples} "
                         "autoregressive samples of this preset: raise --num_autoregressive_samples")
    if args.stream and args.candidates > 1:
        raise UsageError("--stream renders one candidate: drop --candidates or --stream")
    check_model_args(args)
    if args.skip_existing and args.regenerate:
        raise UsageError("--skip_existing and --regenerate contradict each other: use one")
    check_ray_args(args)


def check_ray_args(args):
    if args.ray_actors is not None and args.ray is None:
        raise UsageError("--ray_actors needs --ray (read on a Ray cluster)")
    if args.ray is None:
        return
    from tortoise.distributed import RayUnavailable, require_ray
    from tortoise.distributed.reader import RayOptions, check_address
    try:
        require_ray()
    except RayUnavailable as e:
        raise UsageError(str(e)) from None
    try:
        check_address(args.ray)
    except ValueError as e:
        raise UsageError(f"{e}; give the text before --ray, in --text or on stdin") from None
    RayOptions(None, args.ray_actors)


def output_dir(args):
    """-O, else ``results``; with -o NAME.wav and no -O, ``results/NAME`` (so two -o runs never share clips). Nothing
    is created here: the directory appears with its first file, so a run that fails first leaves none behind."""
    if args.output_dir:
        path = Path(args.output_dir).expanduser()
    elif args.output:
        path = Path("results") / (Path(args.output).stem or "output")
    else:
        path = Path("results")
    if path.exists() and not path.is_dir():
        raise UsageError(f"output directory {str(path)!r} is a file: choose another with -O")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output directory {str(path)!r} is not writable: choose another with -O")
    return path


def check_output_file(args):
    if not args.output:
        return None
    path = Path(args.output).expanduser()
    if path.is_dir():
        raise UsageError(f"-o {args.output} is a directory: give a file name such as {path / 'speech.wav'}")
    return path


def load_voice_groups(args):
    """The voice groups of --voice as :class:`tortoise.render.Voice`, loaded now so bad clips (and latents that do
    not fit the models) fail before any model loads."""
    from tortoise.render import load_voice_group
    from tortoise.utils.voices import expected_latent_widths, get_voices, parse_voice_selection
    dirs = [d for d in (args.voices_dir or "").split(",") if d]
    ar_width, diffusion_width = expected_latent_widths(args.models_dir)  # a .pth voice must fit these models
    widths = (ar_width, None if args.stream else diffusion_width)  # streaming uses the AR latent only
    return [load_voice_group(group, dirs, latent_widths=widths)
            for group in parse_voice_selection(args.voice, get_voices(dirs))]


def run_mode(args):
    if args.overwrite:
        return "overwrite"
    if args.skip_existing:
        return "skip_existing"
    return "regenerate" if args.regenerate else "new"


def make_job(args, texts, opts, voices, vocoder, layout=None):
    """The run as a :class:`tortoise.render.RenderJob` (files named by ``layout``, default tortoise-tts's own).
    Resuming without --seed reuses the earlier run's seed."""
    from tortoise import render
    out_dir, output = output_dir(args), check_output_file(args)
    regenerate = frozenset(parse_regenerate(args.regenerate, len(texts)) or ())
    mode = run_mode(args)
    from tortoise.api import model_identity
    settings = render.RenderSettings(opts, 0, args.candidates, args.stream,
                                     model_identity(model_options(args, vocoder)))
    job = render.RenderJob(tuple(texts), tuple(voices), settings, out_dir, mode, regenerate, output,
                           layout=layout or render.LAYOUT)
    seed = args.seed
    if seed is None and mode in ("skip_existing", "regenerate"):
        seed = render.earlier_run_seed(job)
    if seed is None:
        seed = random.randint(0, 2 ** 32 - 1)
    return dataclasses.replace(job, settings=dataclasses.replace(settings, seed=seed))


def list_voices(args):
    from tortoise.utils.voices import get_voices
    dirs = [d for d in (args.voices_dir or "").split(",") if d]
    for name in ["random"] + sorted(get_voices(dirs)):
        print(name)


def run(args, say, layout=None, split=None):
    """One run of the command line. ``layout`` names the files (default tortoise-tts's own); ``split(text)`` cuts
    the text into clips (default :func:`split_text`). The original's scripts (:mod:`tortoise.original_scripts`)
    pass theirs."""
    from tortoise import render
    if args.list_voices:
        list_voices(args)
        return 0
    text = read_text(args)
    texts = split(text) if split is not None else split_text(text, args.text_split)
    from tortoise.utils.wav2vec_alignment import check_redaction  # [brackets]: fail now, not after a clip
    check_redaction(texts, args.models_dir, enabled=not (args.disable_redaction or args.stream))
    opts = generation_options(args)
    check_args(args, opts, len(texts))
    vocoder = "hifigan" if args.stream else choose_vocoder(args.vocoder, args.models_dir)
    voices = load_voice_groups(args)
    if args.output and len(voices) > 1:
        raise UsageError("-o takes one voice; with several voices use -O DIR (each gets DIR/{voice}_combined.wav)")
    job = make_job(args, texts, opts, voices, vocoder, layout)
    tasks = render.plan(job)  # refuses to replace an earlier run's files before any model loads
    say(f"Seed {job.settings.seed} (pass --seed {job.settings.seed} to reproduce this run)")
    to_render = any(t.action == "render" for t in tasks)
    bar = TqdmProgress(not args.quiet)
    written = []
    on_clip = lambda task, paths, error: written.extend(paths)  # noqa: E731
    try:
        if args.ray is not None and to_render:
            result = read_on_ray(args, job, tasks, vocoder, bar, say, on_clip)
        else:
            tts = make_session(args, vocoder, say) if to_render else None
            result = render.render(tts, job, lambda stage, done, total: stage != "clips" and bar(stage, done, total),
                                   say, tasks=tasks, on_clip=on_clip)
    except BaseException:
        bar.close()
        if written:
            print(f"tortoise-tts: {len(written)} finished file(s) kept in {job.out_dir}; "
                  "rerun with --skip_existing to resume", file=sys.stderr)
        raise
    bar.close()
    say(summary(job, result))
    if result.failed:
        failed = ", ".join(f"{label}_{idx:02d} ({why})" for label, idx, why in result.failed)
        failed = errors.one_line(ValueError(failed))
        print(f"tortoise-tts: error: {len(result.failed)} of {len(tasks)} clip(s) failed: {failed}; the "
              f"finished clips are in {job.out_dir}: rerun with --skip_existing to render the missing ones",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def read_on_ray(args, job, tasks, vocoder, bar, say, on_clip):
    """``--ray``: the same job read by a pool of Ray actors (:mod:`tortoise.distributed.reader`); a bar counts clips."""
    from tortoise.distributed.reader import RayOptions, read
    options = RayOptions(args.ray if args.ray != "local" else None, args.ray_actors, threads=args.threads,
                         quiet=args.quiet)
    return read(job, model_options(args, vocoder), options, tasks, args.stream,
                lambda stage, done, total: stage == "clips" and bar(stage, done, total), say, on_clip)


def summary(job, result):
    """The closing line: which files were written (clips by range, then the combined files), kept and removed."""
    combined = [p for p in result.written
                if p == job.output or any(p == job.combined_path(v.label) for v in job.voices)]
    clips = sorted(p for p in result.written if p not in combined)  # a Ray read writes them as they finish
    parts = []
    if clips:
        names = clips[0].name if len(clips) == 1 else f"{clips[0].name} ... {clips[-1].name}"
        parts.append(f"{len(clips)} clip file(s) to {job.out_dir} ({names})")
    if combined:
        parts.append(", ".join(str(p) for p in combined))
    line = "Wrote " + " and ".join(parts) if parts else "Wrote nothing new"
    if result.kept:
        line += f"; kept {len(result.kept)} earlier clip(s)"
    if result.removed:
        line += f"; removed {len(result.removed)} clip file(s) of an earlier, longer run"
    return line


def _one_line_warning(message, category, filename, lineno, line=None, prog="tortoise-tts"):
    return f"{prog}: warning: {' '.join(str(message).split())}\n"


def main(argv=None, *, prog="tortoise-tts", layout=None, split=None):
    """Console entry point ``tortoise-tts``; returns the exit status (see :mod:`tortoise.utils.errors`). ``prog``,
    ``layout`` and ``split``: for the original's scripts, which run the same command line under their own name
    (see :func:`run`)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return errors.report(prog, e, extra_input_errors=(UsageError,))
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    saved = warnings.formatwarning
    warnings.formatwarning = functools.partial(_one_line_warning, prog=prog)
    try:
        return run(args, say, layout, split)
    except (Exception, KeyboardInterrupt) as e:  # every failure is one line; TORTOISE_DEBUG=1 shows the traceback
        return errors.report(prog, e, extra_input_errors=(UsageError,))
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":
    sys.exit(main())
