"""TextToSpeech: the original's entry point, a thin facade over the pipeline's stage functions.

The class, method and keyword names are the original ``tortoise-tts`` 3.0.0's (``tts``, ``tts_with_preset``,
``tts_stream``, ``get_conditioning_latents``), plus the "fast" fork's knobs (``sampler``, ``latent_averaging_mode``,
``high_vram``, checkpoint paths, vocoder choice). Generation settings are a frozen
:class:`~tortoise.options.GenerationOptions`; presets are data in :data:`~tortoise.options.PRESETS`. The work is done by
:mod:`tortoise.pipeline` (stages), :mod:`tortoise.loading` (networks, placement, precision) and every stage reports
through one progress callback (:mod:`tortoise.progress`).

What this pipeline does differently from the original: sampled codes are padded to the longest sample (plus room for
the calm-token trim), not to ``max_mel_tokens``, before CLVP and the latent pass (latents unchanged; CLVP scores, which
average over the padding, change slightly: ``exact_ranking=True`` pads as the original for its exact ranking); the
latents of a voice are cached; models stay on the device unless low-VRAM mode offloads them stage by stage; an
out-of-memory error halves the autoregressive batch for the rest of the run.
"""
import os
import random
from time import time

import torch
import torch.nn.functional as F

import xpu
from tortoise import pipeline
from tortoise.loading import ModelSet
from tortoise.options import (OPTION_FIELDS, PRESETS, SAMPLERS, VOCODERS, GenerationOptions, check,  # noqa: F401
                              preset_options)
from tortoise.pipeline import (AR_COND_LENGTH, AR_SAMPLE_RATE, CALM_TOKEN, CODE_PAD_MARGIN,  # noqa: F401
                               DIFFUSION_COND_LENGTH, MAX_TEXT_TOKENS, OUTPUT_SAMPLE_RATE, ChunkCrossfader,
                               NonFiniteError, OutOfMemory, fix_autoregressive_output, format_conditioning, pad_codes,
                               pad_or_truncate, trim_at_calm, vocode)
from tortoise.progress import TqdmProgress, combine, silent
from tortoise.utils import checkpoints
from tortoise.utils.checkpoints import bigvgan_dir  # noqa: F401 (the CLI's vocoder choice)


# ---------------------------------------------------------------- the original's module-level helpers

DEFAULT_MODELS_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tortoise", "models")
#: ``$TORTOISE_MODELS_DIR`` as it was when this module was imported, else the default cache (the original's rule)
MODELS_DIR = str(checkpoints.default_models_dir())
#: file name -> where the hub serves it, for every released checkpoint (the original's ``MODELS``)
MODELS = {c.filename: f"https://huggingface.co/{c.hub_repo}/resolve/main/{c.filename}"
          for c in checkpoints.CHECKPOINTS.values()}


def get_model_path(model_name, models_dir=MODELS_DIR):
    """The path of released checkpoint file ``model_name`` (``"autoregressive.pth"``...): the file in
    ``models_dir`` when it is there (no network), else the hub's copy downloaded into ``models_dir``'s hub cache
    (the original's ``hf_hub_download(..., cache_dir=models_dir)``; ``HF_HUB_OFFLINE=1`` uses only that cache)."""
    names = {c.filename: c.name for c in checkpoints.CHECKPOINTS.values()}
    if model_name not in names:
        raise ValueError(f"Model {model_name} not found in available models: {', '.join(names)}")
    return str(checkpoints.resolve_checkpoint(names[model_name], models_dir=models_dir))


def pick_best_batch_size_for_gpu():
    """The autoregressive batch the device layer finds fits on the automatic device (:func:`xpu.pick_batch_size`:
    the largest power of two whose weights, KV cache and activations fit its free memory) for the released model."""
    return xpu.pick_batch_size(xpu.resolve_device(None))  # the released model's config is its default


