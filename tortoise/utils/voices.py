"""Voice directories: find voices, load their clips or saved latents, combine them.

A voice is a directory named after it, holding reference clips (wav / mp3 / flac / ogg) or exactly one ``.pth`` file
with the tuple (autoregressive latent, diffusion latent) written by ``tortoise-get-conditioning-latents``.
Voices are searched in the caller's directories first, then in the package's own ``tortoise/voices`` directory
(which ships no recordings), then among the original Tortoise voices once ``tortoise-voices fetch`` has fetched them
(:mod:`tortoise.utils.original_voices`). ``random`` means the random latent generators; ``a&b`` averages voices.

Names and semantics follow the original ``tortoise.utils.audio`` (``get_voices``, ``load_voice``, ``load_voices``);
differences: a voice name can never leave its directory, bad input raises :class:`VoiceError` with the fix in its
message, and ``random`` cannot be combined with other voices.
"""
import os
from glob import escape, glob

import torch

from tortoise.utils.checkpoints import model_config
from tortoise.utils.original_voices import fetch_hint, fetched_marker, is_fetched, original_voice_names, originals_dir
from tortoise.utils.sound import load_audio

BUILTIN_VOICES_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "voices")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg")
LATENT_EXTENSION = ".pth"
AR_SAMPLE_RATE = 22050  # the conditioning clips feed the 22.05 kHz mel of the autoregressive model
RANDOM_VOICE = "random"


class VoiceError(ValueError):
    """A voice that cannot be found or used; the message says how to fix it."""


def check_voice_name(voice):
    """Refuse a name that could address anything but a direct subdirectory of a voices directory."""
    if not isinstance(voice, str) or not voice.strip():
        raise VoiceError("Empty voice name: pass a voice such as --voice random, or list them with --list_voices.")
    bad = (voice in (".", "..") or voice.startswith(".") or "/" in voice or "\\" in voice or os.sep in voice
           or (os.altsep and os.altsep in voice) or "\0" in voice or os.path.isabs(voice))
    if bad:
        raise VoiceError(f"Invalid voice name {voice!r}: a voice is the name of a directory inside a voices directory "
                         "(no path separators, no leading dot); pass --voices_dir to add a directory of voices.")
    return voice


def _voice_files(voice_dir):
    """Sorted clip and latent files directly inside one voice directory."""
    files = []
    for ext in AUDIO_EXTENSIONS + (LATENT_EXTENSION,):
        files += glob(os.path.join(escape(voice_dir), f"*{ext}"))  # escape: a name may hold [ ] * ?
    return sorted(f for f in files if os.path.isfile(f))


def search_dirs(extra_voice_dirs=(), cache_dir=None):
    """[(directory, source)] in search order: the caller's ("user"), the package's ("package"), then the fetched
    original voices ("original", only when complete; ``cache_dir`` defaults to ``$TORTOISE_VOICES_DIR``)."""
    extra = [extra_voice_dirs] if isinstance(extra_voice_dirs, str) else list(extra_voice_dirs or [])
    extra = [os.path.expanduser(str(d)) for d in extra]
    for d in extra:
        if not os.path.isdir(d):
            raise VoiceError(f"Voices directory {d!r} does not exist: create it (one subdirectory per voice) or fix "
                             "--voices_dir.")
    dirs = [(d, "user") for d in extra]
    if os.path.isdir(BUILTIN_VOICES_DIR):
        dirs.append((BUILTIN_VOICES_DIR, "package"))
    if fetched_marker(cache_dir) is not None:
        dirs.append((str(originals_dir(cache_dir)), "original"))
    return dirs


def _search_dirs(extra_voice_dirs):
    return [d for d, _ in search_dirs(extra_voice_dirs)]


def voice_dir_names(directory):
    """The voice names (subdirectories) of one voices directory, sorted; hidden ones and __pycache__ skipped."""
    return [sub for sub in sorted(os.listdir(directory))
            if not sub.startswith(".") and sub != "__pycache__" and os.path.isdir(os.path.join(directory, sub))]


