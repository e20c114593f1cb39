"""Voices for the speech server: the listing (``GET /v1/audio/voices``), loading with a small cache, and uploads
(``POST /v1/audio/voices``) checked as the web UI checks them (:mod:`tortoise.utils.voice_upload`).

Voices are read from disk on every listing, so a voice added to a voices directory (or uploaded) is usable at once and
after a restart. Uploaded clips are held in memory while they are checked (never spooled to a temporary file) and
written only into the upload directory, atomically, never over an existing file.
"""
from __future__ import annotations

import collections
import os
import threading

from tortoise.server.errors import APIError, bad_request
from tortoise.utils.original_voices import original_voice_names
from tortoise.utils.voices import (AUDIO_EXTENSIONS, LATENT_EXTENSION, RANDOM_VOICE, _voice_files, check_voice_name,
                                   get_voices, search_dirs, unknown_voice_error, voice_dir_names)
from tortoise.voices.catalog import clip_seconds
from tortoise.voices.catalog import describe_voice as catalog_entry

UPLOAD_FIELDS = ("audio_sample", "audio_samples", "files", "file")  # OpenAI's name first
MAX_UPLOAD_BYTES = 128 * 1024 * 1024  # one request; every clip is also held to the web UI's per-clip limit
VOICE_CACHE_SIZE = 8
ADD_HINT = "send add_to_existing=true to add the clips to it"


def voice_object(name, files, source="user"):
    """A voice as OpenAI's ``audio.voice`` object (id, name, created_at: its newest file's time, type) plus where it
    comes from (``source``: ``user`` for the voices directories, ``package``, ``original`` for the fetched original
    Tortoise voices, ``random``)."""
    if name == RANDOM_VOICE:
        kind, created, source = "random", 0, "random"
    else:
        kind = "latents" if files and all(f.endswith(LATENT_EXTENSION) for f in files) else "audio_sample"
        created = int(max((os.path.getmtime(f) for f in files), default=0))
    return {"id": name, "object": "audio.voice", "name": name, "type": kind, "created_at": created, "source": source}


def list_voices(voices_dirs):
    """Every voice a request may name, ``random`` first, then by name the voices of the voices directories, the
    package's and the fetched original voices (where two share a name the first in that order wins, as
    :func:`tortoise.utils.voices.get_voices` decides). The server's one voice listing."""
    found = get_voices(voices_dirs)
    sources = {}
    for directory, source in search_dirs(voices_dirs):
        for name in voice_dir_names(directory):
            sources.setdefault(name, source)
    return [voice_object(RANDOM_VOICE, [])] + [voice_object(name, found[name], sources.get(name, "user"))
                                               for name in sorted(found)]


def voice_list_body(voices):
    """The answer of ``GET /v1/audio/voices``: OpenAI's list (``object``, ``data``) and, beside it, the shape Open WebUI
    and Kokoro-FastAPI's clients read (``voices: [{id, name}]``); without it they fall back to OpenAI's six names."""
    return {"object": "list", "data": voices, "voices": [{"id": v["id"], "name": v["name"]} for v in voices]}


def describe_voice(name, voices_dirs):
    """``GET /v1/audio/voices/{name}``: the voice object plus where it is read from and what it holds: each clip's
    file name and length (``seconds`` None where a header cannot be read), the latent files, the total length."""
    if name == RANDOM_VOICE:
        return {**voice_object(RANDOM_VOICE, []), "clips": [], "latents": [], "seconds": 0.0}
    found = [(os.path.join(d, name), source) for d, source in search_dirs(voices_dirs) if name in voice_dir_names(d)]
    entry = catalog_entry(name, *found[0]) if found else None  # the first in search order is the one used
    if entry is None:
        raise APIError(404, f"no voice {name!r}: GET /v1/audio/voices lists the voices", param="voice",
                       code="voice_not_found")
    files = _voice_files(entry.directory)
    clips = [{"file": os.path.basename(f), "seconds": clip_seconds(f)} for f in files
             if f.lower().endswith(AUDIO_EXTENSIONS)]
    latents = [os.path.basename(f) for f in files if f.endswith(LATENT_EXTENSION)]
    return {**voice_object(name, files, entry.source), "kind": entry.kind, "clips": clips, "latents": latents,
            "seconds": entry.seconds}


def unknown_voice(name, known):
    if name in original_voice_names():  # not fetched (or damaged): the shared message says how to fetch them
        return bad_request(str(unknown_voice_error(name, known)), param="voice", code="voice_not_found")
    shown = ", ".join(sorted(known)[:40])
    more = f" and {len(known) - 40} more" if len(known) > 40 else ""
    return bad_request(f"unknown voice {name!r}: known voices are random{', ' if shown else ''}{shown}{more} "
                       "(GET /v1/audio/voices lists them; POST /v1/audio/voices adds one)", param="voice",
                       code="voice_not_found")


