"""Exit codes and one-line error messages shared by the console scripts.

Every console script (``tortoise-tts``, ``tortoise-detect``, ``tortoise-get-conditioning-latents``, ``turtle``,
``python -m xpu``) exits with:

    0    success
    1    a failure at run time (out of memory, a write that failed, non-finite output, a crash)
    2    bad input: arguments, text, voices, clips, checkpoints or a device that is absent; the message says the fix
    130  interrupted (Ctrl+C)
"""
import os

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "TORTOISE_DEBUG"  # set to see the traceback instead of the one-line message
MAX_MESSAGE = 600


PACKAGE = "tortoise-tts-xpu"


def install_hint(extra):
    """The pip command that installs this package's optional extra ``extra``: the extra's requirements as the
    installed package declares them (the package comes from a checkout, not from PyPI, so ``pip install
    'tortoise-tts-xpu[...]'`` would find nothing), else the checkout's own ``pip install -e '.[extra]'``."""
    from importlib import metadata
    try:
        requirements = metadata.requires(PACKAGE) or []
    except metadata.PackageNotFoundError:
        requirements = []
    wanted = [r.split(";")[0].strip() for r in requirements if f'extra == "{extra}"' in r.replace("'", '"')]
    if not wanted:
        return f"pip install -e '.[{extra}]' (in the {PACKAGE} checkout)"
    return "pip install " + " ".join(f"'{r}'" for r in wanted)


def input_error_types():
    """The exception classes that mean "the user's input is wrong" (imported lazily: no torch at import)."""
    from tortoise.utils.sound import AudioError
    from tortoise.utils.checkpoints import CheckpointError
    from tortoise.utils.voices import VoiceError
    from xpu.device import DeviceUnavailable
    return (VoiceError, AudioError, CheckpointError, DeviceUnavailable, ValueError)


def is_input_error(exc, extra=()):
    return isinstance(exc, input_error_types() + tuple(extra))


def exit_code(exc, extra_input_errors=()):
    """EXIT_INTERRUPTED for Ctrl+C, EXIT_BAD_INPUT for bad input, else EXIT_FAILED."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if is_input_error(exc, extra_input_errors) else EXIT_FAILED


def one_line(exc):
    """The exception's message on one line; an OSError as "PATH: the OS's reason"."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def report(prog, exc, extra_input_errors=(), stream=None):
    """Print ``prog: error: ...`` in one line (runtime failures name their type and how to see the traceback) and
    return the exit code. Re-raises when ``$TORTOISE_DEBUG`` is set."""
    import sys
    if os.environ.get(DEBUG_ENV) and not isinstance(exc, KeyboardInterrupt):
        raise exc
    code = exit_code(exc, extra_input_errors)
    stream = sys.stderr if stream is None else stream
    if code == EXIT_INTERRUPTED:
        print(f"{prog}: interrupted", file=stream)
    elif code == EXIT_BAD_INPUT:
        print(f"{prog}: error: {one_line(exc)}", file=stream)
    else:
        print(f"{prog}: error: {type(exc).__name__}: {one_line(exc)} (set {DEBUG_ENV}=1 for the traceback)",
              file=stream)
    return code
