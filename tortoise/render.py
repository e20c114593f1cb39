"""The one render loop: long text -> clips -> files, shared by the command line, the web UI, the speech server and the
Ray reader. None of them re-implements a step of it.

Layers, from the inside out:
- :func:`render_clip`: one clip of text in one voice -> its candidates' audio, in memory (finite, float32, 24 kHz).
  The clip's seed is the run's seed plus its index (:func:`clip_seed`), so a clip's audio does not depend on which
  process renders it or in what order. :func:`clip_chunks` / :func:`text_chunks`: the same audio as it is produced
  (chunk by chunk on the streaming path), for front ends that send audio before a text is done (the speech server).
- Files: ``{voice}_{idx:02d}_{cand:02d}.wav`` and ``{voice}_combined.wav``. Every clip carries a record of what made
  it (:class:`ClipRecord`, in the WAV's comment field: text, voice, settings, models, seed), so a resumed run keeps
  a clip only when it was made from the same text, voice and settings, and renders a stale one again.
- :func:`plan`: for a :class:`RenderJob`, which clips to render and which to keep; refuses up front (before any
  model loads) to replace files a user did not ask to replace.
- :func:`run_plan`: the driver's half of a run: kept clips read back, rendered clips written (atomically) as a
  clip renderer delivers them, in any order, then each voice's combined file in text order. :func:`render` runs
  it with :func:`local_renderer` (clip by clip in this process, each on disk before the next starts); the Ray
  reader (:mod:`tortoise.distributed.reader`) runs it with a pool of Ray actors.
"""
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tortoise.options import GenerationOptions
from tortoise.progress import silent

SAMPLE_RATE = 24000
RECORD_TAG = "tortoise-tts-xpu"
RECORD_VERSION = 1
SEED_SPACE = 2 ** 32


class OutputError(RuntimeError):
    """A file could not be written; the message names the path and the operating system's reason."""


class StaleOutputError(ValueError):
    """Files of an earlier run would be replaced without being asked to (bad input: exit 2)."""


# ---------------------------------------------------------------- what makes a clip

@dataclass(frozen=True)
class Voice:
    """A voice group as the pipeline takes it: its file-name label (``alice``, ``alice-bob``, ``random``), clips
    or latents (both None: the random voice) and ``identity``, a digest of what it is made of."""
    label: str
    samples: list = None
    latents: tuple = None
    identity: str = ""


