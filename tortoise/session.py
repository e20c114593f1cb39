"""The core of a Tortoise pipeline: a :class:`Session` holds the placed models, the tokenizer, the voice latent cache,
the autoregressive batch size and the redaction aligner, and speaks (:meth:`Session.speak`: the full pipeline, one
:class:`Speech` result) or streams (:meth:`Session.stream`: the HiFi-GAN fast path). Every front end holds one: the
render loop, the speech server's engine, the Ray actors and the web UI. :class:`tortoise.api.TextToSpeech` is the
original's names over it.
"""
import random
from dataclasses import dataclass
from time import time

import torch
import torch.nn.functional as F

import xpu
from tortoise import pipeline
from tortoise.loading import ModelSet
from tortoise.options import GenerationOptions, ModelOptions, check
from tortoise.pipeline import MAX_TEXT_TOKENS, OUTPUT_SAMPLE_RATE
from tortoise.placement import backend_options, precision_name, resolve_backend, resolve_dtype
from tortoise.progress import TqdmProgress, combine, silent
from tortoise.utils import checkpoints
from tortoise.utils.sampling import SamplingOptions
from tortoise.utils.tokenizer import VoiceBpeTokenizer


@dataclass(frozen=True)
class Speech:
    """What :meth:`Session.speak` returns: ``candidates``, the k clips best first, each 24 kHz float audio
    ``[1, 1, S]`` on the models' device, finite, redacted; ``seed``, the seed the generation ran with."""
    candidates: list
    seed: int
    sample_rate: int = OUTPUT_SAMPLE_RATE

    @property
    def audio(self):
        """The best candidate."""
        return self.candidates[0]


