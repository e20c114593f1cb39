"""TextToSpeech: the Tortoise pipeline (conditioning latents, autoregressive sampling, CLVP/CVVP ranking, latent pass,
diffusion, vocoder, redaction) and its fast streaming path (HiFi-GAN decoder straight from the autoregressive latents).

The class, method and keyword names are the original ``tortoise-tts`` 3.0.0's, plus the "fast" fork's knobs
(``sampler``, ``latent_averaging_mode``, ``high_vram``, checkpoint paths, vocoder choice). Generation settings are a
frozen :class:`GenerationOptions`; presets are data in :data:`PRESETS` and are applied as
``dataclasses.replace(PRESETS[name], **overrides)``.

What this pipeline does differently from the original: sampled codes are padded to the longest sample (plus room for
the calm-token trim), not to ``max_mel_tokens``, before CLVP and the latent pass (latents unchanged; CLVP scores, which
average over the padding, change slightly: ``exact_ranking=True`` pads as the original for its exact ranking); the latents of
a voice are cached; models stay on the device unless low-VRAM mode offloads them stage by stage; an out-of-memory
error halves the autoregressive batch and retries.
"""
import dataclasses
import hashlib
import random
import warnings
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from time import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tortoise.utils import checkpoints

# ---------------------------------------------------------------- constants of the released models

AR_SAMPLE_RATE = 22050         # conditioning clips and the AR model's codes
OUTPUT_SAMPLE_RATE = 24000     # diffusion mel, vocoder and output audio
AR_COND_LENGTH = 132300        # 6 s at 22.05 kHz: AR conditioning clips are cropped / padded to this
DIFFUSION_COND_LENGTH = 102400  # ~4.27 s at 24 kHz: diffusion conditioning clips are cut to this
CALM_TOKEN = 83                # the code for silence; codes after the stop token become this
MAX_TEXT_TOKENS = 400          # text (plus one pad) must tokenize to fewer tokens than this
CALM_RUN_TRIM = 8              # latents are cut where a run of more than this many calm tokens ends
CODE_PAD_MARGIN = CALM_RUN_TRIM + 4  # padding past the longest sample so every stopped sample gets its calm run
SAMPLERS = ("p", "ddim", "dpm++2m")
VOCODERS = ("univnet", "bigvgan_base", "bigvgan")