def voice_identity(names, samples, latents):
    """A digest of a voice's contents: the names and every clip / latent tensor."""
    h = hashlib.sha256("&".join(names).encode())
    for t in list(samples or []) + list(latents or []):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def voice_label(names):
    """The file-name form of a voice group: ``alice-bob`` for ``alice&bob`` (anything odd becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(names)).strip(".") or "voice"


def load_voice_group(names, voices_dirs=(), latent_widths=None):
    """Load one voice group (``["alice", "bob"]`` for ``alice&bob``) into a :class:`Voice`. ``latent_widths`` (the
    models' AR and diffusion latent widths, :func:`tortoise.utils.voices.expected_latent_widths`) checks a ``.pth``
    voice against the models that will use it."""
    from tortoise.utils.voices import load_voices
    samples, latents = load_voices(names, voices_dirs, latent_widths=latent_widths)
    return Voice(voice_label(names), samples, latents, voice_identity(names, samples, latents))


@dataclass(frozen=True)
class RenderSettings:
    """How every clip of a run is made. ``models`` identifies the networks and their settings (see
    :func:`tortoise.api.model_identity`); with the rest it decides whether an earlier clip can be kept."""
    options: GenerationOptions
    seed: int
    candidates: int = 1
    stream: bool = False
    models: dict = field(default_factory=dict)

    def key(self, text, voice):
        """A digest of everything but the seed that shaped a clip of ``text`` in ``voice``."""
        made_of = {"text": text, "voice": voice.identity, "options": dataclasses.asdict(self.options),
                   "candidates": self.candidates, "stream": self.stream, "models": self.models}
        return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()[:32]


def clip_seed(run_seed, index):
    """The seed of clip ``index``: the run's seed for clip 0, then one more per clip (so rendering a one-clip text with
    ``--seed N`` is ``tts(use_deterministic_seed=N)``, and no clip depends on who renders it)."""
    return (int(run_seed) + int(index)) % SEED_SPACE


# ---------------------------------------------------------------- one clip, in memory

def _streamed(session, voice, text, settings, index, progress):
    """The streaming fast path's chunks of one clip (:meth:`Session.stream` with the clip's seed and the options'
    sampling settings), as ``[S_i]`` float32 CPU tensors."""
    chunks = session.stream(text, voice.samples, voice.latents, settings.options,
                            seed=clip_seed(settings.seed, index), progress=progress)
    for chunk in chunks:
        yield chunk.reshape(-1).float().cpu()


def render_clip(session, voice, text, settings, index=0, progress=silent):
    """Candidates of one clip: a list of ``[S]`` float32 CPU tensors at 24 kHz, best first, all finite."""
    from tortoise.pipeline import ensure_finite
    seed = clip_seed(settings.seed, index)
    o = settings.options
    if settings.stream:
        audio = [torch.cat(list(_streamed(session, voice, text, settings, index, progress)))]
    else:
        speech = session.speak(text, voice.samples, voice.latents, o, k=settings.candidates, seed=seed,
                               progress=progress)
        audio = [a.reshape(-1).float().cpu() for a in speech.candidates]
    return [ensure_finite(a, "clip's audio") for a in audio]


def clip_chunks(session, voice, text, settings, index=0, progress=silent, candidate=0):
    """One clip's audio as it is produced: ``[S_i]`` float32 CPU tensors at 24 kHz, each finite. The streaming fast
    path (``settings.stream``) yields the decoder's chunks as they come; the full pipeline yields candidate
    ``candidate`` of the clip (0: the best of ``settings.candidates``) once, when it is done. Joined, the chunks are
    :func:`render_clip`'s audio of that candidate."""
    from tortoise.pipeline import ensure_finite
    if not 0 <= candidate < settings.candidates:
        raise ValueError(f"candidate {candidate} does not exist: a clip has candidates 0..{settings.candidates - 1}")
    if settings.stream:
        for chunk in _streamed(session, voice, text, settings, index, progress):
            yield ensure_finite(chunk, "streamed audio")
    else:
        yield render_clip(session, voice, text, settings, index, progress)[candidate]


def text_chunks(session, voice, texts, settings, progress=silent, candidate=0):
    """Every clip of ``texts`` (a text split into clips) in order, in memory, as ``(clip index, chunk)`` pairs as they
    are produced (see :func:`clip_chunks`); ``progress`` also gets ``("clips", done, total)`` between clips. Clip
    ``i`` is made with the seed :func:`clip_seed` gives it, so the audio equals the files :func:`render` writes for
    the same texts, voice and settings."""
    total = len(texts)
    for index, text in enumerate(texts):
        progress("clips", index, total)
        for chunk in clip_chunks(session, voice, text, settings, index, progress, candidate):
            yield index, chunk
    progress("clips", total, total)


# ---------------------------------------------------------------- files and their records