class VoiceLoader:
    """Loads voice groups into :class:`tortoise.render.Voice`, keeping the last few; a voice whose files changed
    (added, removed, rewritten) is loaded again."""

    def __init__(self, voices_dirs, size=VOICE_CACHE_SIZE):
        self.voices_dirs = list(voices_dirs)
        self.size = size
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    def load(self, names, latent_widths=None):
        """The :class:`~tortoise.render.Voice` of ``names`` (400 for an unknown or unusable voice; a ``.pth`` voice
        must hold latents of ``latent_widths``, see :func:`tortoise.utils.voices.expected_latent_widths`)."""
        from tortoise.render import load_voice_group
        from tortoise.utils.voices import VoiceError
        known = get_voices(self.voices_dirs)
        for name in names:
            if name == RANDOM_VOICE:
                continue
            try:
                check_voice_name(name)
            except VoiceError:
                raise bad_request(f"invalid voice name {name!r}: a voice is a plain name (no path separators, no "
                                  "leading dot)", param="voice") from None
            if name not in known:
                raise unknown_voice(name, known)
        key = (tuple(names), latent_widths, tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns)
                                                  for n in names if n != RANDOM_VOICE for f in known[n]))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            voice = load_voice_group(list(names), self.voices_dirs, latent_widths=latent_widths)
        except (VoiceError, ValueError) as e:
            raise bad_request(str(e), param="voice") from None
        with self._lock:
            self._cache[key] = voice
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return voice


# ---------------------------------------------------------------- uploads

async def _limited(request, limit):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the upload is over {limit // 2**20} MB: send fewer or shorter clips per request "
                                "(add more with add_to_existing=true)", code="upload_too_large")
        yield chunk


async def read_upload(request, limit=MAX_UPLOAD_BYTES):
    """A ``multipart/form-data`` upload read into memory: (text fields, [(filename, bytes)] of every file part)."""
    from starlette.formparsers import MultiPartException, MultiPartParser
    from tortoise.utils.voice_upload import MAX_CLIPS

    class InMemory(MultiPartParser):
        spool_max_size = limit + 1  # Starlette spools larger parts to a temporary file: never, here

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("send the voice as multipart/form-data with a name field and one or more audio_sample "
                          "files (curl -F name=alice -F audio_sample=@clip.wav)", code="invalid_content_type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the upload is over {limit // 2**20} MB: send fewer or shorter clips per request "
                            "(add more with add_to_existing=true)", code="upload_too_large")
    parser = InMemory(request.headers, _limited(request, limit), max_files=MAX_CLIPS + 1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise bad_request(f"the multipart body cannot be read ({e}): send name and audio_sample fields") from None
    fields, clips = {}, []
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        elif key in UPLOAD_FIELDS:
            clips.append((value.filename or "clip.wav", await value.read()))
        else:
            raise bad_request(f"unexpected file field {key!r}: send clips as audio_sample", param=key)
    await form.close()
    return fields, clips


def parse_flag(value, name):
    if value is None:
        return False
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise bad_request(f"{name} must be true or false, not {value!r}", param=name)


def create_voice(upload_dir, voices_dirs, fields, clips):
    """Write an uploaded voice into ``upload_dir``; returns its voice object with the files written."""
    from tortoise.utils.voice_upload import UploadError, VoiceExistsError, create_voice as write_voice
    unknown = set(fields) - {"name", "add_to_existing", "consent", "type"}
    if unknown:
        raise bad_request(f"unexpected field {sorted(unknown)[0]!r}: send name, audio_sample and optionally "
                          "add_to_existing", param=sorted(unknown)[0])
    if fields.get("type", "audio_sample") != "audio_sample":
        raise bad_request("only voices from audio samples can be made (type audio_sample)", param="type")
    if "name" not in fields:
        raise bad_request("name is required: the voice's name", param="name")
    add = parse_flag(fields.get("add_to_existing"), "add_to_existing")
    known = list(get_voices(voices_dirs))
    try:
        made = write_voice(upload_dir, fields["name"], clips, known_voices=known, add_to_existing=add,
                           add_hint=ADD_HINT)
    except VoiceExistsError as e:
        raise APIError(409, " ".join(str(e).split()), param="name", code="voice_exists") from None
    except UploadError as e:
        raise bad_request("; ".join(line for line in str(e).splitlines() if line), param="audio_sample") from None
    files = sorted(str(p) for p in made.path.iterdir() if p.is_file())
    return {**voice_object(made.name, files), "files": list(made.files), "added_to_existing": made.added_to_existing}