# ---------------------------------------------------------------- options and presets

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
    half: bool | None = None  # None: the TextToSpeech's own setting
    # Score candidates padded to max_mel_tokens, as the original does. CLVP/CVVP average over every position, padding
    # included, so only this reproduces the original's ranking exactly; the default scores the shorter padding.
    exact_ranking: bool = False

    def __post_init__(self):
        _check(self.num_autoregressive_samples >= 1, "num_autoregressive_samples must be at least 1")
        _check(self.temperature > 0, "temperature must be > 0 (0.2 to 1.0 is typical)")
        _check(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 disables it)")
        _check(1 <= self.max_mel_tokens <= 600, "max_mel_tokens must be in 1..600 (each is 1/20 s)")
        _check(0 <= self.cvvp_amount <= 1, "cvvp_amount must be in [0, 1] (0 disables CVVP)")
        _check(1 <= self.diffusion_iterations <= 4000, "diffusion_iterations must be in 1..4000")
        _check(self.cond_free_k >= 0, "cond_free_k must be >= 0")
        _check(self.diffusion_temperature >= 0, "diffusion_temperature must be >= 0 (1 is typical)")
        _check(self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        _check(self.sampler != "dpm++2m" or self.cond_free, "the dpm++2m sampler needs cond_free=True")
        _check(self.latent_averaging_mode in (0, 1, 2), "latent_averaging_mode must be 0, 1 or 2")


def _check(ok, message):
    if not ok:
        raise ValueError(message)


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


# ---------------------------------------------------------------- small pipeline helpers (the original's names)

def pad_or_truncate(t, length):
    """Force the last dimension of ``t`` to ``length`` by cutting or zero-padding."""
    if t.shape[-1] >= length:
        return t[..., :length]
    return F.pad(t, (0, length - t.shape[-1]))


def format_conditioning(clip, cond_length=AR_COND_LENGTH, device="cpu", start=None):
    """Crop (at ``start``, random when None) or pad a ``[1, N]`` 22.05 kHz clip and return its AR mel ``[1, 80, T]``."""
    from tortoise.utils.audio import TorchMelSpectrogram
    gap = clip.shape[-1] - cond_length
    if gap < 0:
        clip = F.pad(clip, (0, -gap))
    elif gap > 0:
        start = random.randint(0, gap) if start is None else start
        clip = clip[:, start:start + cond_length]
    mel = TorchMelSpectrogram().to(clip.device)(clip.unsqueeze(0)).squeeze(0)  # [1, 80, T]
    return mel.unsqueeze(0).to(device)


def fix_autoregressive_output(codes, stop_token, complain=True):
    """The original's tail fix for one code row ``[L]``: codes from the first stop token on become the calm token,
    and the last three become (45, 45, 248), what the DVAE emits for trailing silence. In place; returns ``codes``."""
    stops = (codes == stop_token).nonzero()
    if len(stops) == 0:
        if complain:
            print("No stop tokens found in one of the generated voice clips. This typically means the spoken audio "
                  "is too long. Listen to it and if it is missing words, split the text into shorter pieces.")
        return codes
    first = stops.min().item()
    codes[first:] = CALM_TOKEN
    codes[-3:] = torch.tensor([45, 45, 248], dtype=codes.dtype, device=codes.device)
    return codes


def trim_at_calm(codes, latents):
    """Cut ``latents [L, C]`` where a run of more than CALM_RUN_TRIM calm tokens in ``codes [L]`` ends (the original's
    "breathing room" for the diffusion model to end speech)."""
    run = 0
    for i, code in enumerate(codes.tolist()):
        run = run + 1 if code == CALM_TOKEN else 0
        if run > CALM_RUN_TRIM:
            return latents[:i]
    return latents


def pad_codes(samples, stop_token, max_mel_tokens):
    """Stack code batches ``[b_i, L_i]`` into ``[N, L]`` padded with the stop token to the longest sample plus room
    for the calm-token trim (capped at ``max_mel_tokens``, the original's padding, when that is longer)."""
    longest = max(s.shape[1] for s in samples)
    length = longest + CODE_PAD_MARGIN if longest + CODE_PAD_MARGIN <= max_mel_tokens else max(longest,
                                                                                                max_mel_tokens)
    return torch.cat([F.pad(s, (0, length - s.shape[1]), value=stop_token) for s in samples], dim=0)


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


STREAM_FIRST_CHUNK = 60  # codes before the first streamed chunk (the original's first buffer)


def stream_codes(ar, cond_latent, text_tokens, max_new, sampling, half=False, autocast=None):
    """Sample one code sequence step by step, yielding ``(code, latent [C])`` as each is drawn.

    The latent is the AR model's final-normed hidden state at the position that predicted the code (what the
    original's stream generator yields and what the HiFi-GAN decoder consumes). One prefill of the prompt, then one
    cached step per code; stops after the stop token or ``max_new`` codes.
    """
    from tortoise.utils.sampling import choose_next
    ctx = autocast(half) if autocast is not None else nullcontext()
    with ctx:
        emb = ar.compute_embeddings(cond_latent, text_tokens)  # [1, P0, C]: latent, start, text, stop
        start = torch.full((1, 1), ar.start_mel_token, dtype=torch.long, device=emb.device)
        prompt = torch.cat([emb, ar.mel_embedding(start) + ar.mel_pos_embedding(start)], dim=1)  # [1, P, C]
        seen = torch.zeros(1, ar.number_mel_codes, dtype=torch.bool, device=emb.device)
        seen[0, 1] = True  # the prompt ids the original's sampler sees: ones, then the start token
        seen[0, ar.start_mel_token] = True
        p = prompt.shape[1]
        cache = ar.gpt.new_cache(1, p + max_new, prompt)
        hidden = ar.gpt.prefill(prompt, cache)[:, -1]  # [1, C]
        offset = ar._position_offset()
        for t in range(max_new):
            latent = ar.final_norm(hidden)  # [1, C]
            code = choose_next(ar.mel_head(latent).float(), seen, sampling)  # [1]
            yield int(code), latent[0].float()
            if int(code) == ar.stop_mel_token:
                return
            seen[0, code] = True
            x = ar._mel_step_embedding(code, 1 + t + offset)  # [1, 1, C]
            hidden = ar.gpt.step(x.to(prompt.dtype), cache, p + t)[:, 0]


class ChunkCrossfader:
    """Turns successive decodes of a growing latent sequence into non-overlapping chunks: each push gives the new
    samples, minus the last ``overlap`` (kept back), with their first ``overlap`` samples cross-faded (linear)
    against the previous decode's held-back tail; :meth:`finish` returns the held-back tail."""

    def __init__(self, overlap):
        self.overlap = overlap
        self.emitted = 0  # samples of the full signal already yielded
        self.tail = None  # the previous decode's last `overlap` samples (not yet yielded)

    def push(self, wav):  # wav: [S] the decode of every latent so far
        ov = min(self.overlap, max(wav.shape[0] - self.emitted, 0))
        chunk = wav[self.emitted:wav.shape[0] - ov].clone()
        if self.tail is not None and chunk.numel():
            n = min(self.tail.shape[0], chunk.shape[0])
            ramp = torch.linspace(0.0, 1.0, n, dtype=chunk.dtype)
            chunk[:n] = self.tail[:n] * (1 - ramp) + chunk[:n] * ramp
        self.emitted += chunk.shape[0]
        self.tail = wav[wav.shape[0] - ov:].clone()
        return chunk

    def finish(self):
        tail, self.tail = (self.tail if self.tail is not None else torch.zeros(0)), None
        self.emitted += tail.shape[0]
        return tail


def bigvgan_dir(name, models_dir, download=True):
    """The directory of BigVGAN checkpoint ``name`` (NVIDIA's layout): ``models_dir/<repo name>`` when present, else
    downloaded from the hub into the models dir's cache."""
    from pathlib import Path

    from tortoise.models.vocoder import VOCODERS
    repo = VOCODERS[name]["hub_repo"]
    local = Path(models_dir).expanduser() / repo.split("/")[-1]
    if local.is_dir() or not download:
        return local
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id=repo, cache_dir=str(models_dir)))
    except Exception as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise checkpoints.CheckpointError(
            f"the {name} vocoder is not in {local} and could not be downloaded from {repo} ({reason}); download it "
            f"there (config.json + bigvgan_generator.pt) or use --vocoder univnet") from None