def get_voices(extra_voice_dirs=()):
    """Map each voice name to its files. The caller's directories come first and win over the package's own, which
    win over the fetched original voices."""
    voices = {}
    for d in _search_dirs(extra_voice_dirs):
        for sub in voice_dir_names(d):
            if sub not in voices:
                voices[sub] = _voice_files(os.path.join(d, sub))
    return voices


def unknown_voice_error(voice, known):
    if voice in original_voice_names():
        if not is_fetched():
            return VoiceError(f"Voice {voice!r} is one of the original Tortoise voices, which are not downloaded: "
                              f"{fetch_hint()}.")
        return VoiceError(f"Voice {voice!r} is one of the original Tortoise voices but is missing from the fetched "
                          "ones: restore them with tortoise-voices fetch --force.")
    shown = ", ".join(sorted(known)[:40]) or "(none)"
    more = f" and {len(known) - 40} more" if len(known) > 40 else ""
    return VoiceError(f"Unknown voice {voice!r}. Known voices: random, {shown}{more}. Add one as a directory of clips "
                      "under a --voices_dir, or pick one with --list_voices.")


def expected_latent_widths(models_dir=None):
    """(autoregressive latent width, diffusion latent width) of the models in ``models_dir``: the AR model's
    ``model_dim`` and twice the diffusion model's ``model_channels``, from the released configs or the directory's
    ``config.json`` (1024 and 2048 for the released models)."""
    return (int(model_config("autoregressive", models_dir)["model_dim"]),
            2 * int(model_config("diffusion", models_dir)["model_channels"]))


def _latent_shape_ok(t, width):
    if t.dim() == 1:
        return width is None or t.shape[0] == width
    return t.dim() == 2 and t.shape[0] == 1 and (width is None or t.shape[1] == width)


def check_latents(latents, path, widths=None):
    """Refuse a latent pair that the models cannot use: not two float tensors shaped ``[1, W]`` (or ``[W]``), widths
    other than ``widths`` (see :func:`expected_latent_widths`) when given, or NaN / infinite values.
    Returns the pair as ``[1, W]`` float tensors."""
    auto, diffusion = latents
    aw, dw = widths if widths is not None else (None, None)
    if not all(t.is_floating_point() and _latent_shape_ok(t, w) for t, w in ((auto, aw), (diffusion, dw))):
        aw, dw = aw or "W", dw or "W'"
        want = f"an autoregressive latent [1, {aw}] (or [{aw}]) and a diffusion latent [1, {dw}] (floats)"
        raise VoiceError(f"Voice latents {path!r} hold shapes {list(auto.shape)} and {list(diffusion.shape)} "
                         f"({auto.dtype}, {diffusion.dtype}); these models expect {want}: regenerate the file with "
                         "tortoise-get-conditioning-latents for these models.")
    if not (torch.isfinite(auto).all() and torch.isfinite(diffusion).all()):
        raise VoiceError(f"Voice latents {path!r} hold NaN or infinite values: regenerate the file with "
                         "tortoise-get-conditioning-latents from clean clips.")
    return tuple(t.reshape(1, -1) for t in (auto, diffusion))


def load_latents(path, widths=None):
    """Read a saved (autoregressive, diffusion) latent pair without running any pickled code, and check it
    (:func:`check_latents`; ``widths`` from :func:`expected_latent_widths` when the models are known)."""
    try:
        latents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or code-carrying pickle: refuse, naming the file
        raise VoiceError(f"Cannot read voice latents {path!r} ({type(e).__name__}): regenerate it with "
                         "tortoise-get-conditioning-latents.") from None
    ok = (isinstance(latents, (tuple, list)) and len(latents) == 2
          and all(isinstance(t, torch.Tensor) for t in latents))
    if not ok:
        raise VoiceError(f"{path!r} does not hold an (autoregressive, diffusion) latent pair: regenerate it with "
                         "tortoise-get-conditioning-latents.")
    return check_latents(latents, path, widths)


def _load_clip(path, sampling_rate):
    try:
        return load_audio(path, sampling_rate)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VoiceError(f"Cannot read voice clip {path!r}: {msg}. Replace or remove the file.") from None


