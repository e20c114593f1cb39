"""What shapes the audio: :class:`GenerationOptions` (frozen, checked once) and the presets, as data.

Presets are applied as ``dataclasses.replace(PRESETS[name], **overrides)`` (:func:`preset_options`). Precision is
not an option of a generation: it is decided once, when the models are placed (``TextToSpeech(half=...)``).
"""
import dataclasses
from dataclasses import dataclass

SAMPLERS = ("p", "ddim", "dpm++2m")
VOCODERS = ("univnet", "bigvgan_base", "bigvgan")


def check(ok, message):
    """Raise ``ValueError(message)`` unless ``ok`` (messages say what to pass instead)."""
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class GenerationOptions:
    """Every knob of :meth:`TextToSpeech.tts` that shapes the audio. Defaults are the fast fork's ``tts()``."""
    num_autoregressive_samples: int = 512
    temperature: float = 0.8
    length_penalty: float = 1.0
    repetition_penalty: float = 2.0
    top_p: float = 0.8
    max_mel_tokens: int = 500
    cvvp_amount: float = 0.0
    diffusion_iterations: int = 100
    cond_free: bool = True
    cond_free_k: float = 2.0
    diffusion_temperature: float = 1.0
    sampler: str = "ddim"
    latent_averaging_mode: int = 0
    # Score candidates padded to max_mel_tokens, as the original does. CLVP/CVVP average over every position, padding
    # included, so only this reproduces the original's ranking exactly; the default scores the shorter padding.
    exact_ranking: bool = False

    def __post_init__(self):
        check(self.num_autoregressive_samples >= 1, "num_autoregressive_samples must be at least 1")
        check(self.temperature > 0, "temperature must be > 0 (0.2 to 1.0 is typical)")
        check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        check(self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 disables it)")
        check(1 <= self.max_mel_tokens <= 600, "max_mel_tokens must be in 1..600 (each is 1/20 s)")
        check(0 <= self.cvvp_amount <= 1, "cvvp_amount must be in [0, 1] (0 disables CVVP)")
        check(1 <= self.diffusion_iterations <= 4000, "diffusion_iterations must be in 1..4000")
        check(self.cond_free_k >= 0, "cond_free_k must be >= 0")
        check(self.diffusion_temperature >= 0, "diffusion_temperature must be >= 0 (1 is typical)")
        check(self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        check(self.sampler != "dpm++2m" or self.cond_free, "the dpm++2m sampler needs cond_free=True")
        check(self.latent_averaging_mode in (0, 1, 2), "latent_averaging_mode must be 0, 1 or 2")

    def sampling_kwargs(self):
        """The autoregressive sampler's settings, as the original passes them to HF ``generate``."""
        return dict(do_sample=True, top_p=self.top_p, temperature=self.temperature,
                    length_penalty=self.length_penalty, repetition_penalty=self.repetition_penalty)


OPTION_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationOptions))

# The tuning the fast fork's tts_with_preset starts from (the original's is the same with temperature 0.8).
_FF_BASE = GenerationOptions(temperature=0.2, length_penalty=1.0, repetition_penalty=2.0, top_p=0.8, cond_free_k=2.0,
                             diffusion_temperature=1.0)
_NB_BASE = dataclasses.replace(_FF_BASE, temperature=0.8, sampler="p")


def _preset(base, samples, iterations, **kw):
    return dataclasses.replace(base, num_autoregressive_samples=samples, diffusion_iterations=iterations, **kw)


PRESETS = {
    # the fast fork's presets, its names and values
    "single_sample": _preset(_FF_BASE, 8, 10, sampler="ddim"),
    "ultra_fast": _preset(_FF_BASE, 16, 10, sampler="ddim"),
    "ultra_fast_old": _preset(_FF_BASE, 16, 30, cond_free=False),
    "very_fast": _preset(_FF_BASE, 32, 30, sampler="dpm++2m"),
    "fast": _preset(_FF_BASE, 96, 20, sampler="dpm++2m"),
    "fast_old": _preset(_FF_BASE, 96, 80),
    "standard": _preset(_FF_BASE, 256, 200),
    "high_quality": _preset(_FF_BASE, 256, 400),
    # the original tortoise-tts 3.0.0 presets (temperature 0.8, the ancestral "p" sampler)
    "original_ultra_fast": _preset(_NB_BASE, 16, 30, cond_free=False),
    "original_fast": _preset(_NB_BASE, 96, 80),
    "original_standard": _preset(_NB_BASE, 256, 200),
    "original_high_quality": _preset(_NB_BASE, 256, 400),
}


def preset_options(preset, **overrides):
    """``dataclasses.replace(PRESETS[preset], **overrides)`` with a clear error for an unknown name or knob."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    unknown = set(overrides) - OPTION_FIELDS
    if unknown:
        raise TypeError(f"unknown generation option(s) {', '.join(sorted(unknown))}: "
                        f"known are {', '.join(sorted(OPTION_FIELDS))}")
    return dataclasses.replace(PRESETS[preset], **overrides)
