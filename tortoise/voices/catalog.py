"""Every voice that can be found, in search order, with where it comes from: what ``tortoise-voices list`` prints and
what a speech server lists (``GET /v1/audio/voices``).

The search is :func:`tortoise.utils.voices.search_dirs`: the caller's directories ("user"), the package's own
``tortoise/voices`` ("package"), then the fetched original voices ("original"). A name found twice is used from the
first directory; the later ones are listed only with ``include_hidden``.
"""
import dataclasses
import os

from tortoise.utils.voices import AUDIO_EXTENSIONS, LATENT_EXTENSION, _voice_files, search_dirs, voice_dir_names

CLIPS, LATENTS, EMPTY, MIXED = "clips", "latents", "empty", "mixed"


@dataclasses.dataclass(frozen=True)
class VoiceInfo:
    name: str
    source: str                  # "user", "package" or "original"
    directory: str               # the voice's own directory
    kind: str                    # "clips", "latents" (one .pth), "empty" or "mixed" (unusable: clips and .pth)
    clips: int                   # number of audio clips
    seconds: float = None        # their total length; None when a clip cannot be read (or there are none)
    hidden_by: str = None        # the directory of the voice of the same name that is used instead

    def to_dict(self):
        return dataclasses.asdict(self)


def clip_seconds(path):
    """Length of one clip from its header (no decoding of the audio), or None when it cannot be read."""
    import soundfile as sf
    try:
        info = sf.info(path)
    except Exception:  # soundfile raises LibsndfileError / RuntimeError / TypeError on unreadable files
        return None
    return info.frames / info.samplerate if info.samplerate else None


def describe_voice(name, directory, source, hidden_by=None):
    files = _voice_files(directory)
    clips = [f for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    latents = [f for f in files if f.endswith(LATENT_EXTENSION)]
    if clips and latents or len(latents) > 1:
        kind = MIXED
    elif latents:
        kind = LATENTS
    else:
        kind = CLIPS if clips else EMPTY
    lengths = [clip_seconds(f) for f in clips]
    seconds = sum(lengths) if lengths and None not in lengths else None
    return VoiceInfo(name, source, directory, kind, len(clips), seconds, hidden_by)


def voice_catalog(extra_voice_dirs=(), cache_dir=None, include_hidden=False):
    """[VoiceInfo] for every voice found, in search order (``random`` is not a directory and is not listed).

    ``extra_voice_dirs``: the user's voices directories (searched first); ``cache_dir``: the voices cache holding the
    fetched originals (default ``$TORTOISE_VOICES_DIR``). Raises VoiceError for a user directory that does not exist.
    """
    found, out = {}, []
    for directory, source in search_dirs(extra_voice_dirs, cache_dir):
        for name in voice_dir_names(directory):
            path = os.path.join(directory, name)
            if name in found:
                if include_hidden:
                    out.append(describe_voice(name, path, source, hidden_by=found[name]))
                continue
            found[name] = path
            out.append(describe_voice(name, path, source))
    return out