def load_voice(voice, extra_voice_dirs=(), sampling_rate=AR_SAMPLE_RATE, latent_widths=None):
    """Return (clips, None) for a voice of clips, (None, latents) for a voice of one .pth, (None, None) for random.

    Clips are ``[1, N]`` float tensors at ``sampling_rate`` (22.05 kHz, what ``TextToSpeech`` expects); a clip with
    NaN or infinite samples is refused. Latents are ``[1, W]`` pairs, checked against ``latent_widths``
    (``expected_latent_widths(models_dir)``) when given.
    """
    if voice == RANDOM_VOICE:
        return None, None
    check_voice_name(voice)
    voices = get_voices(extra_voice_dirs)
    if voice not in voices:
        raise unknown_voice_error(voice, voices)
    paths = voices[voice]
    latents = [p for p in paths if p.endswith(LATENT_EXTENSION)]
    clips = [p for p in paths if not p.endswith(LATENT_EXTENSION)]
    if latents and not clips and len(latents) == 1:
        return None, load_latents(latents[0], latent_widths)
    if latents:
        raise VoiceError(f"Voice {voice!r} mixes clips and .pth latents (or holds several .pth files): keep either "
                         "clips or a single .pth in its directory.")
    if not clips:
        raise VoiceError(f"Voice {voice!r} has no clips: put wav/mp3/flac/ogg files (about 10 s each) in its "
                         "directory.")
    return [_load_clip(p, sampling_rate) for p in clips], None


def average_latents(latents):
    """Average several (autoregressive, diffusion) latent pairs element-wise, as the original does for a&b."""
    auto = torch.stack([pair[0] for pair in latents], dim=0).mean(dim=0)
    diffusion = torch.stack([pair[1] for pair in latents], dim=0).mean(dim=0)
    return auto, diffusion


def load_voices(voices, extra_voice_dirs=(), sampling_rate=AR_SAMPLE_RATE, latent_widths=None):
    """Combine several voices (the parts of ``a&b``): clips are pooled, latents averaged; returns (clips, latents).
    ``latent_widths``: see :func:`load_voice`."""
    voices = list(voices)
    if RANDOM_VOICE in voices:
        if len(voices) > 1:
            raise VoiceError("The random voice cannot be combined with other voices: use --voice random alone.")
        return None, None
    clips, latents = [], []
    for voice in voices:
        clip, latent = load_voice(voice, extra_voice_dirs, sampling_rate, latent_widths)
        if clip is not None:
            clips.extend(clip)
        else:
            latents.append(latent)
    if clips and latents:
        raise VoiceError(f"Cannot combine voices of clips with voices of .pth latents ({'&'.join(voices)}): compute "
                         "latents for every part with tortoise-get-conditioning-latents, or use clips for all.")
    if latents:
        shapes = {tuple(t.shape for t in pair) for pair in latents}
        if len(shapes) > 1:
            raise VoiceError(f"Cannot average the latents of {'&'.join(voices)}: their shapes differ "
                             f"({', '.join(str([list(s) for s in pair]) for pair in sorted(shapes))}), so they were "
                             "made for different models; regenerate them with tortoise-get-conditioning-latents.")
        return None, average_latents(latents)
    return clips, None


def parse_voice_selection(voice_str, known_voices):
    """Parse a ``--voice`` value: ``a,b`` renders each, ``a&b`` merges, ``all`` renders every known voice.

    Returns a list of voice groups (each a list of names). Unknown names raise a VoiceError listing the known ones.
    """
    if voice_str is None or not voice_str.strip():
        raise VoiceError("Empty --voice: pass a voice name, 'random', 'all', 'a&b' or 'a,b'.")
    if voice_str.strip() == "all":
        if not known_voices:
            raise VoiceError("--voice all found no voices: add voice directories with --voices_dir, or fetch the "
                             "original Tortoise voices with tortoise-voices fetch.")
        return [[v] for v in sorted(known_voices)]
    groups = []
    for part in voice_str.split(","):
        names = [n.strip() for n in part.split("&")]
        for name in names:
            if name == RANDOM_VOICE:
                continue
            check_voice_name(name)
            if name not in known_voices:
                raise unknown_voice_error(name, known_voices)
        if RANDOM_VOICE in names and len(names) > 1:
            raise VoiceError("The random voice cannot be combined with other voices: use --voice random alone.")
        groups.append(names)
    return groups