def vocode(vocoder, mel):
    """Mel ``[B, 100, T]`` -> 24 kHz audio ``[B, 1, S]`` with UnivNet (``inference``) or a loaded BigVGAN wrapper."""
    inference = getattr(vocoder, "inference", None)
    return inference(mel) if inference is not None else vocoder(mel)


def _resample(wav, orig_sr, new_sr):
    from tortoise.utils import audio
    return audio.resample(wav, orig_sr, new_sr)


def _fingerprint(tensors, *extra):
    h = hashlib.sha1(repr(extra).encode())
    for t in tensors:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class OutOfMemory(RuntimeError):
    """The device ran out of memory even at batch size 1."""


# ---------------------------------------------------------------- the pipeline

class TextToSpeech:
    """Main entry point into Tortoise."""

    LATENT_CACHE_SIZE = 16

    def __init__(self, autoregressive_batch_size=None, models_dir=None, enable_redaction=True, device=None,
                 high_vram=None, kv_cache=True, half=False, ar_checkpoint=None, clvp_checkpoint=None,
                 diff_checkpoint=None, vocoder="univnet", use_deepspeed=False, tokenizer_vocab_file=None,
                 tokenizer_basic=False, preload=True, compile=False, int8=False, kv_cache_positions="contiguous",
                 hub_revision=None):
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
        :param int8: CPU only, opt-in: int8 dynamic quantization of the AR linears (faster steps, codes drift).
        :param half: half precision where the device does it well (``python -m xpu`` shows the dtype): the AR and
                     CLVP models run under autocast, the diffusion model is cast to that dtype. A per-call
                     ``half=False`` turns autocast off; the diffusion model keeps the constructor's precision.
        :param ar_checkpoint, clvp_checkpoint, diff_checkpoint: explicit checkpoint files instead of the models dir.
        :param vocoder: ``univnet`` (the original's), ``bigvgan_base`` or ``bigvgan`` (NVIDIA's checkpoint directory
                        ``bigvgan_base_24khz_100band`` / ``bigvgan_24khz_100band`` in the models dir, else the hub).
        :param use_deepspeed: accepted for compatibility with the original; ignored.
        :param tokenizer_vocab_file: the tokenizer.json a fine-tuned autoregressive model was trained with (its text
                        vocabulary size must equal the checkpoint's; the released one ships with the package).
        :param hub_revision: branch, tag or commit of the hub repository to download from (default
                        ``$TORTOISE_HUB_REVISION``, else ``main``).
        :param preload: load the AR, CLVP, diffusion and vocoder models now (errors surface early); the rest
                        (CVVP, random-voice generators, HiFi-GAN decoder, aligner, classifier) load when first used.
        """
        import xpu.device as xdev
        self.device = xdev.resolve_device(device)
        self.device_info = xdev.describe(self.device)
        self.models_dir = str(models_dir) if models_dir is not None else str(checkpoints.default_models_dir())
        self.enable_redaction = enable_redaction
        self.half = bool(half)
        from xpu import half_dtype
        self.half_dtype = half_dtype(self.device_info) if self.half else None  # None: fp32 (e.g. most CPUs)
        self.kv_cache = kv_cache
        _check(kv_cache_positions in ("contiguous", "original"),
               f"kv_cache_positions must be 'contiguous' or 'original', not {kv_cache_positions!r}")
        self.ar_options = dict(compile=bool(compile), int8=bool(int8),
                               position_mode="contiguous" if kv_cache_positions == "contiguous" else "original")
        self.high_vram = self._default_high_vram() if high_vram is None else bool(high_vram)
        self.vocoder_name = (vocoder or "univnet").lower()
        _check(self.vocoder_name in VOCODERS, f"unknown vocoder {vocoder!r}: use one of {', '.join(VOCODERS)}")
        self.checkpoint_paths = {"autoregressive": ar_checkpoint, "clvp": clvp_checkpoint,
                                 "diffusion": diff_checkpoint}
        self.hub_revision = hub_revision
        from tortoise.utils.tokenizer import VoiceBpeTokenizer
        self.tokenizer = VoiceBpeTokenizer(vocab_file=tokenizer_vocab_file, use_basic_cleaners=tokenizer_basic)
        self._models = {}
        self._aligner = None
        self._latent_cache = OrderedDict()
        if preload:
            self.preload(("autoregressive", "clvp", "diffusion", "vocoder"))
        self.autoregressive_batch_size = (autoregressive_batch_size if autoregressive_batch_size
                                          else self._pick_batch_size())

    # ---------------------------------------------------------- models

    def _default_high_vram(self):
        if self.device.type == "cpu":
            return True
        return self.device_info.free_memory >= 8 * (1 << 30)

    def _pick_batch_size(self):
        """The largest power-of-two AR batch the device layer finds fits (weights already placed when preloaded)."""
        from xpu import pick_batch_size
        cfg = checkpoints.model_config("autoregressive", self.models_dir)
        dtype = self.half_dtype
        placed = self.high_vram and "autoregressive" in self._models
        return pick_batch_size(self.device_info, cfg, dtype=dtype, weights_loaded=placed)

    def preload(self, names):
        """Load the named models now (``autoregressive``, ``clvp``, ``cvvp``, ``diffusion``, ``vocoder``,
        ``rlg_auto``, ``rlg_diffuser``, ``hifidecoder``)."""
        for name in names:
            self._model(name)

    def _model(self, name):
        if name not in self._models:
            home = self.device if self.high_vram else torch.device("cpu")
            with torch.random.fork_rng(devices=[]):  # building a network draws init weights: keep seeds intact
                if name == "vocoder":
                    model = self._load_vocoder(home)
                else:
                    model = checkpoints.load_model(name, models_dir=self.models_dir,
                                                   path=self.checkpoint_paths.get(name), device=home,
                                                   revision=self.hub_revision)
            if name == "autoregressive":
                self._check_tokenizer_fits(model)
                self._configure_autoregressive(model)
            if name == "diffusion" and self.half_dtype is not None:
                model.to(self.half_dtype)  # DiffusionTts computes in its parameters' dtype (GroupNorm in fp32)
            self._models[name] = model
        return self._models[name]

    def _check_tokenizer_fits(self, model):
        """A fine-tuned model trained with its own tokenizer needs that tokenizer: the vocabulary sizes must agree."""
        have = self.tokenizer.tokenizer.get_vocab_size()
        if have != model.number_text_tokens:
            source = self.checkpoint_paths.get("autoregressive") or "the autoregressive checkpoint"
            raise checkpoints.CheckpointError(
                f"{source} was trained with a text vocabulary of {model.number_text_tokens} tokens but the tokenizer "
                f"has {have}; pass the tokenizer.json it was trained with (--tokenizer FILE)")

    def _configure_autoregressive(self, model):
        post_init = getattr(model, "post_init_gpt2_config", None)
        if post_init is not None:
            post_init(kv_cache=self.kv_cache, half=self.half, **self.ar_options)

    def _load_vocoder(self, device):
        if self.vocoder_name == "univnet":
            return checkpoints.load_model("vocoder", models_dir=self.models_dir, device=device)
        from tortoise.models.vocoder import load_vocoder
        return load_vocoder(self.vocoder_name, bigvgan_dir(self.vocoder_name, self.models_dir), device=device)

    autoregressive = property(lambda self: self._model("autoregressive"))
    clvp = property(lambda self: self._model("clvp"))
    diffusion = property(lambda self: self._model("diffusion"))
    vocoder = property(lambda self: self._model("vocoder"))
    hifi_decoder = property(lambda self: self._model("hifidecoder"))

    @property
    def cvvp(self):
        return self._models.get("cvvp")

    def load_cvvp(self):
        """Load the CVVP model (used only when ``cvvp_amount > 0``)."""
        return self._model("cvvp")

    @contextmanager
    def temporary_cuda(self, model):
        """The model on the device for one stage: a no-op in high-VRAM mode, else moved there and back."""
        if self.high_vram:
            yield model
            return
        import xpu.device as xdev
        with xdev.offload(model, self.device, home="cpu") as m:
            yield m

    def _autocast(self, half):
        if not half:
            return nullcontext()
        import xpu.dtype as xdt
        return xdt.autocast(self.device, enabled=True)

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

    @staticmethod
    def _split_samples(voice_samples):
        """Accept the original's list of 22.05 kHz clips or the fast fork's (22.05 kHz, 24 kHz) pairs."""
        if isinstance(voice_samples, torch.Tensor):
            voice_samples = [voice_samples]
        pairs = []
        for s in voice_samples:
            if isinstance(s, (tuple, list)):
                pairs.append((s[0], s[1] if len(s) > 1 else None))
            else:
                pairs.append((s, None))
        if not pairs:
            raise ValueError("voice_samples is empty: pass one or more [1, N] 22.05 kHz clips")
        return pairs

    def get_conditioning_latents(self, voice_samples, return_mels=False, latent_averaging_mode=0,
                                 original_tortoise=False):
        """Reference clips -> (autoregressive latent ``[1, C]``, diffusion latent ``[1, 2C']``).

        :param voice_samples: 22.05 kHz ``[1, N]`` clips (or the fast fork's (22.05 kHz, 24 kHz) pairs).
        :param latent_averaging_mode: diffusion conditioning from 0: the first ~4.27 s of each clip (the original),
            1: every ~4.27 s chunk of every clip, averaged; 2: the chunks of each clip averaged per clip.
        :param return_mels: also return the AR and diffusion conditioning mels.
        Results are cached per voice (clip contents, crop positions and mode), so a voice is encoded once.
        """
        _check(latent_averaging_mode in (0, 1, 2), "latent_averaging_mode must be 0, 1 or 2")
        pairs = self._split_samples(voice_samples)
        # The crops are drawn exactly as the original draws them (one randint per clip longer than 6 s, in order).
        starts = [random.randint(0, s.shape[-1] - AR_COND_LENGTH) if s.shape[-1] > AR_COND_LENGTH else None
                  for s, _ in pairs]
        key = _fingerprint([t for p in pairs for t in p if t is not None], starts, latent_averaging_mode,
                           original_tortoise)
        if key in self._latent_cache:
            self._latent_cache.move_to_end(key)
            result = self._latent_cache[key]
        else:
            result = self._compute_latents(pairs, starts, latent_averaging_mode, original_tortoise)
            self._latent_cache[key] = result
            while len(self._latent_cache) > self.LATENT_CACHE_SIZE:
                self._latent_cache.popitem(last=False)
        return result if return_mels else result[:2]

    def _compute_latents(self, pairs, starts, mode, original_tortoise):
        with torch.no_grad():
            auto_conds = torch.stack([format_conditioning(s.to(self.device), device=self.device, start=st)
                                      for (s, _), st in zip(pairs, starts)], dim=1)  # [1, n, 80, T]
            with self.temporary_cuda(self.autoregressive) as ar:
                auto_latent = ar.get_conditioning(auto_conds)  # [1, C]
            diffusion_conds = self._diffusion_conds(pairs, mode, original_tortoise)  # [1, m, 100, T']
            with self.temporary_cuda(self.diffusion) as diffusion:
                diffusion_latent = diffusion.get_conditioning(diffusion_conds)  # [1, 2C']
        return auto_latent, diffusion_latent, auto_conds, diffusion_conds

    def _diffusion_conds(self, pairs, mode, original_tortoise):
        from tortoise.utils.audio import wav_to_univnet_mel

        def mel(chunk):  # [1, N] 24 kHz -> [1, 100, T']
            chunk = pad_or_truncate(chunk.to(self.device), DIFFUSION_COND_LENGTH)
            return wav_to_univnet_mel(chunk, do_normalization=False, device=self.device)

        conds = []
        for s22, s24 in pairs:
            sample = s24 if (s24 is not None and not original_tortoise) else _resample(s22, AR_SAMPLE_RATE,
                                                                                        OUTPUT_SAMPLE_RATE)
            if mode == 0:
                conds.append(mel(sample))
                continue
            n_chunks = max(1, -(-sample.shape[-1] // DIFFUSION_COND_LENGTH))
            chunks = [mel(sample[:, i * DIFFUSION_COND_LENGTH:(i + 1) * DIFFUSION_COND_LENGTH])
                      for i in range(n_chunks)]
            conds += chunks if mode == 1 else [torch.stack(chunks).mean(0)]
        return torch.stack(conds, dim=1)

    def get_random_conditioning_latents(self):
        """Latents of a random voice, from the random latent generators."""
        with torch.no_grad():
            auto = self._model("rlg_auto")
            diff = self._model("rlg_diffuser")
            zero = torch.tensor([0.0], device=next(auto.parameters()).device)
            return auto(zero).to(self.device), diff(zero.to(next(diff.parameters()).device)).to(self.device)

    # ---------------------------------------------------------- generation

    def tts_with_preset(self, text, preset="fast", **kwargs):
        """:meth:`tts` with a preset from :data:`PRESETS`; keyword arguments override the preset's options or are
        passed on to :meth:`tts` (``voice_samples``, ``conditioning_latents``, ``k``, ``verbose``, ...)."""
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS}
        options = preset_options(preset, **overrides)
        return self.tts(text, options=options, **kwargs)

    def tts(self, text, voice_samples=None, conditioning_latents=None, k=1, verbose=True,
            use_deterministic_seed=None, return_deterministic_state=False, options=None, original_tortoise=False,
            **kwargs):
        """Speak ``text`` in a voice given by ``voice_samples`` (22.05 kHz clips), ``conditioning_latents``
        (an (AR, diffusion) latent pair) or neither (a random voice).

        Generation knobs (see :class:`GenerationOptions`): num_autoregressive_samples, temperature, length_penalty,
        repetition_penalty, top_p, max_mel_tokens, cvvp_amount, diffusion_iterations, cond_free, cond_free_k,
        diffusion_temperature, sampler (p / ddim / dpm++2m), latent_averaging_mode, half; given as keywords or as
        ``options``. Other keywords go to the AR model's ``inference_speech``.
        :param k: how many candidates to return, best first as ranked by CLVP (+ CVVP when cvvp_amount > 0).
        :return: 24 kHz audio ``[1, 1, S]`` (k = 1) or a list of k of them; with ``return_deterministic_state``
                 also ``(seed, text, voice_samples, conditioning_latents)``.
        """
        option_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS}
        opts = dataclasses.replace(options or GenerationOptions(), **option_kwargs)
        _check(1 <= k <= opts.num_autoregressive_samples,
               f"k={k} candidates asked for but only {opts.num_autoregressive_samples} autoregressive samples drawn")
        half = self.half if opts.half is None else opts.half
        seed = self.deterministic_state(seed=use_deterministic_seed)
        text_tokens = self._text_tokens(text)
        auto_latent, diffusion_latent, auto_conds = self._conditioning(voice_samples, conditioning_latents,
                                                                       opts.latent_averaging_mode, original_tortoise)
        with torch.no_grad():
            codes = self._sample_codes(auto_latent, text_tokens, opts, half, verbose, kwargs)
            if opts.exact_ranking and codes.shape[1] < opts.max_mel_tokens:
                codes = F.pad(codes, (0, opts.max_mel_tokens - codes.shape[1]), value=self.autoregressive.stop_mel_token)
            best = self._rank(text_tokens, codes, auto_conds, opts.cvvp_amount, k, half, verbose)
            del codes
            latents = self._latents(auto_latent, text_tokens, best, half)
            wavs = self._decode_candidates(best, latents, diffusion_latent, opts, half, verbose)
        wavs = [self._redact(w, text) for w in wavs]
        res = wavs if len(wavs) > 1 else wavs[0]
        if return_deterministic_state:
            return res, (seed, text, voice_samples, conditioning_latents)
        return res

    def _text_tokens(self, text):
        if not isinstance(text, str) or not text.strip():
            raise ValueError("Empty text: give the text to speak.")
        tokens = torch.IntTensor(self.tokenizer.encode(text)).unsqueeze(0).to(self.device)
        tokens = F.pad(tokens, (0, 1))  # [1, T+1], as the original
        if tokens.shape[-1] >= MAX_TEXT_TOKENS:
            raise ValueError(f"Text too long ({tokens.shape[-1]} tokens; the model takes fewer than "
                             f"{MAX_TEXT_TOKENS}): split it into sentences (the command line does this itself).")
        return tokens

    def _conditioning(self, voice_samples, conditioning_latents, latent_averaging_mode, original_tortoise):
        auto_conds = None
        if voice_samples is not None:
            auto_latent, diffusion_latent, auto_conds, _ = self.get_conditioning_latents(
                voice_samples, return_mels=True, latent_averaging_mode=latent_averaging_mode,
                original_tortoise=original_tortoise)
        elif conditioning_latents is not None:
            auto_latent, diffusion_latent = conditioning_latents
        else:
            auto_latent, diffusion_latent = self.get_random_conditioning_latents()
        auto_latent = auto_latent.to(self.device)
        if auto_latent.dim() == 1:
            auto_latent = auto_latent.unsqueeze(0)
        diffusion_latent = diffusion_latent.to(self.device)
        if diffusion_latent.dim() == 1:
            diffusion_latent = diffusion_latent.unsqueeze(0)
        return auto_latent, diffusion_latent, auto_conds

    def _batches(self, total):
        """Batch sizes that add up to ``total``, each at most the AR batch size."""
        bs = max(1, self.autoregressive_batch_size)
        return [min(bs, total - i) for i in range(0, total, bs)]

    def _sample_codes(self, auto_latent, text_tokens, opts, half, verbose, generate_kwargs):
        """Draw ``num_autoregressive_samples`` code sequences; returns ``[N, L]`` padded to the longest (+margin)."""
        if verbose:
            print("Generating autoregressive samples..")
        samples, remaining = [], opts.num_autoregressive_samples
        ar = self.autoregressive
        with self.temporary_cuda(ar) as ar, tqdm(total=remaining, disable=not verbose, unit="sample") as bar:
            while remaining > 0:
                n = min(max(1, self.autoregressive_batch_size), remaining)
                codes = self._oom_retry(lambda: self._generate(ar, auto_latent, text_tokens, n, opts, half,
                                                               generate_kwargs), n)
                if codes is None:
                    continue  # batch halved; retry the same samples
                samples.append(codes)
                remaining -= codes.shape[0]
                bar.update(codes.shape[0])
        return pad_codes(samples, ar.stop_mel_token, opts.max_mel_tokens)

    def _generate(self, ar, auto_latent, text_tokens, n, opts, half, generate_kwargs):
        with self._autocast(half):
            return ar.inference_speech(auto_latent, text_tokens, do_sample=True, top_p=opts.top_p,
                                       temperature=opts.temperature, num_return_sequences=n,
                                       length_penalty=opts.length_penalty,
                                       repetition_penalty=opts.repetition_penalty,
                                       max_generate_length=opts.max_mel_tokens, **generate_kwargs)

    def _oom_retry(self, fn, n):
        """Run ``fn``; on out-of-memory halve the AR batch size (warning once per halving) and return None."""
        import xpu.device as xdev
        try:
            return fn()
        except Exception as e:
            if not xdev.is_oom_error(e):
                raise
            if n <= 1:
                raise OutOfMemory(f"{self.device} ran out of memory even at batch size 1: use --low_vram, --half, "
                                  "fewer candidates or a smaller max_mel_tokens") from e
        xdev.empty_cache(self.device)
        self.autoregressive_batch_size = max(1, n // 2)
        warnings.warn(f"out of memory at autoregressive batch size {n}; retrying with "
                      f"{self.autoregressive_batch_size}", RuntimeWarning, stacklevel=3)
        return None

    def _rank(self, text_tokens, codes, auto_conds, cvvp_amount, k, half, verbose):
        """Fix each sample's tail and return the ``k`` best ``[k, L]`` by CLVP (+ CVVP) score, best first."""
        stop = self.autoregressive.stop_mel_token
        unstopped = int((~(codes == stop).any(dim=1)).sum())
        for row in codes:
            fix_autoregressive_output(row, stop, complain=False)
        if unstopped and verbose:
            print(f"{unstopped} of {codes.shape[0]} samples have no stop token: the speech may be cut short. If words "
                  "are missing, split the text into shorter pieces or raise max_mel_tokens.")
        use_cvvp = cvvp_amount > 0 and auto_conds is not None
        if verbose:
            print("Computing best candidates using CLVP" if not use_cvvp else
                  f"Computing best candidates using CLVP {((1 - cvvp_amount) * 100):2.0f}% "
                  f"and CVVP {(cvvp_amount * 100):2.0f}%")
        bs = max(1, self.autoregressive_batch_size)
        cvvp_model = self.load_cvvp() if use_cvvp else None
        clvp_model = self.clvp if cvvp_amount < 1 or not use_cvvp else None
        scores = []
        with self.temporary_cuda(clvp_model) if clvp_model is not None else nullcontext() as clvp, \
                self.temporary_cuda(cvvp_model) if cvvp_model is not None else nullcontext() as cvvp, \
                self._autocast(half):
            for batch in tqdm(list(torch.split(codes, bs)), disable=not verbose):
                scores.append(self._score(clvp, cvvp, text_tokens, batch, auto_conds,
                                          cvvp_amount if use_cvvp else 0.0))
        scores = torch.cat(scores, dim=0)
        return codes[torch.topk(scores, k=k).indices]

    @staticmethod
    def _score(clvp, cvvp, text_tokens, batch, auto_conds, cvvp_amount):
        """CLVP score of each code row of ``batch [b, L]``, blended with CVVP by ``cvvp_amount``: ``[b]``."""
        score = 0
        if cvvp_amount < 1:
            score = clvp(text_tokens.repeat(batch.shape[0], 1), batch, return_loss=False).float()
        if cvvp_amount > 0:
            n_clips = auto_conds.shape[1]
            cv = sum(cvvp(auto_conds[:, c].repeat(batch.shape[0], 1, 1), batch, return_loss=False)
                     for c in range(n_clips)).float() / n_clips
            score = cv if cvvp_amount == 1 else cv * cvvp_amount + score * (1 - cvvp_amount)
        return score

    def _latents(self, auto_latent, text_tokens, best, half):
        """The AR model's final hidden states for the chosen codes: ``[k, L, C]`` (the diffusion model's input)."""
        k = best.shape[0]
        ar = self.autoregressive
        with self.temporary_cuda(ar) as ar, self._autocast(half):
            latents = ar(auto_latent.repeat(k, 1), text_tokens.repeat(k, 1),
                         torch.tensor([text_tokens.shape[-1]], device=text_tokens.device), best,
                         torch.tensor([best.shape[-1] * ar.mel_length_compression], device=text_tokens.device),
                         return_latent=True, clip_inputs=False)
        return latents.float()

    def _decode_candidates(self, best, latents, diffusion_latent, opts, half, verbose):
        if verbose:
            print("Transforming autoregressive outputs into audio..")
        diffuser = load_discrete_vocoder_diffuser(desired_diffusion_steps=opts.diffusion_iterations,
                                                  cond_free=opts.cond_free, cond_free_k=opts.cond_free_k,
                                                  sampler=opts.sampler)
        wavs = []
        with self.temporary_cuda(self.diffusion) as diffusion, self.temporary_cuda(self.vocoder) as vocoder:
            for codes, lat in zip(best, latents):
                lat = trim_at_calm(codes, lat).unsqueeze(0)  # [1, L', C]
                with self._autocast(half):
                    mel = do_spectrogram_diffusion(diffusion, diffuser, lat, diffusion_latent,
                                                   temperature=opts.diffusion_temperature, verbose=verbose)
                wav = vocode(vocoder, mel.float())  # [1, 1, S]
                wavs.append(wav.float().cpu())
        return wavs

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
                   cond_free=None, cond_free_k=None, diffusion_temperature=None, half=None, **generate_kwargs):
        """The original v3's fast path: one AR sample, its latents decoded by the HiFi-GAN decoder as they come (no
        CLVP, no diffusion). Yields 24 kHz audio chunks ``[S_i]`` whose boundaries are cross-faded over
        ``overlap_wav_len`` samples; the first after ``max(stream_chunk_size, 60)`` codes, then every
        ``stream_chunk_size`` codes. Redaction does not apply (audio leaves before the text is complete).
        ``k``, ``num_autoregressive_samples``, ``return_deterministic_state``, ``cvvp_amount`` and the diffusion
        knobs are accepted for the original's signature and have no effect here (one sample, no ranking, no
        diffusion)."""
        _check(stream_chunk_size >= 1, "stream_chunk_size must be at least 1")
        _check(overlap_wav_len >= 1, "overlap_wav_len must be at least 1")
        half = self.half if half is None else half
        self.deterministic_state(seed=use_deterministic_seed)
        text_tokens = self._text_tokens(text)
        auto_latent = self._ar_conditioning(voice_samples, conditioning_latents)
        from tortoise.utils.sampling import SamplingOptions
        sampling = SamplingOptions.from_generate_kwargs(do_sample=True, top_p=top_p, temperature=temperature,
                                                        length_penalty=length_penalty,
                                                        repetition_penalty=repetition_penalty, **generate_kwargs)
        fader = ChunkCrossfader(overlap_wav_len)
        latents, pending, first = [], 0, max(stream_chunk_size, STREAM_FIRST_CHUNK)
        ar, decoder = self.autoregressive, self.hifi_decoder
        with torch.no_grad(), self.temporary_cuda(ar) as ar, self.temporary_cuda(decoder) as decoder:
            steps = stream_codes(ar, auto_latent, text_tokens, max_mel_tokens, sampling, half, self._autocast)
            for _, latent in tqdm(steps, disable=not verbose, unit="code"):
                latents.append(latent)
                pending += 1
                if pending >= first:
                    first, pending = stream_chunk_size, 0
                    yield fader.push(self._hifi(decoder, latents, auto_latent))
            if pending:
                yield fader.push(self._hifi(decoder, latents, auto_latent))
            tail = fader.finish()
            if tail.numel():
                yield tail

    def _hifi(self, decoder, latents, auto_latent):
        """All latents so far ``[T, C]`` -> the decoder's waveform for them ``[S]`` (on the CPU)."""
        lat = torch.stack(latents, dim=0).unsqueeze(0).float()  # [1, T, C]
        return decoder.inference(lat, auto_latent.float()).reshape(-1).cpu()

    def _ar_conditioning(self, voice_samples, conditioning_latents):
        """Only the AR latent ``[1, C]`` (the streaming path needs no diffusion latent)."""
        if voice_samples is not None:
            pairs = self._split_samples(voice_samples)
            starts = [random.randint(0, s.shape[-1] - AR_COND_LENGTH) if s.shape[-1] > AR_COND_LENGTH else None
                      for s, _ in pairs]
            key = _fingerprint([p[0] for p in pairs], starts, "ar-only")
            if key not in self._latent_cache:
                with torch.no_grad():
                    conds = torch.stack([format_conditioning(s.to(self.device), device=self.device, start=st)
                                         for (s, _), st in zip(pairs, starts)], dim=1)
                    with self.temporary_cuda(self.autoregressive) as ar:
                        self._latent_cache[key] = (ar.get_conditioning(conds),)
            latent = self._latent_cache[key][0]
        elif conditioning_latents is not None:
            latent = conditioning_latents[0]
        else:
            with torch.no_grad():
                rlg = self._model("rlg_auto")
                latent = rlg(torch.tensor([0.0], device=next(rlg.parameters()).device))
        latent = latent.to(self.device)
        return latent.unsqueeze(0) if latent.dim() == 1 else latent

    def deterministic_state(self, seed=None):
        """Seed torch and ``random`` with ``seed`` (the current time when None) and return it, so a run can be
        reproduced on the same device."""
        seed = int(time()) if seed is None else int(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        return seed