@dataclass(frozen=True)
class ClipRecord:
    """What made a clip file, kept in the file itself."""
    key: str
    seed: int
    run_seed: int
    text: str
    voice: str

    def to_comment(self):
        return json.dumps({RECORD_TAG: RECORD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_comment(cls, comment):
        try:
            data = json.loads(comment)
        except (TypeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get(RECORD_TAG) != RECORD_VERSION:
            return None
        try:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except KeyError:
            return None


def read_record(path):
    """The :class:`ClipRecord` a clip file carries, or None (no record, unreadable, not ours)."""
    import soundfile as sf
    try:
        with sf.SoundFile(str(path)) as f:
            return ClipRecord.from_comment(f.comment)
    except Exception:  # noqa: BLE001 - an unreadable file has no usable record; it is rendered again
        return None


def write_audio(path, audio, record=None, subtype="FLOAT"):
    """Write ``audio`` ([S] float32, 24 kHz) to ``path`` atomically, with ``record`` in its comment field. An OS
    error (disk full, no permission) is one line naming the path; nothing half-written is left."""
    from tortoise.utils.sound import save_wav
    try:
        save_wav(path, audio.reshape(1, -1), SAMPLE_RATE, subtype=subtype,
                 comment=record.to_comment() if record else None)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputError(f"cannot write {path}: {reason}; free some space or choose another output directory") \
            from None


def read_audio(path):
    from tortoise.utils.sound import load_audio
    return load_audio(str(path), SAMPLE_RATE, allow_silent=True).reshape(-1)


# ---------------------------------------------------------------- a run

MODES = ("new", "skip_existing", "regenerate", "overwrite")


@dataclass(frozen=True)
class Layout:
    """Where a run's files go, as format strings under the output directory. Fields: ``label`` (the voice group's
    file name), ``voice`` (its place in the run's voice list), ``idx`` (the clip), ``cand`` (the candidate), ``name``.
    ``single`` names the clip when there is one candidate, ``clip`` when there are several; ``combined`` is the
    voice's combined file (None: none is written)."""
    clip: str = "{label}_{idx:02d}_{cand:02d}.wav"
    single: str = "{label}_{idx:02d}_{cand:02d}.wav"
    combined: str = "{label}_combined.wav"
    name: str = ""

    def clip_path(self, out_dir, candidates, **fields):
        return Path(out_dir) / (self.clip if candidates > 1 else self.single).format(name=self.name, **fields)

    def combined_path(self, out_dir, label):
        return Path(out_dir) / self.combined.format(label=label, name=self.name) if self.combined else None


LAYOUT = Layout()  # tortoise-tts's own: {voice}_{clip:02d}_{candidate:02d}.wav and {voice}_combined.wav


def original_layout(script, output_name="combined"):
    """The file names of the original Tortoise's scripts: ``do_tts`` writes ``{voice}_{k}.wav`` (``k``: the voice's
    place in ``--voice a,b``), ``{voice}_{k}_{j}.wav`` with candidates, no combined file; ``read`` writes
    ``{voice}/{clip}.wav`` (``{voice}/{clip}/{j}.wav`` with candidates) and ``{voice}/{output_name}.wav``."""
    if script == "do_tts":
        return Layout("{label}_{voice}_{cand}.wav", "{label}_{voice}.wav", None)
    return Layout("{label}/{idx}/{cand}.wav", "{label}/{idx}.wav", "{label}/{name}.wav", output_name)


@dataclass(frozen=True)
class RenderJob:
    """One run: every text clip in every voice, into ``out_dir``.

    ``mode``: ``new`` refuses to replace any earlier file; ``skip_existing`` keeps clips made from the same text,
    voice and settings (renders stale and missing ones); ``regenerate`` renders the clips in ``regenerate`` and,
    like skip_existing, keeps the others when they are current; ``overwrite`` renders everything and removes the
    clips of an earlier, longer run. ``output`` also receives the combined audio (one voice only).
    ``keep_going``: a failing clip is reported and the others still rendered (the web UI), instead of stopping.
    ``combine``: write ``{voice}_combined.wav`` (the web UI skips it for a one-clip text); ``wav_subtype``: the
    files' sample format."""
    texts: tuple
    voices: tuple
    settings: RenderSettings
    out_dir: Path
    mode: str = "new"
    regenerate: frozenset = frozenset()
    output: Path = None
    keep_going: bool = False
    combine: bool = True          # write each voice's combined file
    wav_subtype: str = "FLOAT"    # 32-bit float as the original wrote; "PCM_16" for browsers
    layout: Layout = LAYOUT       # the files' names (original_layout: those of the original's scripts)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")

    def clip_path(self, label, idx, cand=0):
        voice = next((n for n, v in enumerate(self.voices) if v.label == label), 0)
        return self.layout.clip_path(self.out_dir, self.settings.candidates, label=label, voice=voice, idx=idx,
                                     cand=cand)

    def combined_path(self, label):
        """The voice's combined file, or None where the layout has none."""
        return self.layout.combined_path(self.out_dir, label)


@dataclass(frozen=True)
class ClipTask:
    """One clip of the plan: render it, or keep the file already there."""
    voice: Voice
    index: int
    text: str
    action: str          # "render" or "keep"
    reason: str = ""     # why it is rendered although a file exists ("stale", "asked", "unreadable")


def plan(job):
    """The clips of ``job`` in order, each to render or keep; raises :class:`StaleOutputError` when files of an
    earlier run would be replaced without being asked (``mode="new"``)."""
    settings = job.settings
    if job.mode == "new":
        clash = [p for p in _paths(job) if p.exists()]
        if clash:
            raise StaleOutputError(f"{clash[0]} exists (from an earlier run) and would be replaced: pass "
                                   "--skip_existing to resume, --regenerate N to redo clips, --overwrite to replace, "
                                   "or choose another -O / -o")
    tasks = []
    for voice in job.voices:
        for idx, text in enumerate(job.texts):
            tasks.append(_task(job, settings, voice, idx, text))
    return tasks


def _paths(job):
    for voice in job.voices:
        for idx in range(len(job.texts)):
            for cand in range(job.settings.candidates):
                yield job.clip_path(voice.label, idx, cand)
        if job.combined_path(voice.label) is not None:
            yield job.combined_path(voice.label)
    if job.output is not None:
        yield Path(job.output)


def _task(job, settings, voice, idx, text):
    if job.mode in ("new", "overwrite"):
        return ClipTask(voice, idx, text, "render")
    if job.mode == "regenerate" and idx in job.regenerate:
        return ClipTask(voice, idx, text, "render", "asked")
    files = [job.clip_path(voice.label, idx, c) for c in range(settings.candidates)]
    if not all(f.is_file() for f in files):
        return ClipTask(voice, idx, text, "render", "missing" if not any(f.is_file() for f in files) else "stale")
    key, seed = settings.key(text, voice), clip_seed(settings.seed, idx)
    records = [read_record(f) for f in files]
    current = all(r is not None and r.key == key and r.seed == seed for r in records)
    return ClipTask(voice, idx, text, "keep" if current else "render", "" if current else "stale")


def earlier_run_seed(job):
    """The run seed recorded in the first clip of ``job`` already on disk, or None (resume without --seed)."""
    for voice in job.voices:
        for idx in range(len(job.texts)):
            record = read_record(job.clip_path(voice.label, idx))
            if record is not None:
                return record.run_seed
    return None


@dataclass
class RenderResult:
    """What a run did: files written, clips kept, clips that failed (with the reason) and files removed."""
    written: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    failed: list = field(default_factory=list)   # [(label, index, message)]
    removed: list = field(default_factory=list)
    combined: dict = field(default_factory=dict)  # label -> combined audio [S]


def write_clip(job, task, audio):
    """Write the candidates of one rendered clip, each with its record; returns the paths."""
    record = ClipRecord(job.settings.key(task.text, task.voice), clip_seed(job.settings.seed, task.index),
                        job.settings.seed, task.text, task.voice.label)
    paths = []
    for cand, wav in enumerate(audio):
        path = job.clip_path(task.voice.label, task.index, cand)
        write_audio(path, wav, record, job.wav_subtype)
        paths.append(path)
    return paths


def combine(job, label, parts, result):
    """Write ``{label}_combined.wav`` (and the -o file) from the first candidates of the clips, in text order."""
    audio = torch.cat([p.reshape(-1) for p in parts])
    path = job.combined_path(label)
    if path is not None:
        write_audio(path, audio, subtype=job.wav_subtype)
        result.written.append(path)
    result.combined[label] = audio
    if job.output is not None:
        write_audio(job.output, audio, subtype=job.wav_subtype)
        result.written.append(Path(job.output))


def remove_leftovers(job, result):
    """``overwrite``: the clips of an earlier, longer run numbered past this run's last clip (every candidate) are
    removed, so they are never mistaken for part of it (in tortoise-tts's own layout)."""
    if job.layout != LAYOUT:
        return
    for voice in job.voices:
        prefix = f"{voice.label}_"
        for path in sorted(Path(job.out_dir).glob(f"{_glob_escape(prefix)}[0-9][0-9]_[0-9][0-9].wav")):
            idx, cand = path.stem[len(prefix):].split("_")
            if int(idx) >= len(job.texts) or int(cand) >= job.settings.candidates:
                path.unlink()
                result.removed.append(path)


def _glob_escape(text):
    return "".join(f"[{c}]" if c in "[]*?" else c for c in text)


def render(session, job, progress=silent, say=None, on_clip=None, tasks=None):
    """Run ``job`` in this process: every clip rendered or kept per :func:`plan`, written as it finishes, then each
    voice's combined file. ``say(message)`` gets one line per clip; ``on_clip(task, paths, error)`` (``error``: a
    failed clip's exception, else None) runs after every clip (kept clips included); ``progress`` is the pipeline's
    callback, plus ``("clips", done, total)`` as clips finish.

    A failing clip stops the run (its finished clips stay on disk) unless ``job.keep_going``; then it is reported
    in the result and the voice gets no combined file."""
    tasks = plan(job) if tasks is None else tasks
    return run_plan(job, tasks, local_renderer(session, job, progress, say), progress, say, on_clip)


def local_renderer(session, job, progress=silent, say=None):
    """The clip renderer of :func:`render`: the clips one after the other, in text order, with ``tts`` in this
    process (each is written by :func:`run_plan` before the next one starts)."""
    say = say or (lambda message: None)

    def clips(tasks):
        for n, task in enumerate(tasks):
            note = {"stale": " (the file there was made from other text, voice or settings)",
                    "asked": " (again, as asked)"}.get(task.reason, "")
            say(f"Rendering {task.voice.label}_{task.index:02d} ({n + 1} of {len(tasks)}){note}: {task.text}")
            try:
                audio = render_clip(session, task.voice, task.text, job.settings, task.index, progress)
            except Exception as e:  # noqa: BLE001 - run_plan records it (keep_going) or raises it
                yield task, None, e
            else:
                yield task, audio, None
    return clips


def run_plan(job, tasks, renderer, progress=silent, say=None, on_clip=None):
    """The driver's half of a run, shared by :func:`render` and the Ray reader (:mod:`tortoise.distributed`).

    Kept clips are read back; ``renderer(render_tasks)`` yields ``(task, audio, error)`` for every task to render,
    in any order, as each finishes (``audio``: :func:`render_clip`'s candidates, or None with the exception in
    ``error``); each finished clip is written at once, with its record (:func:`write_clip`). At the end each voice
    whose clips all exist gets its combined file, in text order, and ``overwrite`` removes an earlier, longer run's
    clips. A failed clip is raised unless ``job.keep_going`` (then recorded in ``result.failed``; its voice gets no
    combined file). ``progress("clips", done, total)`` counts finished clips, kept ones included."""
    say = say or (lambda message: None)
    result = RenderResult()
    total, done = len(tasks), 0
    parts = {}  # (label, index) -> first candidate's audio, None for a failed clip
    progress("clips", 0, total)
    for task in tasks:
        if task.action == "keep":
            path = job.clip_path(task.voice.label, task.index)
            say(f"Keeping {path.name}")
            parts[task.voice.label, task.index] = read_audio(path)
            result.kept.append(path)
            done += 1
            if on_clip is not None:
                on_clip(task, [], None)
            progress("clips", done, total)
    for task, audio, error in renderer([t for t in tasks if t.action != "keep"]):
        paths = []
        if error is None:
            paths = write_clip(job, task, audio)
            result.written.extend(paths)
            parts[task.voice.label, task.index] = audio[0]
        else:
            if not job.keep_going or isinstance(error, OutputError):
                raise error
            message = " ".join(str(error).split()) or type(error).__name__
            result.failed.append((task.voice.label, task.index, message))
            parts[task.voice.label, task.index] = None
        done += 1
        if on_clip is not None:
            on_clip(task, paths, error)
        progress("clips", done, total)
    for voice in job.voices:
        ordered = [parts.get((voice.label, t.index)) for t in tasks if t.voice.label == voice.label]
        if job.combine and ordered and all(p is not None for p in ordered):
            combine(job, voice.label, ordered, result)
    if job.mode == "overwrite":
        remove_leftovers(job, result)
    return result
