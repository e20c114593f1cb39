"""TextToSpeech: the original's entry point, its names over the core :class:`tortoise.session.Session` (which holds the
models and speaks), plus the original's module-level helpers and the placement functions re-exported.

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
import dataclasses
import os

import torch
import torch.nn.functional as F

import xpu
from tortoise.options import (BACKENDS, OPTION_FIELDS, PRESETS, SAMPLERS, VOCODERS,  # noqa: F401
                              GenerationOptions, ModelOptions, check, preset_options)
from tortoise.pipeline import (AR_COND_LENGTH, AR_SAMPLE_RATE, CALM_TOKEN, CODE_PAD_MARGIN,  # noqa: F401
                               DIFFUSION_COND_LENGTH, MAX_TEXT_TOKENS, OUTPUT_SAMPLE_RATE, ChunkCrossfader,
                               NonFiniteError, OutOfMemory, fix_autoregressive_output, format_conditioning, pad_codes,
                               pad_or_truncate, trim_at_calm, vocode)
from tortoise.placement import (BACKEND_ENV, PRECISIONS, backend_options, graph_precision,  # noqa: F401
                                model_identity, options_precision, precision_name, resolve_backend, resolve_dtype,
                                run_precision)
from tortoise.session import Session, Speech  # noqa: F401
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


class TextToSpeech(Session):
    """Main entry point into Tortoise: the original's names (``tts``, ``tts_with_preset``, ``tts_stream``,
    ``get_conditioning_latents``, the model attributes) over a :class:`tortoise.session.Session`."""

    def __init__(self, autoregressive_batch_size=None, models_dir=None, enable_redaction=True, kv_cache=True,
                 use_deepspeed=False, half=False, device=None, tokenizer_vocab_file=None, tokenizer_basic=False,
                 high_vram=None, ar_checkpoint=None, clvp_checkpoint=None, diff_checkpoint=None, vocoder="univnet",
                 preload=True, compile=False, int8=False, kv_cache_positions="contiguous",
                 hub_revision=None, dtype=None, backend=None, ort_provider="cpu", ov_device="CPU",
                 backend_precision=None, device_only=False, threads=None, options=None):
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
                        ``backend_precision``: OpenVINO's inference precision (``f32``, ``bf16``, ``f16``, or
                        ``int8``: the AR transformer's weights in int8, computing in f32), else
                        decided by ``half`` as for torch: f32 without it on every CPU, bf16 with it on CPUs with
                        native bf16 (:func:`graph_precision`).
        :param preload: load the AR, CLVP, diffusion and vocoder models now (errors surface early); the rest
                        (CVVP, random-voice generators, HiFi-GAN decoder, aligner, classifier) load when first used.
        :param options: a :class:`tortoise.options.ModelOptions` holding all of the above at once (then the other
                        keywords are not read, except ``use_deepspeed`` and ``device_only``).
        """
        if options is None:
            options = ModelOptions(
                models_dir=str(models_dir) if models_dir is not None else None, device=device, high_vram=high_vram,
                half=half, dtype=dtype, ar_checkpoint=ar_checkpoint, clvp_checkpoint=clvp_checkpoint,
                diff_checkpoint=diff_checkpoint, vocoder=vocoder, tokenizer_vocab_file=tokenizer_vocab_file,
                tokenizer_basic=tokenizer_basic, hub_revision=hub_revision, kv_cache=kv_cache,
                kv_cache_positions=kv_cache_positions, compile=bool(compile), int8=bool(int8), backend=backend,
                ort_provider=ort_provider, ov_device=ov_device, backend_precision=backend_precision,
                autoregressive_batch_size=autoregressive_batch_size, enable_redaction=enable_redaction,
                threads=threads, preload=preload)
        if use_deepspeed:
            xpu.warn_once("deepspeed", "use_deepspeed: DeepSpeed is not used here; ignored")
        if options.high_vram is None and device_only:
            options = options.replace(high_vram=True)
        super().__init__(options)


    @classmethod
    def from_options(cls, options: ModelOptions):
        """The pipeline of ``options`` (what the command line, the server, the web UI and the Ray actors build)."""
        return cls(options=options)

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
        (an (AR, diffusion) latent pair) or neither (a random voice): :meth:`Session.speak` in the original's shape.

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
        speech = self.speak(text, voice_samples, conditioning_latents, opts, k, use_deterministic_seed, progress,
                            verbose, original_tortoise, kwargs)
        res = speech.candidates if len(speech.candidates) > 1 else speech.audio
        if return_deterministic_state:
            return res, (speech.seed, text, voice_samples, conditioning_latents)
        return res

    @staticmethod
    def _options(options, kwargs):
        """``options`` (or the defaults) with the option keywords in ``kwargs`` applied (popped from it)."""
        if "half" in kwargs:
            raise TypeError("half is not a per-call option: precision is chosen once, TextToSpeech(half=True)")
        option_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS}
        return dataclasses.replace(options or GenerationOptions(), **option_kwargs)

    def tts_stream(self, text, voice_samples=None, conditioning_latents=None, k=1, verbose=True,
                   use_deterministic_seed=None, return_deterministic_state=False, overlap_wav_len=1024,
                   stream_chunk_size=40, num_autoregressive_samples=1, temperature=0.8, length_penalty=1.0,
                   repetition_penalty=2.0, top_p=0.8, max_mel_tokens=500, cvvp_amount=0.0, diffusion_iterations=None,
                   cond_free=None, cond_free_k=None, diffusion_temperature=None, progress=None, **generate_kwargs):
        """The original v3's fast path (:meth:`Session.stream`): one AR sample, its latents decoded by the HiFi-GAN
        decoder as they come (no CLVP, no diffusion). Yields 24 kHz audio chunks ``[S_i]`` whose boundaries are
        cross-faded over ``overlap_wav_len`` samples; the first after ``max(stream_chunk_size, 60)`` codes, then
        every ``stream_chunk_size`` codes. Redaction does not apply (audio leaves before the text is complete).
        ``k``, ``num_autoregressive_samples``, ``return_deterministic_state``, ``cvvp_amount`` and the diffusion
        knobs are accepted for the original's signature and have no effect here (one sample, no ranking, no
        diffusion). In low-VRAM mode the AR model and the decoder stay on the device until the stream ends or is
        closed; no grad mode or autocast is held while the caller's code runs."""
        if "half" in generate_kwargs:
            raise TypeError("half is not a per-call option: precision is chosen once, TextToSpeech(half=True)")
        opts = GenerationOptions(temperature=temperature, length_penalty=length_penalty, top_p=top_p,
                                 repetition_penalty=repetition_penalty, max_mel_tokens=max_mel_tokens)
        return self.stream(text, voice_samples, conditioning_latents, opts, use_deterministic_seed, stream_chunk_size,
                           overlap_wav_len, progress, generate_kwargs)

    def deterministic_state(self, seed=None):
        """Seed torch and ``random`` with ``seed`` (the current time when None) and return it, so a run can be
        reproduced on the same device."""
        return self.seed(seed)