def load_discrete_vocoder_diffuser(trained_diffusion_steps=4000, desired_diffusion_steps=200, cond_free=True,
                                   cond_free_k=1, sampler="p"):
    """The original's diffusion process respaced to ``desired_diffusion_steps``, sampled with ``sampler``."""
    from tortoise.utils.diffusion import make_diffuser
    return make_diffuser(desired_diffusion_steps, sampler=sampler, cond_free=cond_free, cond_free_k=cond_free_k,
                         trained_steps=trained_diffusion_steps)


def do_spectrogram_diffusion(diffusion_model, diffuser, latents, conditioning_latents, temperature=1, verbose=True):
    """AR latents ``[1, L, C]`` + diffusion conditioning ``[1, 2C']`` -> denormalized 24 kHz mel ``[1, 100, T]``."""
    from tortoise.utils import diffusion
    return diffusion.do_spectrogram_diffusion(diffusion_model, diffuser, latents, conditioning_latents,
                                              temperature=temperature, verbose=verbose)


def classify_audio_clip(clip, models_dir=None, classifier=None):
    """Probability that the Tortoise classifier gives a ``[1, N]`` 24 kHz clip of having come from Tortoise."""
    if classifier is None:
        classifier = checkpoints.load_model("classifier", models_dir=models_dir)
    with torch.no_grad():
        logits = classifier(clip.cpu().unsqueeze(0))  # [1, 2]
    return F.softmax(logits, dim=-1)[0][0]


