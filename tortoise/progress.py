"""Progress of the pipeline: one callback, ``progress(stage, done, total)``, called by every stage.

Stages, in pipeline order (:data:`STAGES`): ``conditioning`` (voice clips to latents), ``autoregressive`` (code
samples drawn), ``ranking`` (CLVP/CVVP scores), ``latents`` (the latent pass), ``diffusion`` (sampler steps over all
candidates), ``vocoder`` (candidates vocoded), ``streaming`` (codes decoded by the streaming path). ``done`` counts
up to ``total`` within a stage; each stage reports ``(stage, 0, total)`` when it starts and ``(stage, total, total)``
when it ends.

A callback may raise to stop the generation at that point (the speech server does, with :class:`Cancelled`, when its
client has gone away); nothing is written for a stopped generation.
"""
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


class TqdmProgress:
    """A progress callback that draws one tqdm bar per stage on stderr (the command line's ``verbose`` output)."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self._bar = None
        self._stage = None

    def __call__(self, stage, done, total):
        if not self.enabled:
            return
        if stage != self._stage or self._bar is None or total != self._bar.total:
            self.close()
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=STAGE_LABELS.get(stage, stage), leave=False)
            self._stage = stage
        self._bar.n = done
        self._bar.refresh()
        if done >= total:
            self.close()

    def close(self):
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


def combine(*callbacks):
    """One callback that calls each of ``callbacks`` (None entries are skipped) in order."""
    live = [c for c in callbacks if c is not None]

    def progress(stage, done, total):
        for c in live:
            c(stage, done, total)
    return progress
