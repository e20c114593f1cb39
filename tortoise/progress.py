"""Progress of the pipeline: one callback, ``progress(stage, done, total)``, called by every stage.

Stages, in pipeline order (:data:`STAGES`): ``conditioning`` (voice clips to latents), ``autoregressive`` (code
samples drawn), ``ranking`` (CLVP/CVVP scores), ``latents`` (the latent pass), ``diffusion`` (sampler steps over all
candidates), ``vocoder`` (candidates vocoded), ``streaming`` (codes decoded by the streaming path). ``done`` counts
up to ``total`` within a stage, in the stage's unit (:data:`STAGE_UNITS`; ``autoregressive`` counts samples, with
fractions while a batch is being decoded); each stage reports ``(stage, 0, total)`` when it starts and
``(stage, total, total)`` when it ends.

A callback may raise to stop the generation at that point (the speech server does, with :class:`Cancelled`, when its
client has gone away); nothing is written for a stopped generation.
"""
import sys
import time
from typing import Callable

Progress = Callable[[str, int, int], None]

STAGES = ("conditioning", "autoregressive", "ranking", "latents", "diffusion", "vocoder", "streaming")
STAGE_LABELS = {"conditioning": "Conditioning on the voice", "autoregressive": "Drawing autoregressive samples",
                "ranking": "Ranking candidates (CLVP)", "latents": "Autoregressive latents",
                "diffusion": "Diffusion", "vocoder": "Vocoding", "streaming": "Streaming", "clips": "Clips"}


class Cancelled(Exception):
    """Raised by a progress callback to stop a generation (for example when the client disconnected)."""


def silent(stage, done, total):
    """The progress callback that reports nothing."""


STAGE_UNITS = {"conditioning": "latents", "autoregressive": "samples", "ranking": "batches", "latents": "passes",
               "diffusion": "steps", "vocoder": "clips", "streaming": "codes", "clips": "clips"}


def _count(stage, n):
    """``n`` in the stage's unit: ``1 pass``, ``4 samples``."""
    unit = STAGE_UNITS.get(stage, "items")
    if n == 1:
        unit = unit[:-2] if unit.endswith(("sses", "ches")) else unit[:-1]
    return f"{n:g} {unit}"
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.4g}/{total:.4g} {unit} [{elapsed}<{remaining}]"


class TqdmProgress:
    """A progress callback for people: on a terminal, one tqdm bar per stage while it runs, counted in the stage's
    unit (:data:`STAGE_UNITS`: samples drawn, diffusion steps, clips vocoded...); stages that take turns (diffusion
    and the vocoder, candidate by candidate) keep one bar each. Where ``stream`` (default stderr) is not a terminal
    (a log file, a pipe) no bar is drawn: one line per stage as it ends, with its count and time. A report of a stage
    that has already ended is not shown again."""

    def __init__(self, enabled=True, stream=None):
        self.enabled = enabled
        self.stream = stream
        self._live = {}  # stage -> [tqdm bar or None, total, start time]

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def _terminal(self):
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def __call__(self, stage, done, total):
        if not self.enabled or total <= 0:
            return
        live = self._live.get(stage)
        if live is not None and live[1] != total:
            self._end(stage, show=False)
            live = None
        if live is None:
            if done >= total:
                return  # the stage ended already (or there is nothing to show)
            live = self._live[stage] = [self._bar(stage, total), total, time.perf_counter()]
        if live[0] is not None:
            live[0].n = done
            live[0].refresh()
        if done >= total:
            self._end(stage)

    def _bar(self, stage, total):
        if not self._terminal():
            return None
        from tqdm import tqdm
        return tqdm(total=total, desc=STAGE_LABELS.get(stage, stage), unit=STAGE_UNITS.get(stage, "it"),
                    bar_format=_BAR_FORMAT, leave=False, file=self._out(), dynamic_ncols=True)

    def _end(self, stage, show=True):
        bar, total, start = self._live.pop(stage)
        if bar is not None:
            bar.close()
        elif show:
            print(f"{STAGE_LABELS.get(stage, stage)}: {_count(stage, total)} in {time.perf_counter() - start:.1f} s",
                  file=self._out(), flush=True)

    def close(self):
        for stage in list(self._live):
            self._end(stage, show=False)


def combine(*callbacks):
    """One callback that calls each of ``callbacks`` (None entries are skipped) in order."""
    live = [c for c in callbacks if c is not None]

    def progress(stage, done, total):
        for c in live:
            c(stage, done, total)
    return progress
