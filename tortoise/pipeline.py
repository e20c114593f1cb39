"""The Tortoise pipeline as stage functions of explicit networks (a :class:`~tortoise.loading.ModelSet`), one frozen
:class:`~tortoise.options.GenerationOptions` and a progress callback ``progress(stage, done, total)``:

    condition -> sample_codes -> rank -> ar_latents -> diffuse -> vocode        (the full pipeline)
    condition -> stream                                                          (the streaming fast path)

Every stage takes and returns float32 tensors (the networks compute in their own dtype) and checks that what it
hands on is finite: a NaN never reaches a wav file. ``TextToSpeech`` (:mod:`tortoise.api`) is a thin facade over
these functions with the original's names and signatures.
"""
import hashlib
import random
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import xpu
from tortoise.models.hifigan_decoder import STREAM_FIRST_CODES, ChunkCrossfader
from tortoise.progress import silent
from tortoise.utils.sound import TorchMelSpectrogram, resample, wav_to_univnet_mel
from tortoise.utils.diffusion import do_spectrogram_diffusion, make_diffuser
from tortoise.utils.sampling import SamplingOptions

# ---------------------------------------------------------------- constants of the released models

AR_SAMPLE_RATE = 22050         # conditioning clips and the AR model's codes
OUTPUT_SAMPLE_RATE = 24000     # diffusion mel, vocoder and output audio
AR_COND_LENGTH = 132300        # 6 s at 22.05 kHz: AR conditioning clips are cropped / padded to this
DIFFUSION_COND_LENGTH = 102400  # ~4.27 s at 24 kHz: diffusion conditioning clips are cut to this
CALM_TOKEN = 83                # the code for silence; codes after the stop token become this
MAX_TEXT_TOKENS = 400          # text (plus one pad) must tokenize to fewer tokens than this
CALM_RUN_TRIM = 8              # latents are cut where a run of more than this many calm tokens ends
CODE_PAD_MARGIN = CALM_RUN_TRIM + 4  # padding past the longest sample so every stopped sample gets its calm run


class NonFiniteError(RuntimeError):
    """A stage produced NaN or infinite values; the message names the stage and what to try."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory even at batch size 1."""


def ensure_finite(tensor, what, hint="try again without --half, or with another seed"):
    """Raise :class:`NonFiniteError` naming ``what`` when ``tensor`` holds NaN or infinity."""
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"the {what} hold NaN or infinite values; {hint}")
    return tensor


def ensure_sampleable(logits, what, hint="check the voice's latents"):
    """Logits ``[B, V]`` a sampler can draw from: no NaN, no +inf, and some finite score in every row (-inf is a
    masked token, as a logits processor or a caller's mask may set)."""
    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any() or
            not torch.isfinite(logits).any(dim=-1).all()):
        raise NonFiniteError(f"the {what} hold NaN or infinite values; {hint}")
    return logits


# ---------------------------------------------------------------- conditioning

@dataclass(frozen=True)
class Conditioning:
    """A voice as the networks see it: the AR latent ``[1, C]``, the diffusion latent ``[1, 2C']`` (None for the
    streaming path, which needs none) and the conditioning mels they came from (AR ``[1, n, 80, T]``, which CVVP
    scores against, and diffusion ``[1, m, 100, T']``; None when the voice came as latents)."""
    auto_latent: torch.Tensor
    diffusion_latent: torch.Tensor = None
    auto_mels: torch.Tensor = None
    diffusion_mels: torch.Tensor = None


def pad_or_truncate(t, length):
    """Force the last dimension of ``t`` to ``length`` by cutting or zero-padding."""
    if t.shape[-1] >= length:
        return t[..., :length]
    return F.pad(t, (0, length - t.shape[-1]))


def format_conditioning(clip, cond_length=AR_COND_LENGTH, device="cpu", start=None):
    """Crop (at ``start``, random when None) or pad a ``[1, N]`` 22.05 kHz clip and return its AR mel ``[1, 80, T]``."""
    gap = clip.shape[-1] - cond_length
    if gap < 0:
        clip = F.pad(clip, (0, -gap))
    elif gap > 0:
        start = random.randint(0, gap) if start is None else start
        clip = clip[:, start:start + cond_length]
    mel = TorchMelSpectrogram().to(clip.device)(clip.unsqueeze(0)).squeeze(0)  # [1, 80, T]
    return mel.unsqueeze(0).to(device)


