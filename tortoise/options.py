"""The two sets of options, frozen and checked once: :class:`GenerationOptions` (what shapes the audio of one
request) with the presets as data, and :class:`ModelOptions` (which networks run, where and how).

Presets are applied as ``dataclasses.replace(PRESETS[name], **overrides)`` (:func:`preset_options`). Precision is
not an option of a generation: it is decided once, when the models are placed (``TextToSpeech(half=...)``).
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

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


BACKENDS = ("torch", "onnxruntime", "openvino")
KV_CACHE_POSITIONS = ("contiguous", "original")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
ORT_PROVIDERS = ("cpu", "cuda", "openvino")
OV_DEVICES = ("CPU", "GPU", "AUTO")
GRAPH_PRECISIONS = ("f32", "bf16", "f16", "int8")  # int8: OpenVINO, the AR transformer's weights
# what a clip's record names of the networks: every checkpoint file the pipeline may read
IDENTITY_CHECKPOINTS = ("autoregressive", "clvp", "diffusion", "vocoder", "rlg_auto", "rlg_diffuser", "hifidecoder")


def dtype_name(dtype) -> str:
    """``dtype`` (a name, an alias such as ``bf16``, or a torch dtype) as one of :data:`DTYPES`; one line with the
    names to use otherwise."""
    name = str(dtype).replace("torch.", "")
    name = DTYPE_ALIASES.get(name, name)
    check(name in DTYPES, f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return name


@dataclass(frozen=True)
class ModelOptions:
    """Every knob that decides which networks run, where and how: written once here, checked once, and taken by
    :class:`tortoise.api.TextToSpeech`, the command line, the speech server, the web UI and the Ray actors. Frozen
    and torch-free, so it travels (to a Ray actor, into a cache key) as it is. ``None`` means "decide on this
    machine" (device, batch size, threads, low-VRAM, backend from ``$TORTOISE_BACKEND``)."""
    models_dir: str = None
    device: str = None
    high_vram: bool = None          # None: True on a CPU or with 8 GiB free on the device
    half: bool = False              # the device's half dtype (bf16 / f16), decided at placement
    dtype: str = None               # force float32 / bfloat16 / float16 instead
    ar_checkpoint: str = None
    clvp_checkpoint: str = None
    diff_checkpoint: str = None
    vocoder: str = "univnet"
    tokenizer_vocab_file: str = None
    tokenizer_basic: bool = False
    hub_revision: str = None
    kv_cache: bool = True
    kv_cache_positions: str = "contiguous"
    compile: bool = False
    int8: bool = False
    backend: str = None             # None: $TORTOISE_BACKEND, else torch
    ort_provider: str = "cpu"
    ov_device: str = "CPU"
    backend_precision: str = None
    autoregressive_batch_size: int = None
    enable_redaction: bool = True
    threads: int = None
    preload: bool = True
    stream: bool = False            # only what streaming needs: the AR model and the HiFi-GAN decoder

    def __post_init__(self):
        object.__setattr__(self, "vocoder", (self.vocoder or "univnet").lower())
        check(self.vocoder in VOCODERS, f"unknown vocoder {self.vocoder!r}: use one of {', '.join(VOCODERS)}")
        check(self.kv_cache_positions in KV_CACHE_POSITIONS,
              f"kv_cache_positions must be 'contiguous' or 'original', not {self.kv_cache_positions!r}")
        if self.dtype is not None:
            dtype_name(self.dtype)
        check(self.backend is None or self.backend.lower() in BACKENDS,
              f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        check(self.ort_provider in ORT_PROVIDERS,
              f"unknown ONNX Runtime provider {self.ort_provider!r}: use one of {', '.join(ORT_PROVIDERS)}")
        check(str(self.ov_device).split(".")[0].upper() in OV_DEVICES,
              f"unknown OpenVINO device {self.ov_device!r}: use one of {', '.join(OV_DEVICES)}")
        check(self.backend_precision is None or self.backend_precision in GRAPH_PRECISIONS,
              f"unknown backend precision {self.backend_precision!r}: use one of {', '.join(GRAPH_PRECISIONS)}")
        check(self.autoregressive_batch_size is None or int(self.autoregressive_batch_size) >= 1,
              "autoregressive_batch_size must be at least 1 (or None: the largest that fits)")
        check(self.threads is None or int(self.threads) >= 1, "threads must be at least 1 (or None: one per core)")

    def replace(self, **changes) -> "ModelOptions":
        return dataclasses.replace(self, **changes)

    @property
    def checkpoints(self) -> dict:
        """The explicit checkpoint files by network (None: the models dir's)."""
        return {"autoregressive": self.ar_checkpoint, "clvp": self.clvp_checkpoint, "diffusion": self.diff_checkpoint}

    def ar_settings(self) -> dict:
        """The autoregressive model's decoding settings (``UnifiedVoice.post_init_gpt2_config`` keywords)."""
        return dict(kv_cache=self.kv_cache, compile=bool(self.compile), int8=bool(self.int8),
                    position_mode="contiguous" if self.kv_cache_positions == "contiguous" else "original")

    def identity(self, precision: str, filenames: dict, home: Path) -> dict:
        """What about the networks changes the audio, as a clip's record holds it: where each checkpoint comes from
        (with its size and time when it is a local file; ``filenames`` by network, under ``home``, the models dir),
        the models dir's ``config.json``, the vocoder, the tokenizer, the decoding settings, the backend and the
        ``precision`` the networks compute in (f32, bf16, f16: ``half`` alone does not say, bf16 on one CPU and f32
        on another). Batch size, threads, placement and redaction are left out: they do not change the audio."""
        files = {}
        for name in IDENTITY_CHECKPOINTS:
            path = Path(self.checkpoints.get(name) or home / filenames[name]).expanduser()
            stat = path.stat() if path.is_file() else None
            files[name] = [str(path.resolve()) if stat else str(path), stat.st_size if stat else None,
                           stat.st_mtime_ns if stat else None]
        config = home / "config.json"
        vocoder = "hifigan" if self.stream else self.vocoder
        return {"files": files, "config": config.read_text() if config.is_file() else None, "vocoder": vocoder,
                "half": bool(self.half), "dtype": str(self.dtype) if self.dtype else None,
                "tokenizer": str(self.tokenizer_vocab_file or ""), "int8": bool(self.int8),
                "kv_cache_positions": self.kv_cache_positions, "kv_cache": bool(self.kv_cache),
                "backend": (self.backend or "torch").lower(), "precision": precision}