class Session:
    """A placed pipeline of :class:`ModelOptions`: its models (loaded on first use, or now with ``preload``), with
    ``speak`` and ``stream``."""

    LATENT_CACHE_SIZE = 16

    def __init__(self, options: ModelOptions):
        #: the :class:`ModelOptions` these models were placed with
        self.options = options
        self.device = xpu.resolve_device(options.device)
        self.device_info = xpu.describe(self.device)
        self.threads = xpu.set_threads(options.threads)
        self.models_dir = str(options.models_dir or checkpoints.default_models_dir())
        self.enable_redaction = options.enable_redaction
        self.half_dtype = resolve_dtype(self.device_info, options.half, options.dtype)
        self.half = self.half_dtype is not None
        self.kv_cache = options.kv_cache
        self.vocoder_name = options.vocoder
        self.tokenizer = VoiceBpeTokenizer(vocab_file=options.tokenizer_vocab_file,
                                           use_basic_cleaners=options.tokenizer_basic)
        self.checkpoint_paths = options.checkpoints
        high_vram = self._default_high_vram() if options.high_vram is None else bool(options.high_vram)
        self.backend = resolve_backend(options.backend)
        graph_options = backend_options(self.backend, self.device, options.ort_provider, options.ov_device,
                                        options.backend_precision, half=options.half, dtype=options.dtype)
        if graph_options:
            graph_options["threads"] = self.threads
        #: the precision the networks compute in: f32, bf16 or f16 (a graph backend's, else the torch networks')
        self.precision = graph_options.get("precision") or precision_name(self.half_dtype)
        self.models = ModelSet(self.device, options.replace(models_dir=self.models_dir), dtype=self.half_dtype,
                               high_vram=high_vram, check_ar=self._check_tokenizer_fits, backend=self.backend,
                               backend_options=graph_options)
        self._aligner = None
        self._latent_cache = pipeline.LatentCache(self.LATENT_CACHE_SIZE)
        if options.preload:
            self.preload(("autoregressive", "clvp", "diffusion", "vocoder"))
        self._batch = pipeline.BatchSize(options.autoregressive_batch_size or self._pick_batch_size(), self.device)

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

    @classmethod
    def load(cls, options: ModelOptions, stream=False):
        """A session of ``options`` with its models loaded; ``stream`` (or ``options.stream``): only those the
        streaming fast path needs (the AR model and the HiFi-GAN decoder)."""
        stream = stream or options.stream
        session = cls(options.replace(preload=False) if stream else options)
        if stream:
            session.preload(("autoregressive", "hifidecoder"))
        return session

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

    # ---------------------------------------------------------- speaking

    def speak(self, text, voice_samples=None, conditioning_latents=None, options: GenerationOptions = None, k=1,
              seed=None, progress=None, verbose=False, original_tortoise=False, generate_kwargs=None) -> Speech:
        """The full pipeline on ``text`` in a voice (22.05 kHz ``voice_samples``, an (AR, diffusion)
        ``conditioning_latents`` pair, or neither: a random voice) -> :class:`Speech` with the ``k`` best
        candidates. ``seed`` (None: the time) seeds torch and ``random`` first; ``progress(stage, done, total)`` is
        called by every stage and may raise to stop; ``verbose`` shows a progress bar; ``generate_kwargs`` go to the
        AR sampler (the original's HF ``generate`` keywords)."""
        opts = options or GenerationOptions()
        check(1 <= k <= opts.num_autoregressive_samples,
              f"k={k} candidates asked for but only {opts.num_autoregressive_samples} autoregressive samples drawn")
        seed = self.seed(seed)
        text_tokens = self._text_tokens(text)
        from tortoise.utils.wav2vec_alignment import check_redaction
        check_redaction([text], self.models_dir, self.enable_redaction)  # [brackets]: now, not after the audio
        bar = TqdmProgress(verbose)
        report = combine(progress, bar)
        try:
            cond = self._conditioning(voice_samples, conditioning_latents, opts, original_tortoise, report)
            codes = pipeline.sample_codes(self.models, cond, text_tokens, opts, self._batch, report,
                                          generate_kwargs or {})
            best = pipeline.rank(self.models, text_tokens, codes, cond, opts, k, self._batch.value, report)
            del codes
            latents = pipeline.ar_latents(self.models, cond, text_tokens, best, report)
            wavs = pipeline.decode_candidates(self.models, best, latents, cond, opts, report)
        finally:
            bar.close()
        return Speech([self._redact(w, text) for w in wavs], seed)

    def stream(self, text, voice_samples=None, conditioning_latents=None, options: GenerationOptions = None,
               seed=None, chunk_size=40, overlap=1024, progress=None, generate_kwargs=None):
        """The streaming fast path: one AR sample (sampled with ``options``' temperature, top_p, penalties and
        max_mel_tokens), its latents decoded by the HiFi-GAN decoder as they come (no CLVP, no diffusion) -> an
        iterator of 24 kHz chunks ``[S_i]``, cross-faded over ``overlap`` samples; the first after
        ``max(chunk_size, 60)`` codes, then every ``chunk_size`` codes. Redaction does not apply. In low-VRAM mode
        the AR model and the decoder stay on the device until the stream ends or is closed."""
        check(chunk_size >= 1, "stream_chunk_size must be at least 1")
        check(overlap >= 1, "overlap_wav_len must be at least 1")
        o = options or GenerationOptions()
        self.seed(seed)
        text_tokens = self._text_tokens(text)
        report = progress or silent
        cond = self._conditioning(voice_samples, conditioning_latents, GenerationOptions(), False, report,
                                  ar_only=True)
        sampling = SamplingOptions.from_generate_kwargs(do_sample=True, top_p=o.top_p, temperature=o.temperature,
                                                        length_penalty=o.length_penalty,
                                                        repetition_penalty=o.repetition_penalty,
                                                        **(generate_kwargs or {}))
        return self._stream(cond, text_tokens, sampling, o.max_mel_tokens, chunk_size, overlap, report)

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

    # ---------------------------------------------------------- streaming fast path, seeding

    def _stream(self, cond, text_tokens, sampling, max_mel_tokens, chunk_size, overlap, progress):
        names = ("autoregressive", "hifidecoder")
        ar, decoder = self.models.acquire(*names)  # a placement, released when the stream ends or is closed
        try:
            yield from pipeline.stream(ar, decoder, cond, text_tokens, sampling, max_mel_tokens, chunk_size, overlap,
                                       progress)
        finally:
            self.models.release(*names)

    def seed(self, seed=None):
        """Seed torch and ``random`` with ``seed`` (the current time when None) and return it, so a run can be
        reproduced on the same device."""
        seed = int(time()) if seed is None else int(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        return seed
