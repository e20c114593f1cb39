"""One press of "Generate": split the text and hand every (voice, chunk) to the shared render loop
(`tortoise.render`), which saves each clip as it finishes and keeps going when one clip fails. No Streamlit here, so
it is testable on its own.

Files (one directory per run, so nothing earlier is overwritten; 16-bit PCM, which plays in every browser):
    OUTPUT_DIR/<run id>/{voice}_{idx:02d}_{cand:02d}.wav   every chunk and candidate, 24 kHz
    OUTPUT_DIR/<run id>/{voice}_combined.wav              the chunks joined (first candidates), when the text was split
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tortoise.webui.settings import atomic_write_text

SAMPLE_RATE = 24000  # every output of TextToSpeech is 24 kHz
Progress = Callable[[str, int, int], None]  # (message, clips done, clips in total)


@dataclass
class Job:
    """What to render; `overrides` go to tts_with_preset unchanged (only the ones the user set)."""
    text: str
    groups: list                    # [[voice, ...], ...]: each group is rendered; names in a group are blended
    preset: str
    candidates: int = 1
    seed: int | None = None
    min_chars_to_split: int = 200
    extra_voices_dirs: list = field(default_factory=list)
    overrides: dict = field(default_factory=dict)


@dataclass
class Clip:
    voice: str
    index: int                      # chunk of the text
    candidate: int
    text: str
    file: str | None = None         # path relative to the run directory
    error: str | None = None


@dataclass
class RunRecord:
    """One history entry: everything needed to show the run again after a rerun or a restart."""
    run_id: str
    created: str
    text: str
    voices: list
    preset: str
    seed: int
    run_dir: str
    clips: list = field(default_factory=list)       # [Clip as dict]
    combined: list = field(default_factory=list)    # [{"voice", "candidate", "file"}]
    errors: list = field(default_factory=list)      # run-level messages (voice could not be loaded, ...)
    seconds: float = 0.0
    finished: bool = False                          # False while running, or if the run was interrupted

    def to_dict(self) -> dict:
        return asdict(self)


def readable_error(exc: BaseException) -> str:
    """One or two lines for the page: the exception's own message (ours carry the fix), never a traceback; the
    command line's flags in it are replaced by the page's controls."""
    from tortoise.webui.wording import page_wording
    msg = page_wording(str(exc).strip())
    if isinstance(exc, KeyError) and msg.startswith("'"):
        msg = f"missing key {msg}"
    if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
        return (f"Out of memory: {msg.splitlines()[0] if msg else 'allocation failed'}. Tick 'Low VRAM', lower the "
                f"candidates or pick a faster preset.")
    if not msg:
        return f"{type(exc).__name__} (no message)"
    lines = msg.splitlines()
    text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    return text if len(text) <= 600 else text[:597] + "..."


def split_text(text: str, min_chars_to_split: int) -> list[str]:
    """Below `min_chars_to_split` characters the text is one clip; above, chunks of about that many characters."""
    from tortoise.utils.text import split_and_recombine_text
    text = text.strip()
    if not text:
        raise ValueError("Type some text to speak first.")
    if len(text) < min_chars_to_split:
        return [text]
    chunks = split_and_recombine_text(text, desired_length=min_chars_to_split, max_length=min_chars_to_split + 100)
    return chunks or [text]


def new_run_id(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _load_group(group: list[str], job: Job, tts=None):
    from tortoise.render import load_voice_group
    from tortoise.utils.voices import expected_latent_widths
    models_dir = getattr(tts, "models_dir", None)  # a .pth voice must fit the loaded models
    widths = expected_latent_widths(models_dir) if models_dir else None
    return load_voice_group(group, job.extra_voices_dirs, latent_widths=widths)


def run_job(tts, job: Job, output_dir: str | os.PathLike, progress: Progress | None = None,
            on_update: Callable[[RunRecord], None] | None = None,
            on_stage: Callable[[str, int, int], None] | None = None) -> RunRecord:
    """Render every voice group and chunk through the shared render loop (:mod:`tortoise.render`) into a fresh run
    directory; a failing clip is recorded and the others still rendered and saved.

    `on_update(record)` runs after every clip (before `progress`), so an interrupted run keeps what it finished;
    `on_stage(stage, done, total)` receives the pipeline's own progress (see :mod:`tortoise.progress`)."""
    from tortoise import render
    from tortoise.options import preset_options
    progress = progress or (lambda message, done, total: None)
    on_update = on_update or (lambda record: None)
    started = time.monotonic()
    chunks = split_text(job.text, job.min_chars_to_split)
    options = preset_options(job.preset, **job.overrides)
    seed = job.seed if job.seed is not None else random.randint(0, 2**32 - 1)
    run_id = new_run_id()
    run_dir = Path(output_dir).expanduser().resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    record = RunRecord(run_id=run_id, created=_dt.datetime.now().isoformat(timespec="seconds"), text=job.text,
                       voices=["&".join(g) for g in job.groups], preset=job.preset, seed=seed, run_dir=str(run_dir))
    total = len(job.groups) * len(chunks)
    on_update(record)
    voices, names = [], {}
    for group in job.groups:
        try:
            progress(f"Loading voice {'&'.join(group)}", 0, total)
            voices.append(_load_group(group, job, tts))
            names[voices[-1].label] = "&".join(group)
        except Exception as e:
            record.errors.append(f"Voice {'&'.join(group)}: {readable_error(e)}")
            on_update(record)
    settings = render.RenderSettings(options, seed, job.candidates)
    rjob = render.RenderJob(tuple(chunks), tuple(voices), settings, run_dir, keep_going=True,
                            combine=len(chunks) > 1, wav_subtype="PCM_16")  # 16-bit PCM plays in every browser
    done = (len(job.groups) - len(voices)) * len(chunks)  # groups that could not be loaded count as done

    def before_clip(stage, n, _total):
        if stage == "clips" and n < _total:
            task = tasks[n]
            progress(f"Voice {names.get(task.voice.label, task.voice.label)}: clip {task.index + 1} of {len(chunks)}",
                     done + n, total)
        elif stage != "clips" and on_stage is not None:
            on_stage(stage, n, _total)

    def after_clip(task, paths, error):
        voice = names.get(task.voice.label, task.voice.label)
        if error is not None:
            record.clips.append(asdict(Clip(voice, task.index, 0, task.text, error=readable_error(error))))
        for cand, path in enumerate(paths):
            record.clips.append(asdict(Clip(voice, task.index, cand, task.text, file=Path(path).name)))
        on_update(record)

    tasks = render.plan(rjob)
    result = render.render(tts, rjob, before_clip, on_clip=after_clip, tasks=tasks)
    for label in result.combined:
        record.combined.append({"voice": names.get(label, label), "candidate": 0,
                                "file": rjob.combined_path(label).name})
    record.seconds, record.finished = round(time.monotonic() - started, 2), True
    on_update(record)
    progress("Done", total, total)
    return record


# ---- history: kept in st.session_state, backed by a JSON index beside the runs ----------------------------------

HISTORY_FILE = "turtle_history.json"
HISTORY_LIMIT = 50


def load_history(output_dir: str | os.PathLike) -> list[dict]:
    """Entries of earlier runs whose directory still exists (newest first); a damaged index gives []."""
    import json
    path = Path(output_dir).expanduser() / HISTORY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict) and "run_dir" in e and Path(e["run_dir"]).is_dir()][:HISTORY_LIMIT]


def save_history(output_dir: str | os.PathLike, entries: list[dict]) -> None:
    import json
    atomic_write_text(Path(output_dir).expanduser() / HISTORY_FILE,
                      json.dumps(entries[:HISTORY_LIMIT], indent=1) + "\n")