def split_samples(voice_samples):
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


def crop_starts(pairs):
    """Where each clip longer than 6 s is cropped, drawn as the original draws them (one randint per such clip)."""
    return [random.randint(0, s.shape[-1] - AR_COND_LENGTH) if s.shape[-1] > AR_COND_LENGTH else None
            for s, _ in pairs]


def fingerprint(tensors, *extra):
    """A key for a voice: the clips' contents plus ``extra`` (crop positions, modes)."""
    h = hashlib.sha1(repr(extra).encode())
    for t in tensors:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def condition(models, pairs, starts, mode=0, original_tortoise=False, ar_only=False, progress=silent):
    """Reference clips -> :class:`Conditioning` (``ar_only``: the AR latent only, for streaming).

    ``mode`` (latent averaging) picks the diffusion conditioning: 0 the first ~4.27 s of each clip (the original),
    1 every ~4.27 s chunk of every clip averaged, 2 the chunks averaged per clip. ``original_tortoise`` resamples the
    22.05 kHz clips for the diffusion model even where 24 kHz ones were given (the original's behaviour)."""
    device = models.device
    total = 1 if ar_only else 2
    progress("conditioning", 0, total)
    with torch.no_grad():
        auto_mels = torch.stack([format_conditioning(s.to(device), device=device, start=st)
                                 for (s, _), st in zip(pairs, starts)], dim=1)  # [1, n, 80, T]
        with models.stage("autoregressive") as ar:
            auto_latent = ensure_finite(ar.get_conditioning(auto_mels), "voice's autoregressive latents",
                                        "check the voice's clips")
        progress("conditioning", 1, total)
        if ar_only:
            return Conditioning(auto_latent, None, auto_mels)
        diffusion_mels = _diffusion_mels(pairs, mode, original_tortoise, device)  # [1, m, 100, T']
        with models.stage("diffusion") as diffusion:
            diffusion_latent = diffusion.get_conditioning(diffusion_mels).float()
        ensure_finite(diffusion_latent, "voice's diffusion latents", "check the voice's clips")
    progress("conditioning", 2, total)
    return Conditioning(auto_latent, diffusion_latent, auto_mels, diffusion_mels)


