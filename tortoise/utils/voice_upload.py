"""Creating a voice from uploaded clips: validate every clip, sanitise the name, write without overwriting.

Shared by the front ends that accept uploads (the web UI and the speech server). A voice is a directory of clips
inside a voices directory (see `tortoise.utils.voices`). Nothing is written unless every clip passes; a new voice
appears in one rename, so a half-created voice is never visible. Each front end words its own way of asking to add
clips to an existing voice (`add_hint`).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ALLOWED_EXTENSIONS = ("wav", "mp3", "flac", "ogg")
FORMAT_EXTENSION = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}  # soundfile -> suffix
MAX_CLIP_BYTES = 25 * 1024 * 1024   # per file; Streamlit's own upload limit is set by `turtle` to match
MAX_CLIPS = 20
MIN_SECONDS = 1.0                   # shorter clips give the conditioning encoders almost nothing
MAX_SECONDS = 60.0                  # the AR conditioning uses 6 s per clip; minutes of audio only cost time
MAX_NAME_LENGTH = 64
RESERVED_NAMES = ("random", "all")  # words the voice syntax gives a meaning
_NAME_OK = re.compile(r"[A-Za-z0-9_.-]")


WEBUI_ADD_HINT = "tick 'add the clips to an existing voice'"


class UploadError(ValueError):
    """A refused upload; the message is one or more readable lines, each saying what to change."""


class VoiceExistsError(UploadError):
    """The voice name is taken (here or in another voices directory) and adding to it was not asked for."""


@dataclass(frozen=True)
class ClipInfo:
    filename: str      # the name the user gave
    extension: str     # from the detected format, not the user's name
    seconds: float
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class CreatedVoice:
    name: str
    path: Path
    files: tuple[str, ...]
    added_to_existing: bool


def _clean(raw: str) -> str:
    """Transliterate to ASCII, keep [A-Za-z0-9_.-], turn whitespace runs into '_', drop everything else,
    trim '.', '_' and '-' at the ends."""
    from unidecode import unidecode  # "Émile" -> "Emile" rather than "mile"
    text = re.sub(r"\s+", "_", unidecode(raw).strip())
    text = "".join(ch for ch in text if _NAME_OK.fullmatch(ch))
    text = re.sub(r"\.{2,}", ".", text)
    return text.strip("._-")


def sanitize_voice_name(raw: str) -> str:
    """A safe directory name for a voice, or UploadError saying why none can be made."""
    name = _clean(raw or "")[:MAX_NAME_LENGTH].strip("._-")
    if not name:
        raise UploadError("Give the voice a name made of letters, digits, '-' or '_'.")
    if name.lower() in RESERVED_NAMES:
        raise UploadError(f"'{name}' is reserved by the voice syntax; choose another name.")
    return name


def _clip_stem(filename: str, index: int) -> str:
    stem = _clean(Path(filename or "").stem)[:MAX_NAME_LENGTH]
    return stem or f"clip_{index:02d}"


def inspect_clip(filename: str, data: bytes) -> ClipInfo:
    """Check one uploaded clip (size, extension, decodable audio, length, not silent); UploadError if not."""
    label = filename or "unnamed file"
    if len(data) > MAX_CLIP_BYTES:
        raise UploadError(f"{label}: {len(data) / 2**20:.1f} MB is over the {MAX_CLIP_BYTES // 2**20} MB limit per "
                          f"clip; trim it or save it as flac/ogg/mp3.")
    ext = Path(filename or "").suffix.lower().lstrip(".")
    if ext not in ALLOWED_EXTENSIONS:
        raise UploadError(f"{label}: not an audio clip ({', '.join(ALLOWED_EXTENSIONS)} accepted).")
    try:
        info = sf.info(io.BytesIO(data))
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError on bad data
        raise UploadError(_unreadable(label, e)) from None
    detected = FORMAT_EXTENSION.get(info.format)
    if detected is None:
        raise UploadError(f"{label}: {info.format} audio is not accepted; convert it to wav or flac.")
    seconds = audio.shape[0] / float(rate) if rate else 0.0
    if seconds < MIN_SECONDS:
        raise UploadError(f"{label}: {seconds:.2f} s is too short; use clips of {MIN_SECONDS:g} to "
                          f"{MAX_SECONDS:g} s (about 10 s each is best).")
    if seconds > MAX_SECONDS:
        raise UploadError(f"{label}: {seconds:.1f} s is too long; cut it into clips of at most {MAX_SECONDS:g} s.")
    if not np.isfinite(audio).all() or float(np.abs(audio).max()) == 0.0:
        raise UploadError(f"{label}: the clip is silent or damaged; record it again.")
    return ClipInfo(filename=label, extension=detected, seconds=seconds, sample_rate=int(rate),
                    channels=int(audio.shape[1]))


def _unreadable(label: str, exc: Exception) -> str:
    """Words for a file libsndfile cannot decode. Its own message starts with the repr of the in-memory buffer
    ("Error opening <_io.BytesIO object at 0x...>: ..."), which means nothing to the user: only the reason is kept."""
    reason = getattr(exc, "error_string", None) or (str(exc).splitlines() or [""])[0]
    reason = re.sub(r"^Error opening <[^>]*>:\s*", "", reason).strip().rstrip(".")
    if not reason or re.search(r"not recogni[sz]ed|unknown format", reason, re.I):
        return (f"{label}: this is not an audio file (its contents are not wav, flac, ogg or mp3, whatever its name "
                f"says); upload a recording in one of those formats.")
    return f"{label}: a damaged or unsupported audio file ({reason}); export it again as wav or flac."


def validate_clips(clips: list[tuple[str, bytes]]) -> list[ClipInfo]:
    """Inspect every clip; one UploadError listing every problem (so the user fixes them all at once)."""
    if not clips:
        raise UploadError("Choose at least one clip to upload.")
    if len(clips) > MAX_CLIPS:
        raise UploadError(f"{len(clips)} clips is more than {MAX_CLIPS}; a few clips of about 10 s are enough.")
    infos, problems = [], []
    for filename, data in clips:
        try:
            infos.append(inspect_clip(filename, data))
        except UploadError as e:
            problems.append(str(e))
    if problems:
        raise UploadError("\n".join(problems))
    return infos


def _target_dir(voices_dir: Path, name: str) -> Path:
    root = voices_dir.resolve()
    target = (root / name).resolve()
    if target.parent != root:  # sanitising makes this impossible; kept as the last line of defence
        raise UploadError(f"The voice name '{name}' would leave {root}; choose a plain name.")
    return target


def _unique_names(infos: list[ClipInfo], taken: set[str]) -> list[str]:
    names = []
    for i, info in enumerate(infos):
        stem, n = _clip_stem(info.filename, i), 0
        candidate = f"{stem}.{info.extension}"
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}.{info.extension}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def create_voice(voices_dir: str | os.PathLike, raw_name: str, clips: list[tuple[str, bytes]],
                 known_voices: list[str] | tuple[str, ...] = (), add_to_existing: bool = False,
                 add_hint: str = WEBUI_ADD_HINT) -> CreatedVoice:
    """Write the clips as voice `raw_name` (sanitised) under `voices_dir`.

    An existing voice (in this directory or any other voices directory: `known_voices`) is never changed unless
    `add_to_existing`, and even then no existing file is overwritten. `add_hint` says how the caller's user asks to
    add clips to an existing voice.
    """
    if not str(voices_dir).strip():
        raise UploadError("Set the voices directory (in the sidebar) before uploading a voice.")
    name = sanitize_voice_name(raw_name)
    infos = validate_clips(clips)
    voices_dir = Path(voices_dir).expanduser()
    target = _target_dir(voices_dir, name)
    exists_here = target.exists()
    known_elsewhere = name in set(known_voices) and not exists_here
    if exists_here and not target.is_dir():
        raise UploadError(f"{target} exists and is not a voice directory; choose another name.")
    if (exists_here or known_elsewhere) and not add_to_existing:
        raise VoiceExistsError(f"A voice named '{name}' already exists; choose another name, or {add_hint}.")
    if known_elsewhere:
        raise VoiceExistsError(f"The voice '{name}' lives in another voices directory, not in {voices_dir}; "
                          f"choose another name.")
    data = [d for _, d in clips]
    if exists_here:
        taken = {p.name.lower() for p in target.iterdir()}
        names = _unique_names(infos, taken)
        for fname, blob in zip(names, data):
            with open(target / fname, "xb") as f:  # "x": fails instead of overwriting
                f.write(blob)
        return CreatedVoice(name, target, tuple(names), added_to_existing=True)
    voices_dir.mkdir(parents=True, exist_ok=True)
    names = _unique_names(infos, set())
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=voices_dir))
    try:
        for fname, blob in zip(names, data):
            (staging / fname).write_bytes(blob)
        try:
            os.rename(staging, target)  # atomic; fails if the name appeared meanwhile (never merges or overwrites)
        except OSError:
            raise VoiceExistsError(f"A voice named '{name}' appeared while uploading; choose another name.") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return CreatedVoice(name, target, tuple(names), added_to_existing=False)
