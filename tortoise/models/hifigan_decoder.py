"""The HiFi-GAN decoder of Tortoise v3's fast path: GPT latents (1024-d, one per code) straight to 24 kHz audio.

``HifiganGenerator`` keeps the original's constructor, parameter names, ``forward(x, g)`` and ``inference(c, g)``.
Weights are stored with weight norm folded; ``convert_checkpoint`` is the explicit key map for ``hifidecoder.pth``
(which the original loads with ``strict=False``): weight-normed pairs are folded, a ``waveform_decoder.`` prefix
(the XTTS ``HifiDecoder`` layout) is stripped and that layout's unused ``speaker_encoder.*`` weights are dropped;
anything else missing or unexpected is an error.

Streaming (the original's ``tts_stream``): latents are decoded chunk by chunk, every decode re-running the decoder on
all latents so far; ``ChunkCrossfader`` cuts the new audio out of each decode and cross-fades it into the previous one.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.conv import WeightNormFolding, conv_transpose1d, fold_weight_norm

LRELU_SLOPE = 0.1
LATENT_UPSAMPLE = 1024 / 256          # GPT latents (one per code, 1024 samples at 22.05 kHz) -> frames of hop 256
RATE_UPSAMPLE = 24000 / 22050         # 22.05 kHz frame rate -> 24 kHz frame rate
STREAM_FIRST_CODES = 60               # tts_stream: the first chunk waits for this many codes
STREAM_OVERLAP = 1024                 # tts_stream's default overlap_wav_len: samples cross-faded between chunks


def get_padding(k, d):
    return int((k * d - d) / 2)


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) pairs, each a residual branch: x += conv2(lrelu(conv1(lrelu(x))))."""

    def __init__(self, channels, kernel_size=3, dilation=(1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilation[:3])
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size, 1))
            for _ in range(3))

    def forward(self, x):                                     # (B, C, T) -> (B, C, T)
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x

    def remove_weight_norm(self):
        """No-op: weights are stored folded."""