def _diffusion_mels(pairs, mode, original_tortoise, device):
    def mel(chunk):  # [1, N] 24 kHz -> [1, 100, T']
        return wav_to_univnet_mel(pad_or_truncate(chunk.to(device), DIFFUSION_COND_LENGTH), do_normalization=False,
                                  device=device)

    mels = []
    for s22, s24 in pairs:
        sample = s24 if (s24 is not None and not original_tortoise) else resample(s22, AR_SAMPLE_RATE,
                                                                                  OUTPUT_SAMPLE_RATE)
        if mode == 0:
            mels.append(mel(sample))
            continue
        n_chunks = max(1, -(-sample.shape[-1] // DIFFUSION_COND_LENGTH))
        chunks = [mel(sample[:, i * DIFFUSION_COND_LENGTH:(i + 1) * DIFFUSION_COND_LENGTH]) for i in range(n_chunks)]
        mels += chunks if mode == 1 else [torch.stack(chunks).mean(0)]
    return torch.stack(mels, dim=1)


def random_conditioning(models, ar_only=False):
    """A random voice: the random latent generators' latents for a zero input."""
    with torch.no_grad():
        rlg = models.get("rlg_auto")
        zero = torch.tensor([0.0], device=next(rlg.parameters()).device)
        auto = rlg(zero).to(models.device)
        if ar_only:
            return Conditioning(_as_row(auto))
        diff = models.get("rlg_diffuser")
        return Conditioning(_as_row(auto), _as_row(diff(zero.to(next(diff.parameters()).device)).to(models.device)))


def given_conditioning(models, latents, ar_only=False):
    """The (AR latent, diffusion latent) pair a caller passed (or a saved voice), checked against the models'
    latent widths (the diffusion one only when it is used) and for finite values, on the device."""
    from tortoise.utils.voices import check_latents, expected_latent_widths
    ar_width, diffusion_width = expected_latent_widths(models.models_dir)
    ar_width = models.get("autoregressive").model_dim if models.loaded("autoregressive") else ar_width
    pair = (latents[0], latents[1] if len(latents) > 1 and latents[1] is not None else latents[0])
    auto, diff = check_latents(pair, "conditioning_latents", (ar_width, None if ar_only else diffusion_width))
    diff = None if ar_only and (len(latents) < 2 or latents[1] is None) else diff
    return Conditioning(auto.to(models.device).float(), None if diff is None else diff.to(models.device).float())


def _as_row(t):
    return t.unsqueeze(0) if t.dim() == 1 else t


class LatentCache:
    """Conditioning of the most recent voices, so a voice is encoded once per run (keyed by :func:`fingerprint`)."""

    def __init__(self, size=16):
        self.size = size
        self._items = OrderedDict()

    def get(self, key, compute):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = compute()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


# ---------------------------------------------------------------- autoregressive sampling

class BatchSize:
    """The autoregressive batch size of a run. An out-of-memory error halves it (said once per halving) and the
    smaller size is kept for the rest of the run, every later clip included."""

    def __init__(self, value, device="cpu"):
        self.value = max(1, int(value))
        self.device = device

    def attempt(self, fn, n):
        """``fn()`` for a batch of ``n``; on out-of-memory, halve the batch size and return None (retry)."""
        try:
            return fn()
        except Exception as e:
            if not xpu.is_oom_error(e):
                raise
            if n <= 1:
                raise OutOfMemory(f"{self.device} ran out of memory even at batch size 1: use --low_vram, --half, "
                                  "fewer candidates or a smaller max_mel_tokens") from e
        xpu.empty_cache(self.device)
        self.value = max(1, n // 2)
        warnings.warn(f"out of memory at autoregressive batch size {n}; using batch size {self.value} from now on",
                      RuntimeWarning, stacklevel=3)
        return None


def sampling_options(opts, **generate_kwargs):
    """The AR sampler's settings from the generation options (+ the original's extra ``generate`` keywords)."""
    return SamplingOptions.from_generate_kwargs(**{**opts.sampling_kwargs(), **generate_kwargs})


def sample_codes(models, cond, text_tokens, opts, batch, progress=silent, generate_kwargs=None):
    """Draw ``opts.num_autoregressive_samples`` code sequences in batches of ``batch.value`` -> ``[N, L]`` padded with
    the stop token to the longest sample (+ room for the calm trim). Progress counts samples: a batch of ``n`` adds
    ``n / max_mel_tokens`` per decode step, and its rows once it ends (early, when every row has stopped)."""
    sampling = sampling_options(opts, **(generate_kwargs or {}))
    total_samples = remaining = opts.num_autoregressive_samples
    samples = []
    with models.stage("autoregressive") as ar:
        while remaining > 0:
            n = min(batch.value, remaining)
            base = total_samples - remaining  # progress: samples of the batches before

            def run(n=n, base=base):
                state = ar.prefill(cond.auto_latent, text_tokens, n, opts.max_mel_tokens)
                ensure_sampleable(state.logits, "autoregressive model's first logits")
                per_step = n / opts.max_mel_tokens
                return ar.decode(state, sampling,
                                 lambda step, _: progress("autoregressive", min(base + step * per_step, base + n),
                                                          total_samples))
            progress("autoregressive", base, total_samples)
            codes = batch.attempt(run, n)
            if codes is None:
                continue  # batch halved; retry the same samples
            samples.append(codes)
            remaining -= codes.shape[0]
            progress("autoregressive", total_samples - remaining, total_samples)
    return pad_codes(samples, models.get("autoregressive").stop_mel_token, opts.max_mel_tokens)


def pad_codes(samples, stop_token, max_mel_tokens):
    """Stack code batches ``[b_i, L_i]`` into ``[N, L]`` padded with the stop token to the longest sample plus room
    for the calm-token trim (capped at ``max_mel_tokens``, the original's padding, when that is longer)."""
    longest = max(s.shape[1] for s in samples)
    if longest + CODE_PAD_MARGIN <= max_mel_tokens:
        length = longest + CODE_PAD_MARGIN
    else:
        length = max(longest, max_mel_tokens)
    return torch.cat([F.pad(s, (0, length - s.shape[1]), value=stop_token) for s in samples], dim=0)


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


# ---------------------------------------------------------------- ranking

def rank(models, text_tokens, codes, cond, opts, k, batch_size, progress=silent):
    """Fix each sample's tail and return the ``k`` best ``[k, L]`` by CLVP (+ CVVP) score, best first.

    ``opts.exact_ranking`` pads the codes to ``max_mel_tokens`` first (the original's padding, over which CLVP
    averages: its exact ranking). Samples that never drew the stop token are reported with a warning."""
    stop = models.get("autoregressive").stop_mel_token
    if opts.exact_ranking and codes.shape[1] < opts.max_mel_tokens:
        codes = F.pad(codes, (0, opts.max_mel_tokens - codes.shape[1]), value=stop)
    unstopped = int((~(codes == stop).any(dim=1)).sum())
    for row in codes:
        fix_autoregressive_output(row, stop, complain=False)
    if unstopped:
        warnings.warn(f"{unstopped} of {codes.shape[0]} samples have no stop token: the speech may be cut short. If "
                      "words are missing, split the text into shorter pieces or raise max_mel_tokens (with the "
                      "random-weight test models this is expected)", UserWarning, stacklevel=2)
    use_cvvp = opts.cvvp_amount > 0 and cond.auto_mels is not None
    names = (["clvp"] if opts.cvvp_amount < 1 or not use_cvvp else []) + (["cvvp"] if use_cvvp else [])
    batches = list(torch.split(codes, max(1, batch_size)))
    progress("ranking", 0, len(batches))
    with torch.no_grad(), models.stage(*names) as nets:
        nets = dict(zip(names, nets if len(names) > 1 else [nets]))
        scores = []
        for i, part in enumerate(batches):
            scores.append(_score(nets.get("clvp"), nets.get("cvvp"), text_tokens, part, cond.auto_mels,
                                 opts.cvvp_amount if use_cvvp else 0.0))
            progress("ranking", i + 1, len(batches))
    scores = torch.cat(scores, dim=0)
    return codes[torch.topk(scores, k=k).indices]


def _score(clvp, cvvp, text_tokens, batch, auto_mels, cvvp_amount):
    """CLVP score of each code row of ``batch [b, L]``, blended with CVVP by ``cvvp_amount``: ``[b]``."""
    score = 0
    if cvvp_amount < 1:
        score = clvp(text_tokens.repeat(batch.shape[0], 1), batch, return_loss=False).float()
    if cvvp_amount > 0:
        n_clips = auto_mels.shape[1]
        mels = auto_mels.to(next(cvvp.parameters()).dtype)
        cv = sum(cvvp(mels[:, c].repeat(batch.shape[0], 1, 1), batch, return_loss=False).float()
                 for c in range(n_clips)) / n_clips
        score = cv if cvvp_amount == 1 else cv * cvvp_amount + score * (1 - cvvp_amount)
    return score


# ---------------------------------------------------------------- latents, diffusion, vocoder

def ar_latents(models, cond, text_tokens, best, progress=silent):
    """The AR model's final-normed hidden states for the chosen codes: ``[k, L, C]`` float32 (the diffusion input)."""
    k = best.shape[0]
    progress("latents", 0, 1)
    with torch.no_grad(), models.stage("autoregressive") as ar:
        latents = ar(cond.auto_latent.repeat(k, 1), text_tokens.repeat(k, 1),
                     torch.tensor([text_tokens.shape[-1]], device=text_tokens.device), best,
                     torch.tensor([best.shape[-1] * ar.mel_length_compression], device=text_tokens.device),
                     return_latent=True, clip_inputs=False)
    progress("latents", 1, 1)
    return ensure_finite(latents.float(), "autoregressive latents")


def trim_at_calm(codes, latents):
    """Cut ``latents [L, C]`` where a run of more than CALM_RUN_TRIM calm tokens in ``codes [L]`` ends (the original's
    "breathing room" for the diffusion model to end speech)."""
    run = 0
    for i, code in enumerate(codes.tolist()):
        run = run + 1 if code == CALM_TOKEN else 0
        if run > CALM_RUN_TRIM:
            return latents[:i]
    return latents


def diffuse(diffusion, diffuser, codes, latents, cond, opts, report=None):
    """One candidate: its latents ``[L, C]`` (trimmed at the calm tokens of ``codes [L]``) -> its denormalised 24 kHz
    mel ``[1, 100, T]`` float32, with the sampler and guidance of ``diffuser`` (``report(done, total)`` per step)."""
    lat = trim_at_calm(codes, latents).unsqueeze(0)  # [1, L', C]
    mel = do_spectrogram_diffusion(diffusion, diffuser, lat, cond.diffusion_latent,
                                   temperature=opts.diffusion_temperature, verbose=report or False)
    return ensure_finite(mel.float(), "diffusion model's mel spectrograms")


def vocode(vocoder, mel):
    """Mel ``[B, 100, T]`` -> 24 kHz audio ``[B, 1, S]`` with UnivNet (``inference``) or a loaded BigVGAN wrapper."""
    inference = getattr(vocoder, "inference", None)
    return inference(mel) if inference is not None else vocoder(mel)


def decode_candidates(models, best, latents, cond, opts, progress=silent):
    """Diffusion then vocoder for each candidate in turn -> waveforms ``[1, 1, S]`` float32 on the CPU, best first.
    (Candidate by candidate, as the original: UnivNet draws its noise from the same random stream as the sampler,
    so this order keeps the original's audio for a seed.)"""
    diffuser = make_diffuser(opts.diffusion_iterations, sampler=opts.sampler, cond_free=opts.cond_free,
                             cond_free_k=opts.cond_free_k)
    steps, k = opts.diffusion_iterations, best.shape[0]
    wavs = []
    progress("diffusion", 0, k * steps)
    with torch.no_grad(), models.stage("diffusion", "vocoder") as (diffusion, vocoder):
        for i, (codes, lat) in enumerate(zip(best, latents)):
            mel = diffuse(diffusion, diffuser, codes, lat, cond, opts,
                          lambda done, _total, i=i: progress("diffusion", i * steps + done, k * steps))
            progress("diffusion", (i + 1) * steps, k * steps)
            progress("vocoder", i, k)
            wavs.append(ensure_finite(vocode(vocoder, mel).float().cpu(), "vocoder's waveform"))
            progress("vocoder", i + 1, k)
    return wavs


# ---------------------------------------------------------------- streaming

@torch.no_grad()
def _hifi(decoder, latents, auto_latent):
    """All latents so far ``[T, C]`` -> the HiFi-GAN decoder's waveform for them ``[S]`` (float32, on the CPU)."""
    lat = torch.stack(latents, dim=0).unsqueeze(0).float()  # [1, T, C]
    wav = decoder.inference(lat, auto_latent.float()).reshape(-1).cpu()
    return ensure_finite(wav, "streamed waveform")


def stream(ar, decoder, cond, text_tokens, sampling, max_mel_tokens, chunk_size, overlap, progress=silent):
    """The original v3's fast path as a generator of 24 kHz chunks ``[S_i]``: one AR sample, decoded step by step
    by the model's own decode loop; its latents go to the HiFi-GAN decoder, the first chunk after
    ``max(chunk_size, 60)`` codes, then every ``chunk_size`` codes, boundaries cross-faded over ``overlap`` samples.

    ``ar`` and ``decoder`` must already be on the device. Only plain computations run between yields (each decoder
    call in its own no-grad scope): the caller's code never runs inside a mode or context of this generator."""
    fader = ChunkCrossfader(overlap)
    latents, pending, first = [], 0, max(chunk_size, STREAM_FIRST_CODES)
    state = ar.prefill(cond.auto_latent, text_tokens, 1, max_mel_tokens)
    ensure_sampleable(state.logits, "autoregressive model's first logits")
    progress("streaming", 0, max_mel_tokens)
    for token, latent in ar.tokens(state, sampling):
        latents.append(latent[0])
        pending += 1
        progress("streaming", len(latents), max_mel_tokens)
        if int(token[0]) == ar.stop_mel_token:
            break
        if pending >= first:
            first, pending = chunk_size, 0
            yield fader.push(_hifi(decoder, latents, cond.auto_latent))
    if pending:
        yield fader.push(_hifi(decoder, latents, cond.auto_latent))
    tail = fader.finish()
    if tail.numel():
        yield tail
    progress("streaming", max_mel_tokens, max_mel_tokens)