def resolve_dtype(device_info, half=False, dtype=None):
    """The dtype the half-tolerant networks are held in: ``dtype`` when given (``float32``, ``bfloat16``,
    ``float16``), else the device's half dtype when ``half``, else None (float32). ``half`` on a device without a
    useful half dtype (a CPU without native bf16) says so once and runs float32."""
    if dtype is not None:
        name = str(dtype).replace("torch.", "")
        aliases = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                   "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
        check(name in aliases, f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
        return aliases[name]
    if not half:
        return None
    chosen = xpu.half_dtype(device_info)
    if chosen is None:
        xpu.warn_once(f"half-{device_info.type}", f"--half: {xpu.half_policy_reason(device_info)}; running float32")
    return chosen


def load_tts(kwargs, stream=False):
    """A :class:`TextToSpeech` of the constructor keywords ``kwargs``, its models loaded; ``stream``: only those the
    streaming fast path needs (the AR model and the HiFi-GAN decoder)."""
    tts = TextToSpeech(**kwargs)
    if stream:
        tts.preload(("autoregressive", "hifidecoder"))
    return tts


BACKEND_ENV = "TORTOISE_BACKEND"


def resolve_backend(backend=None):
    """``backend``, else ``$TORTOISE_BACKEND``, else ``torch``; one of :data:`tortoise.loading.BACKENDS`."""
    from tortoise.loading import BACKENDS
    name = (backend or os.environ.get(BACKEND_ENV) or "torch").lower()
    check(name in BACKENDS, f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


PRECISIONS = ("f32", "bf16", "f16")
_DTYPE_PRECISION = {None: "f32", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def precision_name(dtype):
    """A torch half dtype (None: float32) as a precision name: ``f32``, ``bf16`` or ``f16``."""
    return _DTYPE_PRECISION[dtype]


def graph_precision(backend, half=False, dtype=None, ort_provider="cpu", ov_device="CPU", override=None):
    """The precision a graph backend computes in, decided as torch decides its own (:func:`resolve_dtype`):

    - no ``half``: ``f32`` on every device and CPU (set explicitly: OpenVINO's CPU plugin would otherwise pick bf16
      by itself on CPUs with native bf16, and its codes would no longer be torch's);
    - ``half``: the device's half precision. OpenVINO CPU: ``bf16`` where the CPU has native bf16 (AVX512-BF16 /
      AMX), else ``f32`` (said once, as for torch); OpenVINO GPU / AUTO: ``f16`` (Arc's XMX precision; on AUTO the
      CPU plugin maps it to its own half type). ONNX Runtime CUDA: ``f16`` graphs; ONNX Runtime's CPU and OpenVINO
      providers: ``f32`` (said once: ONNX Runtime has no half-precision CPU path);
    - ``override`` (``--backend_precision``), else ``dtype`` (a forced torch dtype), wins over ``half``.
    """
    if backend == "torch":
        return None
    check(override in (None,) + PRECISIONS, f"unknown precision {override!r}: use f32, bf16 or f16")
    if override is not None:
        wanted = override
    elif dtype is not None:
        wanted = precision_name(resolve_dtype(None, dtype=dtype))
    else:
        wanted = "half" if half else "f32"
    if wanted == "f32":
        return "f32"
    if backend == "onnxruntime":
        if ort_provider == "cuda":
            return "f16"
        xpu.warn_once(f"half-ort-{ort_provider}", f"--half: ONNX Runtime's {ort_provider} provider computes float32 "
                      "here (no half-precision CPU path); --backend openvino runs bf16 on CPUs with native bf16")
        return "f32"
    if wanted != "half":
        return wanted
    if ov_device.split(".")[0].upper() == "CPU":
        return precision_name(resolve_dtype(xpu.describe("cpu"), half=True))
    return "f16"


def backend_options(backend, device, ort_provider="cpu", ov_device="CPU", precision=None, half=False, dtype=None):
    """The runtime options of a graph backend (see :func:`tortoise.backends.load`), checked, with the precision it
    computes in (:func:`graph_precision`): a runtime that is not installed is one line naming the extra to
    install."""
    if backend == "torch":
        return {}
    from tortoise import backends
    backends.require(backend)
    check(backend != "onnxruntime" or ort_provider in ("cpu", "cuda", "openvino"),
          f"unknown ONNX Runtime provider {ort_provider!r}: use cpu, cuda or openvino")
    computes = graph_precision(backend, half, dtype, ort_provider, ov_device, precision)
    if backend == "onnxruntime":
        return {"provider": ort_provider, "precision": computes}
    return {"device": ov_device, "precision": computes}


def run_precision(backend="torch", device=None, half=False, dtype=None, ort_provider="cpu", ov_device="CPU",
                  backend_precision=None):
    """The precision (f32, bf16, f16) a pipeline with these settings computes in: a graph backend's
    (:func:`graph_precision`), else that of the torch networks on ``device`` (:func:`resolve_dtype`)."""
    if backend and backend != "torch":
        return graph_precision(backend, half, dtype, ort_provider, ov_device, backend_precision)
    return precision_name(resolve_dtype(xpu.describe(xpu.resolve_device(device)), half, dtype))


class TextToSpeech:
    """Main entry point into Tortoise."""

    LATENT_CACHE_SIZE = 16

    def __init__(self, autoregressive_batch_size=None, models_dir=None, enable_redaction=True, kv_cache=True,
                 use_deepspeed=False, half=False, device=None, tokenizer_vocab_file=None, tokenizer_basic=False,
                 high_vram=None, ar_checkpoint=None, clvp_checkpoint=None, diff_checkpoint=None, vocoder="univnet",
                 preload=True, compile=False, int8=False, kv_cache_positions="contiguous",
                 hub_revision=None, dtype=None, backend=None, ort_provider="cpu", ov_device="CPU",
                 backend_precision=None, device_only=False, threads=None):
        """
        :param autoregressive_batch_size: samples per AR batch; None lets the device layer pick the largest that fits.
        :param models_dir: where checkpoints live (default ``$TORTOISE_MODELS_DIR`` or ``~/.cache/tortoise/models``);
                           a ``config.json`` there may override the released model configs.
        :param enable_redaction: text in [brackets] conditions the voice but is cut from the audio (wav2vec2
                                 alignment, loaded only when a text has brackets).
        :param device: ``xpu``, ``xpu:1``, ``cuda``, ``mps``, ``cpu``; None: ``$TORTOISE_DEVICE``, else automatic.
        :param high_vram: keep every model on the device (fast); False moves each model there only for its stage.
                          None: True on CPU, else True when the device has 8 GiB free or more.
        :param kv_cache: use the AR key/value cache (False recomputes every step; for comparison only).
        :param kv_cache_positions: ``"contiguous"`` (default): the cached loop gives the codes of the original's
                     default (``kv_cache=False``, positions as in training); ``"original"``: the codes of the
                     original's (and the fast fork's) ``kv_cache=True``, whose mel positions run one ahead.
        :param compile: ``torch.compile`` the fixed-shape AR decode step (opt-in; pays a compile on first use).
        :param int8: CPU only, opt-in: int8 AR linears (:func:`tortoise.models.gpt2.int8_mode`: weight-only with bf16
                     activations for the decode steps where the CPU has native bf16, else dynamic quantization;
                     faster steps, codes drift).
        :param half: hold the AR, CLVP, CVVP and diffusion weights in the device's half dtype (``python -m xpu``
                     shows it: float16 on CUDA, MPS and Arc A-series, bfloat16 on Arc B-series and on CPUs with
                     native bf16). Decided here, once: the dtype then follows the tensors (no autocast).
        :param dtype: force that dtype instead (``"bfloat16"``, ``"float16"``, ``"float32"``), e.g. bf16 on a CPU
                      without native bf16 (slow; for tests and measurements).
        :param ar_checkpoint, clvp_checkpoint, diff_checkpoint: explicit checkpoint files instead of the models dir.
        :param vocoder: ``univnet`` (the original's), ``bigvgan_base`` or ``bigvgan`` (NVIDIA's checkpoint directory
                        ``bigvgan_base_24khz_100band`` / ``bigvgan_24khz_100band`` in the models dir, else the hub).
        :param use_deepspeed: accepted for compatibility with the original; ignored (said once when True).
        :param threads: CPU threads for torch and the graph runtimes (None: torch's default, one per physical core,
                        capped by the CPUs this process may use: its affinity mask and a container's quota).
        :param device_only: ``tts-webui-tortoise-tts``'s name for keeping every model on the device: True means
                            ``high_vram=True`` unless ``high_vram`` is given.
        :param tokenizer_vocab_file: the tokenizer.json a fine-tuned autoregressive model was trained with (its text
                        vocabulary size must equal the checkpoint's; the released one ships with the package).
        :param hub_revision: branch, tag or commit of the hub repository to download from (default
                        ``$TORTOISE_HUB_REVISION``, else ``main``).
        :param backend: ``torch`` (default, or ``$TORTOISE_BACKEND``), ``onnxruntime`` or ``openvino``: run the AR,
                        CLVP, diffusion, vocoder and HiFi-GAN networks as exported graphs on that runtime (exported,
                        verified against torch and cached on first use; sampling stays in torch). ``ort_provider``:
                        ``cpu``, ``cuda`` or ``openvino``; ``ov_device``: ``CPU``, ``GPU`` or ``AUTO``;
                        ``backend_precision``: OpenVINO's inference precision (``f32``, ``bf16``, ``f16``), else
                        decided by ``half`` as for torch: f32 without it on every CPU, bf16 with it on CPUs with
                        native bf16 (:func:`graph_precision`).
        :param preload: load the AR, CLVP, diffusion and vocoder models now (errors surface early); the rest
                        (CVVP, random-voice generators, HiFi-GAN decoder, aligner, classifier) load when first used.
        """
        self.device = xpu.resolve_device(device)
        self.device_info = xpu.describe(self.device)
        self.threads = xpu.set_threads(threads)
        self.models_dir = str(models_dir) if models_dir is not None else str(checkpoints.default_models_dir())
        self.enable_redaction = enable_redaction
        self.half_dtype = resolve_dtype(self.device_info, half, dtype)
        self.half = self.half_dtype is not None
        check(kv_cache_positions in ("contiguous", "original"),
              f"kv_cache_positions must be 'contiguous' or 'original', not {kv_cache_positions!r}")
        self.kv_cache = kv_cache
        vocoder = (vocoder or "univnet").lower()
        check(vocoder in VOCODERS, f"unknown vocoder {vocoder!r}: use one of {', '.join(VOCODERS)}")
        self.vocoder_name = vocoder
        from tortoise.utils.tokenizer import VoiceBpeTokenizer
        self.tokenizer = VoiceBpeTokenizer(vocab_file=tokenizer_vocab_file, use_basic_cleaners=tokenizer_basic)
        self.checkpoint_paths = {"autoregressive": ar_checkpoint, "clvp": clvp_checkpoint,
                                 "diffusion": diff_checkpoint}
        if use_deepspeed:
            xpu.warn_once("deepspeed", "use_deepspeed: DeepSpeed is not used here; ignored")
        if high_vram is None and device_only:
            high_vram = True
        high_vram = self._default_high_vram() if high_vram is None else bool(high_vram)
        ar_settings = dict(kv_cache=kv_cache, compile=bool(compile), int8=bool(int8),
                           position_mode="contiguous" if kv_cache_positions == "contiguous" else "original")
        self.backend = resolve_backend(backend)
        graph_options = backend_options(self.backend, self.device, ort_provider, ov_device, backend_precision,
                                        half=half, dtype=dtype)
        if graph_options:
            graph_options["threads"] = self.threads
        #: the precision the networks compute in: f32, bf16 or f16 (a graph backend's, else the torch networks')
        self.precision = graph_options.get("precision") or precision_name(self.half_dtype)
        self.models = ModelSet(self.device, self.models_dir, dtype=self.half_dtype, high_vram=high_vram,
                               paths=self.checkpoint_paths, vocoder=vocoder, ar_settings=ar_settings,
                               revision=hub_revision, check_ar=self._check_tokenizer_fits, backend=self.backend,
                               backend_options=graph_options)
        self._aligner = None
        self._latent_cache = pipeline.LatentCache(self.LATENT_CACHE_SIZE)
        if preload:
            self.preload(("autoregressive", "clvp", "diffusion", "vocoder"))
        self._batch = pipeline.BatchSize(autoregressive_batch_size or self._pick_batch_size(), self.device)

    # ---------------------------------------------------------- models

    def _default_high_vram(self):
        if self.device.type == "cpu":
            return True
        return self.device_info.free_memory >= 8 * (1 << 30)

    def _pick_batch_size(self):
        """The largest power-of-two AR batch the device layer finds fits (weights already placed when preloaded)."""
        cfg = checkpoints.model_config("autoregressive", self.models_dir)
        placed = self.models.high_vram and self.models.loaded("autoregressive")
        return xpu.pick_batch_size(self.device_info, cfg, dtype=self.half_dtype, weights_loaded=placed)

    @property
    def autoregressive_batch_size(self):
        """Samples decoded at once; an out-of-memory error halves it for the rest of the run."""
        return self._batch.value

    @autoregressive_batch_size.setter
    def autoregressive_batch_size(self, value):
        self._batch.value = max(1, int(value))

    @property
    def high_vram(self):
        return self.models.high_vram

    def _check_tokenizer_fits(self, model):
        """A fine-tuned model trained with its own tokenizer needs that tokenizer: the vocabulary sizes must agree."""
        have = self.tokenizer.tokenizer.get_vocab_size()
        if have != model.number_text_tokens:
            source = self.checkpoint_paths.get("autoregressive") or "the autoregressive checkpoint"
            raise checkpoints.CheckpointError(
                f"{source} was trained with a text vocabulary of {model.number_text_tokens} tokens but the tokenizer "
                f"has {have}; pass the tokenizer.json it was trained with (--tokenizer FILE)")

    def preload(self, names):
        """Load the named models now (``autoregressive``, ``clvp``, ``cvvp``, ``diffusion``, ``vocoder``,
        ``rlg_auto``, ``rlg_diffuser``, ``hifidecoder``)."""
        for name in names:
            self.models.get(name)

    autoregressive = property(lambda self: self.models.get("autoregressive"))
    clvp = property(lambda self: self.models.get("clvp"))
    diffusion = property(lambda self: self.models.get("diffusion"))
    vocoder = property(lambda self: self.models.get("vocoder"))
    hifi_decoder = property(lambda self: self.models.get("hifidecoder"))

    @property
    def cvvp(self):
        return self.models.get("cvvp") if self.models.loaded("cvvp") else None

    def load_cvvp(self):
        """Load the CVVP model (used only when ``cvvp_amount > 0``)."""
        return self.models.get("cvvp")

    def temporary_cuda(self, model):
        """The original's name: ``model`` on the device for one stage (a no-op in high-VRAM mode)."""
        return self.models.stage(self.models.name_of(model))

    @property
    def aligner(self):
        """The wav2vec2 aligner used for redaction, loaded on first use."""
        if self._aligner is None:
            from tortoise.utils.wav2vec_alignment import Wav2VecAlignment
            self._aligner = Wav2VecAlignment(device=self.device, models_dir=self.models_dir)
        return self._aligner

    @aligner.setter
    def aligner(self, value):
        self._aligner = value

    # ---------------------------------------------------------- conditioning

    def get_conditioning_latents(self, voice_samples, return_mels=False, latent_averaging_mode=0,
                                 original_tortoise=False):
        """Reference clips -> (autoregressive latent ``[1, C]``, diffusion latent ``[1, 2C']``).

        :param voice_samples: 22.05 kHz ``[1, N]`` clips (or the fast fork's (22.05 kHz, 24 kHz) pairs).
        :param latent_averaging_mode: diffusion conditioning from 0: the first ~4.27 s of each clip (the original),
            1: every ~4.27 s chunk of every clip, averaged; 2: the chunks of each clip averaged per clip.
        :param return_mels: also return the AR and the diffusion conditioning mels.
        Results are cached per voice (clip contents, crop positions and mode), so a voice is encoded once.
        """
        cond = self._voice_conditioning(voice_samples, latent_averaging_mode, original_tortoise)
        latents = (cond.auto_latent, cond.diffusion_latent)
        return latents + (cond.auto_mels, cond.diffusion_mels) if return_mels else latents

    def _voice_conditioning(self, voice_samples, mode=0, original_tortoise=False, ar_only=False, progress=silent):
        check(mode in (0, 1, 2), "latent_averaging_mode must be 0, 1 or 2")
        pairs = pipeline.split_samples(voice_samples)
        starts = pipeline.crop_starts(pairs)  # drawn every call, as the original draws them
        key = pipeline.fingerprint([t for p in pairs for t in p if t is not None], starts, mode, original_tortoise,
                                   ar_only)
        return self._latent_cache.get(key, lambda: pipeline.condition(self.models, pairs, starts, mode,
                                                                      original_tortoise, ar_only, progress))

    def _conditioning(self, voice_samples, conditioning_latents, opts, original_tortoise, progress, ar_only=False):
        if voice_samples is not None:
            return self._voice_conditioning(voice_samples, opts.latent_averaging_mode, original_tortoise, ar_only,
                                            progress)
        if conditioning_latents is not None:
            return pipeline.given_conditioning(self.models, conditioning_latents, ar_only)
        return pipeline.random_conditioning(self.models, ar_only)

    def get_random_conditioning_latents(self):
        """Latents of a random voice, from the random latent generators."""
        cond = pipeline.random_conditioning(self.models)
        return cond.auto_latent, cond.diffusion_latent

    # ---------------------------------------------------------- generation

    def tts_with_preset(self, text, preset="fast", **kwargs):
        """:meth:`tts` with a preset from :data:`PRESETS`; keyword arguments override the preset's options or are
        passed on to :meth:`tts` (``voice_samples``, ``conditioning_latents``, ``k``, ``verbose``, ...)."""
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS}
        return self.tts(text, options=preset_options(preset, **overrides), **kwargs)

    def tts(self, text, voice_samples=None, conditioning_latents=None, k=1, verbose=True,
            use_deterministic_seed=None, return_deterministic_state=False, num_autoregressive_samples=None,
            temperature=None, length_penalty=None, repetition_penalty=None, top_p=None, max_mel_tokens=None,
            cvvp_amount=None, diffusion_iterations=None, cond_free=None, cond_free_k=None, diffusion_temperature=None,
            options=None, original_tortoise=False, progress=None, **kwargs):
        """Speak ``text`` in a voice given by ``voice_samples`` (22.05 kHz clips), ``conditioning_latents``
        (an (AR, diffusion) latent pair) or neither (a random voice).

        Generation knobs (see :class:`GenerationOptions`): num_autoregressive_samples, temperature, length_penalty,
        repetition_penalty, top_p, max_mel_tokens, cvvp_amount, diffusion_iterations, cond_free, cond_free_k,
        diffusion_temperature, sampler (p / ddim / dpm++2m), latent_averaging_mode, exact_ranking; given as
        keywords (the first eleven also in the original's positional order; None: from ``options``, else the
        defaults) or as ``options``. Other keywords go to the AR sampler (the original's ``generate`` keywords).
        :param k: how many candidates to return, best first as ranked by CLVP (+ CVVP when cvvp_amount > 0).
        :param progress: ``progress(stage, done, total)`` called by every stage (see :mod:`tortoise.progress`);
                         it may raise to stop the generation.
        :return: 24 kHz audio ``[1, 1, S]`` (k = 1) or a list of k of them; with ``return_deterministic_state``
                 also ``(seed, text, voice_samples, conditioning_latents)``.
        """
        knobs = dict(num_autoregressive_samples=num_autoregressive_samples, temperature=temperature,
                     length_penalty=length_penalty, repetition_penalty=repetition_penalty, top_p=top_p,
                     max_mel_tokens=max_mel_tokens, cvvp_amount=cvvp_amount, diffusion_iterations=diffusion_iterations,
                     cond_free=cond_free, cond_free_k=cond_free_k, diffusion_temperature=diffusion_temperature)
        opts = self._options(options, {**{n: v for n, v in knobs.items() if v is not None}, **kwargs})
        kwargs = {n: v for n, v in kwargs.items() if n not in OPTION_FIELDS}  # the rest: the AR sampler's
        check(1 <= k <= opts.num_autoregressive_samples,
              f"k={k} candidates asked for but only {opts.num_autoregressive_samples} autoregressive samples drawn")
        seed = self.deterministic_state(seed=use_deterministic_seed)
        text_tokens = self._text_tokens(text)
        from tortoise.utils.wav2vec_alignment import check_redaction
        check_redaction([text], self.models_dir, self.enable_redaction)  # [brackets]: now, not after the audio
        bar = TqdmProgress(verbose)
        report = combine(progress, bar)
        try:
            cond = self._conditioning(voice_samples, conditioning_latents, opts, original_tortoise, report)
            codes = pipeline.sample_codes(self.models, cond, text_tokens, opts, self._batch, report, kwargs)
            best = pipeline.rank(self.models, text_tokens, codes, cond, opts, k, self._batch.value, report)
            del codes
            latents = pipeline.ar_latents(self.models, cond, text_tokens, best, report)
            wavs = pipeline.decode_candidates(self.models, best, latents, cond, opts, report)
        finally:
            bar.close()
        wavs = [self._redact(w, text) for w in wavs]
        res = wavs if len(wavs) > 1 else wavs[0]
        if return_deterministic_state:
            return res, (seed, text, voice_samples, conditioning_latents)
        return res

    @staticmethod
    def _options(options, kwargs):
        """``options`` (or the defaults) with the option keywords in ``kwargs`` applied (popped from it)."""
        if "half" in kwargs:
            raise TypeError("half is not a per-call option: precision is chosen once, TextToSpeech(half=True)")
        option_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS}
        import dataclasses
        return dataclasses.replace(options or GenerationOptions(), **option_kwargs)

    def _text_tokens(self, text):
        if not isinstance(text, str) or not text.strip():
            raise ValueError("Empty text: give the text to speak.")
        tokens = torch.IntTensor(self.tokenizer.encode(text)).unsqueeze(0).to(self.device)
        tokens = F.pad(tokens, (0, 1))  # [1, T+1], as the original
        if tokens.shape[-1] >= MAX_TEXT_TOKENS:
            raise ValueError(f"Text too long ({tokens.shape[-1]} tokens; the model takes fewer than "
                             f"{MAX_TEXT_TOKENS}): split it into sentences (the command line does this itself).")
        return tokens

    def _redact(self, clip, text):
        """Cut the audio of [bracketed] text; the aligner is loaded only when the text has brackets."""
        if not self.enable_redaction or "[" not in text:
            return clip
        return self.aligner.redact(clip.squeeze(1), text).unsqueeze(1)

    # ---------------------------------------------------------- streaming fast path

    def tts_stream(self, text, voice_samples=None, conditioning_latents=None, k=1, verbose=True,
                   use_deterministic_seed=None, return_deterministic_state=False, overlap_wav_len=1024,
                   stream_chunk_size=40, num_autoregressive_samples=1, temperature=0.8, length_penalty=1.0,
                   repetition_penalty=2.0, top_p=0.8, max_mel_tokens=500, cvvp_amount=0.0, diffusion_iterations=None,
                   cond_free=None, cond_free_k=None, diffusion_temperature=None, progress=None, **generate_kwargs):
        """The original v3's fast path: one AR sample, its latents decoded by the HiFi-GAN decoder as they come (no
        CLVP, no diffusion). Yields 24 kHz audio chunks ``[S_i]`` whose boundaries are cross-faded over
        ``overlap_wav_len`` samples; the first after ``max(stream_chunk_size, 60)`` codes, then every
        ``stream_chunk_size`` codes. Redaction does not apply (audio leaves before the text is complete).
        ``k``, ``num_autoregressive_samples``, ``return_deterministic_state``, ``cvvp_amount`` and the diffusion
        knobs are accepted for the original's signature and have no effect here (one sample, no ranking, no
        diffusion). In low-VRAM mode the AR model and the decoder stay on the device until the stream ends or is
        closed; no grad mode or autocast is held while the caller's code runs."""
        check(stream_chunk_size >= 1, "stream_chunk_size must be at least 1")
        check(overlap_wav_len >= 1, "overlap_wav_len must be at least 1")
        if "half" in generate_kwargs:
            raise TypeError("half is not a per-call option: precision is chosen once, TextToSpeech(half=True)")
        self.deterministic_state(seed=use_deterministic_seed)
        text_tokens = self._text_tokens(text)
        report = progress or silent
        cond = self._conditioning(voice_samples, conditioning_latents, GenerationOptions(), False, report,
                                  ar_only=True)
        from tortoise.utils.sampling import SamplingOptions
        sampling = SamplingOptions.from_generate_kwargs(do_sample=True, top_p=top_p, temperature=temperature,
                                                        length_penalty=length_penalty,
                                                        repetition_penalty=repetition_penalty, **generate_kwargs)
        return self._stream(cond, text_tokens, sampling, max_mel_tokens, stream_chunk_size, overlap_wav_len, report)

    def _stream(self, cond, text_tokens, sampling, max_mel_tokens, chunk_size, overlap, progress):
        names = ("autoregressive", "hifidecoder")
        ar, decoder = self.models.acquire(*names)  # a placement, released when the stream ends or is closed
        try:
            yield from pipeline.stream(ar, decoder, cond, text_tokens, sampling, max_mel_tokens, chunk_size, overlap,
                                       progress)
        finally:
            self.models.release(*names)

    def deterministic_state(self, seed=None):
        """Seed torch and ``random`` with ``seed`` (the current time when None) and return it, so a run can be
        reproduced on the same device."""
        seed = int(time()) if seed is None else int(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        return seed