class ResBlock2(nn.Module):
    """Two dilated convs, each a residual branch: x += conv(lrelu(x))."""

    def __init__(self, channels, kernel_size=3, dilation=(1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilation[:2])

    def forward(self, x):
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x

    def remove_weight_norm(self):
        """No-op: weights are stored folded."""


class HifiganGenerator(WeightNormFolding, nn.Module):
    """HiFi-GAN generator with multi-receptive-field fusion and a global (speaker) conditioning added after conv_pre."""

    # hifidecoder.pth key map: prefixes stripped, then prefixes dropped (weights the decoder does not use)
    STRIP_PREFIXES = ("waveform_decoder.",)
    DROP_PREFIXES = ("speaker_encoder.",)
    PLAIN_WEIGHT_PREFIXES = ("cond_layer.",)

    def __init__(self, in_channels, out_channels, resblock_type, resblock_dilation_sizes, resblock_kernel_sizes,
                 upsample_kernel_sizes, upsample_initial_channel, upsample_factors, inference_padding=5,
                 cond_channels=0, conv_pre_weight_norm=True, conv_post_weight_norm=True, conv_post_bias=True):
        super().__init__()
        self.inference_padding = inference_padding
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_factors)
        self.conv_pre = nn.Conv1d(in_channels, upsample_initial_channel, 7, 1, padding=3)
        resblock = ResBlock1 if resblock_type == "1" else ResBlock2
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(upsample_initial_channel // (2 ** i), upsample_initial_channel // (2 ** (i + 1)),
                               k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(upsample_factors, upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // (2 ** (i + 1))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(resblock(ch, k, d))
        self.conv_post = nn.Conv1d(ch, out_channels, 7, 1, padding=3, bias=conv_post_bias)
        if cond_channels > 0:
            self.cond_layer = nn.Conv1d(cond_channels, upsample_initial_channel, 1)
        self._register_weight_norm_folding()

    @classmethod
    def convert_checkpoint(cls, state_dict):
        """Map a released ``hifidecoder.pth`` state dict to our keys (see the module docstring)."""
        out = {}
        for key, value in state_dict.items():
            for prefix in cls.STRIP_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
            if key.startswith(cls.DROP_PREFIXES):
                continue
            key = key.replace(".parametrizations.weight.original0", ".weight_g")
            key = key.replace(".parametrizations.weight.original1", ".weight_v")
            out[key] = value
        return fold_weight_norm(out)

    def forward(self, x, g=None):
        """x: (B, in_channels, T); g: (B or 1, cond_channels, 1) -> (B, out_channels, T * prod(upsample_factors))."""
        o = self.conv_pre(x)
        if hasattr(self, "cond_layer"):
            o = o + self.cond_layer(g)
        for i, up in enumerate(self.ups):
            o = conv_transpose1d(F.leaky_relu(o, LRELU_SLOPE), up)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            z_sum = blocks[0](o)
            for block in blocks[1:]:
                z_sum += block(o)
            o = z_sum / self.num_kernels
        o = self.conv_post(F.leaky_relu(o))                  # default slope 0.01 here, as the original
        return torch.tanh(o)

    @torch.no_grad()
    def inference(self, c, g=None):
        """GPT latents c (B, T_codes, 1024) and conditioning latent g (1 or B, 1024) -> waveform (B, 1, samples).

        As the original: latents are linearly interpolated x4 (codes -> 22.05 kHz hop-256 frames) then x24000/22050
        (-> 24 kHz frames), so samples = 256 * floor(floor(4 * T_codes) * 24000 / 22050). The original moves the
        input to "cuda"; ours stays on c's device.
        """
        return self.forward(upsample_latents(c), conditioning_input(g))

    def remove_weight_norm(self):
        """No-op: weights are stored folded."""


def upsample_latents(c):
    """(B, T_codes, C) GPT latents -> (B, C, floor(floor(4 T) * 24000/22050)) decoder input (the original's ops)."""
    x = F.interpolate(c.transpose(1, 2), scale_factor=[LATENT_UPSAMPLE], mode="linear")
    return F.interpolate(x, scale_factor=[RATE_UPSAMPLE], mode="linear")


def conditioning_input(g):
    """The conditioning latent as the decoder's cond_layer takes it: (N, C) or (N, C, 1) -> (N, C, 1)."""
    if g is None:
        return None
    return g.unsqueeze(-1) if g.dim() == 2 else g


def decoded_length(codes):
    """Samples the decoder yields for ``codes`` GPT latents (hop 256 at 24 kHz)."""
    return 256 * int(int(codes * LATENT_UPSAMPLE) * RATE_UPSAMPLE)


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------
def crossfade(prev_tail, new_chunk):
    """Linear cross-fade: the first len(prev_tail) samples of new_chunk blended from prev_tail (fading out) into
    new_chunk (fading in); the rest of new_chunk unchanged. Pure: returns a new tensor. (..., N) -> (..., N)."""
    overlap = prev_tail.shape[-1]
    if overlap > new_chunk.shape[-1]:
        raise ValueError(f"crossfade: overlap {overlap} is longer than the chunk ({new_chunk.shape[-1]} samples)")
    ramp = torch.linspace(0.0, 1.0, overlap, device=new_chunk.device, dtype=new_chunk.dtype)
    head = prev_tail * ramp.flip(0) + new_chunk[..., :overlap] * ramp
    return torch.cat((head, new_chunk[..., overlap:]), dim=-1)


class ChunkCrossfader:
    """The original's streaming stitch (its ``handle_chunks``) as an object. Each :meth:`push` takes the decode of
    every latent so far ``[S]`` and returns its new samples, less the last ``overlap`` (held back), with their first
    ``overlap`` samples cross-faded (:func:`crossfade`) against the previous decode's held-back tail.
    :meth:`finish` returns the last held-back tail, which the original never emits (ours ends with it)."""

    def __init__(self, overlap=STREAM_OVERLAP):
        self.overlap = overlap
        self.emitted = 0  # samples of the full signal already returned
        self.tail = None  # the previous decode's last `overlap` samples (not yet returned)

    def push(self, wav):
        held = min(self.overlap, max(wav.shape[-1] - self.emitted, 0))
        chunk = wav[..., self.emitted:wav.shape[-1] - held]
        if self.tail is not None and chunk.shape[-1]:
            n = min(self.tail.shape[-1], chunk.shape[-1])
            chunk = crossfade(self.tail[..., :n], chunk)
        self.emitted += chunk.shape[-1]
        self.tail = wav[..., wav.shape[-1] - held:].clone()
        return chunk

    def finish(self):
        tail, self.tail = (self.tail if self.tail is not None else torch.zeros(0)), None
        self.emitted += tail.shape[-1]
        return tail
