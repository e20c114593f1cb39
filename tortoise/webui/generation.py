"""One press of "Generate": split the text, render every (voice, chunk) through `tortoise.api`, save each clip as it
finishes, and keep going when one clip fails. No Streamlit here, so it is testable on its own.

Files (one directory per run, so nothing earlier is overwritten):
    OUTPUT_DIR/<run id>/{voice}_{idx:02d}_{cand:02d}.wav      every chunk and candidate, 24 kHz
    OUTPUT_DIR/<run id>/{voice}_combined[_{cand:02d}].wav   the chunks joined, when the text was split
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import random
import re
import secrets
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

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


def safe_label(voices: list[str]) -> str:
    """File-name form of a voice group ('a&b' stays readable; anything odd becomes '_')."""
    return re.sub(r"[^A-Za-z0-9_.&-]", "_", "&".join(voices)).strip(".") or "voice"


def as_waveforms(output) -> list[np.ndarray]:
    """tts / tts_with_preset return one tensor (k=1) or a list of them (k>1): 1-D float arrays."""
    items = output if isinstance(output, (list, tuple)) else [output]
    waves = []
    for item in items:
        arr = item.detach().float().cpu().numpy() if hasattr(item, "detach") else np.asarray(item, dtype=np.float32)
        waves.append(np.asarray(arr, dtype=np.float32).reshape(-1))  # [1, 1, T] / [1, T] / [T] -> [T]
    return waves


def write_wav(path: Path, wave: np.ndarray) -> None:
    """16-bit PCM (plays in every browser), written to a temporary name then renamed."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


class StageCapture:
    """While active, lines the pipeline prints (its messages and tqdm bars) are passed on to `callback`.

    Only writes from the thread that created it are captured; everything is still written to the real stream.
    """

    def __init__(self, callback: Callable[[str], None], min_interval: float = 0.2):
        self.callback, self.min_interval = callback, min_interval
        self.thread = threading.get_ident()
        self._last = float("-inf")
        self._pending = None  # the newest line not yet shown (throttled)
        self._saved = None

    def _stream(self, real):
        capture = self

        class _Tee(io.TextIOBase):
            def write(self, s):
                real.write(s)
                if threading.get_ident() == capture.thread:
                    capture._feed(s)
                return len(s)

            def flush(self):
                real.flush()

            def isatty(self):
                return False

        return _Tee()

    def _feed(self, s: str) -> None:
        parts = [p.strip() for p in re.split(r"[\r\n]", s) if p.strip()]
        if parts:
            self._pending = parts[-1][:200]
            if time.monotonic() - self._last >= self.min_interval:
                self._deliver()

    def _deliver(self) -> None:
        line, self._pending, self._last = self._pending, None, time.monotonic()
        if line is None:
            return
        try:
            self.callback(line)
        except Exception:  # a display problem must never stop the generation
            pass

    def __enter__(self):
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self._stream(sys.stdout), self._stream(sys.stderr)
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self._saved
        self._deliver()  # the last line is always shown
        return False


def _load_group(group: list[str], job: Job, tts=None):
    from tortoise.utils.voices import expected_latent_widths, load_voices
    models_dir = getattr(tts, "models_dir", None)  # a .pth voice must fit the loaded models
    widths = expected_latent_widths(models_dir) if models_dir else None
    return load_voices(group, job.extra_voices_dirs, latent_widths=widths)


def _render_chunk(tts, chunk: str, samples, latents, job: Job, seed: int) -> list[np.ndarray]:
    kwargs = dict(job.overrides)
    kwargs.update(k=job.candidates, voice_samples=samples, conditioning_latents=latents, use_deterministic_seed=seed)
    return as_waveforms(tts.tts_with_preset(chunk, preset=job.preset, **kwargs))


def _combine(record: RunRecord, run_dir: Path, label: str, chunks: int, candidates: int, waves: dict) -> None:
    """Join the chunks of each candidate whose chunks all succeeded."""
    for cand in range(candidates):
        parts = [waves.get((i, cand)) for i in range(chunks)]
        if any(p is None for p in parts):
            continue
        name = f"{label}_combined.wav" if candidates == 1 else f"{label}_combined_{cand:02d}.wav"
        write_wav(run_dir / name, np.concatenate(parts))
        record.combined.append({"voice": label, "candidate": cand, "file": name})


def run_job(tts, job: Job, output_dir: str | os.PathLike, progress: Progress | None = None,
            on_update: Callable[[RunRecord], None] | None = None) -> RunRecord:
    """Render every voice group and chunk; a failing clip is recorded and the others still rendered and saved.

    `on_update(record)` runs after every clip (before `progress`), so an interrupted run keeps what it finished.
    """
    progress = progress or (lambda message, done, total: None)
    on_update = on_update or (lambda record: None)
    started = time.monotonic()
    chunks = split_text(job.text, job.min_chars_to_split)
    seed = job.seed if job.seed is not None else random.randint(0, 2**32 - 1)
    run_id = new_run_id()
    run_dir = Path(output_dir).expanduser().resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    record = RunRecord(run_id=run_id, created=_dt.datetime.now().isoformat(timespec="seconds"), text=job.text,
                       voices=["&".join(g) for g in job.groups], preset=job.preset, seed=seed, run_dir=str(run_dir))
    total, done = len(job.groups) * len(chunks), 0
    on_update(record)
    for group in job.groups:
        label = safe_label(group)
        try:
            progress(f"Loading voice {'&'.join(group)}", done, total)
            samples, latents = _load_group(group, job, tts)
        except Exception as e:
            record.errors.append(f"Voice {'&'.join(group)}: {readable_error(e)}")
            done += len(chunks)
            on_update(record)
            continue
        waves = {}
        for idx, chunk in enumerate(chunks):
            progress(f"Voice {'&'.join(group)}: clip {idx + 1} of {len(chunks)}", done, total)
            try:
                rendered = _render_chunk(tts, chunk, samples, latents, job, seed)
            except Exception as e:
                record.clips.append(asdict(Clip('&'.join(group), idx, 0, chunk, error=readable_error(e))))
            else:
                for cand, wave in enumerate(rendered):
                    name = f"{label}_{idx:02d}_{cand:02d}.wav"
                    write_wav(run_dir / name, wave)
                    waves[(idx, cand)] = wave
                    record.clips.append(asdict(Clip('&'.join(group), idx, cand, chunk, file=name)))
            done += 1
            on_update(record)
        if len(chunks) > 1:
            _combine(record, run_dir, label, len(chunks), job.candidates, waves)
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
