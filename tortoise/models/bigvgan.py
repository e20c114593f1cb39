"""BigVGAN generator (Lee et al. 2022, arXiv:2206.04658), state-dict compatible with NVIDIA's published checkpoints.

Written for this package instead of depending on NVIDIA's ``bigvgan`` package, whose import pulls matplotlib,
librosa, tqdm and huggingface_hub (its wheel declares tensorboard, pesq, auraloss, nnAudio and an unpinned torch) and
which reads checkpoints without ``weights_only``. Parameter and buffer names follow NVIDIA's layout
(``conv_pre``, ``ups.{i}.0``, ``resblocks.{n}.convs1/convs2/activations.{m}.act.alpha|beta``,
``...upsample.filter``, ``...downsample.lowpass.filter``, ``activation_post``, ``conv_post``), so a checkpoint
directory in NVIDIA's layout (``config.json`` + ``bigvgan_generator.pt`` holding ``{"generator": state_dict}``,
weight-normed or not) loads with ``strict=True``; weight norm is folded on load.

Architecture: conv_pre -> per stage [transposed-conv upsampling, mean of AMP residual blocks] -> anti-aliased
Snake(Beta) -> conv_post -> tanh. An AMP block is HiFi-GAN's residual block with every LeakyReLU replaced by an
anti-aliased periodic activation: 2x upsampling (Kaiser-windowed sinc, 12 taps), Snake/SnakeBeta, 2x low-pass
downsampling.
"""
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.conv import WeightNormFolding, conv_transpose1d
from tortoise.utils.checkpoints import CheckpointError, load_state_dict, strip_wrapper_prefix

GENERATOR_FILE = "bigvgan_generator.pt"
CONFIG_FILE = "config.json"
SNAKE_EPS = 1e-9


def get_padding(kernel_size, dilation=1):
    return int((kernel_size * dilation - dilation) / 2)


# ----------------------------------------------------------------------------------------------------------------
# Periodic activations (Ziyin et al. 2020, arXiv:2006.08195)
# ----------------------------------------------------------------------------------------------------------------
class Snake(nn.Module):
    """x + 1/alpha * sin^2(alpha x), one alpha per channel (stored as log alpha when alpha_logscale)."""

    def __init__(self, in_features, alpha=1.0, alpha_trainable=True, alpha_logscale=False):
        super().__init__()
        self.in_features = in_features
        self.alpha_logscale = alpha_logscale
        init = torch.zeros(in_features) if alpha_logscale else torch.ones(in_features) * alpha
        self.alpha = nn.Parameter(init, requires_grad=alpha_trainable)

    def _scale(self, p):
        p = p.view(1, -1, 1)
        return torch.exp(p) if self.alpha_logscale else p

    def forward(self, x):                                           # (B, C, T) -> (B, C, T)
        alpha = self._scale(self.alpha)
        return x + torch.sin(x * alpha).pow(2) * (1.0 / (alpha + SNAKE_EPS))


class SnakeBeta(Snake):
    """x + 1/beta * sin^2(alpha x): separate frequency (alpha) and magnitude (beta) per channel."""

    def __init__(self, in_features, alpha=1.0, alpha_trainable=True, alpha_logscale=False):
        super().__init__(in_features, alpha, alpha_trainable, alpha_logscale)
        init = torch.zeros(in_features) if alpha_logscale else torch.ones(in_features) * alpha
        self.beta = nn.Parameter(init, requires_grad=alpha_trainable)

    def forward(self, x):
        alpha, beta = self._scale(self.alpha), self._scale(self.beta)
        return x + torch.sin(x * alpha).pow(2) * (1.0 / (beta + SNAKE_EPS))


# ----------------------------------------------------------------------------------------------------------------
# Anti-aliased resampling (StyleGAN3-style Kaiser-windowed sinc filters)
# ----------------------------------------------------------------------------------------------------------------
def kaiser_sinc_filter1d(cutoff, half_width, kernel_size):
    """Low-pass FIR (1, 1, kernel_size): sinc at ``cutoff`` (fraction of the sample rate) under a Kaiser window whose
    beta follows Kaiser's formula for the transition band ``half_width``; normalised to unit DC gain."""
    even = kernel_size % 2 == 0
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95       # dB
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    time = (torch.arange(-half, half) + 0.5) if even else (torch.arange(kernel_size) - half)
    if cutoff == 0:
        taps = torch.zeros_like(time)
    else:
        taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
        taps = taps / taps.sum()
    return taps.view(1, 1, kernel_size)


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass filtering with replicate padding, optionally strided (decimation)."""

    def __init__(self, cutoff=0.5, half_width=0.6, stride=1, padding=True, padding_mode="replicate", kernel_size=12):
        super().__init__()
        if not 0.0 <= cutoff <= 0.5:
            raise ValueError(f"LowPassFilter1d: cutoff {cutoff} must lie in [0, 0.5]")
        self.kernel_size = kernel_size
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.padding = padding
        self.padding_mode = padding_mode
        self.register_buffer("filter", kaiser_sinc_filter1d(cutoff, half_width, kernel_size))

    def forward(self, x):                                           # (B, C, T) -> (B, C, T // stride)
        if self.padding:
            x = F.pad(x, (self.pad_left, self.pad_right), mode=self.padding_mode)
        return F.conv1d(x, self.filter.expand(x.shape[1], -1, -1), stride=self.stride, groups=x.shape[1])


class UpSample1d(nn.Module):
    """Zero-stuffing upsampling by ``ratio`` followed by the Kaiser-sinc low-pass (as one transposed convolution)."""

    def __init__(self, ratio=2, kernel_size=None):
        super().__init__()
        self.ratio = ratio
        self.kernel_size = int(6 * ratio // 2) * 2 if kernel_size is None else kernel_size
        self.stride = ratio
        self.pad = self.kernel_size // ratio - 1
        self.pad_left = self.pad * self.stride + (self.kernel_size - self.stride) // 2
        self.pad_right = self.pad * self.stride + (self.kernel_size - self.stride + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, self.kernel_size))

    def forward(self, x):                                           # (B, C, T) -> (B, C, ratio * T)
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)
        return self.ratio * x[..., self.pad_left:x.shape[-1] - self.pad_right]


class DownSample1d(nn.Module):
    """Low-pass then keep every ``ratio``-th sample."""

    def __init__(self, ratio=2, kernel_size=None):
        super().__init__()
        self.ratio = ratio
        self.kernel_size = int(6 * ratio // 2) * 2 if kernel_size is None else kernel_size
        self.lowpass = LowPassFilter1d(cutoff=0.5 / ratio, half_width=0.6 / ratio, stride=ratio,
                                       kernel_size=self.kernel_size)

    def forward(self, x):
        return self.lowpass(x)


ACT_CHUNK_ELEMENTS = 1 << 20  # channels x samples per chunk (~4 MB fp32): the six passes of an activation stay in cache
ACT_MIN_CHUNK = 4096          # samples


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample, apply ``activation``, downsample.

    Long inputs are processed in time chunks with enough context on each side (``halo``) that every kept output
    sample is exactly the unchunked one (the filters reach 6 input samples; replicate padding only matters within
    that distance of an edge). Same numbers, about 2.5x less CPU time on long signals (cache-resident passes).
    """

    def __init__(self, activation, up_ratio=2, down_ratio=2, up_kernel_size=12, down_kernel_size=12):
        super().__init__()
        self.up_ratio = up_ratio
        self.down_ratio = down_ratio
        self.act = activation
        self.upsample = UpSample1d(up_ratio, up_kernel_size)
        self.downsample = DownSample1d(down_ratio, down_kernel_size)

    @property
    def halo(self):
        return (self.upsample.kernel_size + self.downsample.kernel_size) // 2

    def activate(self, x):
        """The unchunked activation."""
        return self.downsample(self.act(self.upsample(x)))

    def forward(self, x):                                           # (B, C, T) -> (B, C, T)
        length, halo = x.shape[-1], self.halo
        step = max(ACT_MIN_CHUNK, ACT_CHUNK_ELEMENTS // (x.shape[0] * x.shape[1]))
        if length <= step + 2 * halo:
            return self.activate(x)
        out = torch.empty_like(x)
        for start in range(0, length, step):
            stop = min(start + step, length)
            lo, hi = max(0, start - halo), min(length, stop + halo)
            out[..., start:stop] = self.activate(x[..., lo:hi])[..., start - lo:stop - lo]
        return out


def _activation(h, channels):
    kinds = {"snake": Snake, "snakebeta": SnakeBeta}
    if h["activation"] not in kinds:
        raise ValueError(f"BigVGAN config: activation {h['activation']!r} is not one of {sorted(kinds)}")
    return Activation1d(kinds[h["activation"]](channels, alpha_logscale=h["snake_logscale"]))


# ----------------------------------------------------------------------------------------------------------------
# AMP blocks and the generator
# ----------------------------------------------------------------------------------------------------------------
class AMPBlock1(nn.Module):
    """Three residual branches act -> dilated conv -> act -> conv (activations interleaved: 2 per branch)."""

    def __init__(self, h, channels, kernel_size=3, dilation=(1, 3, 5), activation=None):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                              padding=get_padding(kernel_size, d)) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                              padding=get_padding(kernel_size, 1)) for _ in dilation)
        self.num_layers = len(self.convs1) + len(self.convs2)
        self.activations = nn.ModuleList(_activation(h, channels) for _ in range(self.num_layers))

    def forward(self, x):                                           # (B, C, T) -> (B, C, T)
        acts1, acts2 = self.activations[::2], self.activations[1::2]
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, acts1, acts2):
            x = x + c2(a2(c1(a1(x))))
        return x


class AMPBlock2(nn.Module):
    """Residual branches act -> dilated conv, one per dilation."""

    def __init__(self, h, channels, kernel_size=3, dilation=(1, 3, 5), activation=None):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                             padding=get_padding(kernel_size, d)) for d in dilation)
        self.num_layers = len(self.convs)
        self.activations = nn.ModuleList(_activation(h, channels) for _ in range(self.num_layers))

    def forward(self, x):
        for c, a in zip(self.convs, self.activations):
            x = x + c(a(x))
        return x


REQUIRED_KEYS = ("num_mels", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock",
                 "resblock_kernel_sizes", "resblock_dilation_sizes", "activation", "snake_logscale")


class BigVGAN(WeightNormFolding, nn.Module):
    """BigVGAN generator: mel (B, num_mels, T) -> waveform (B, 1, T * prod(upsample_rates)) in [-1, 1].

    ``h`` is the checkpoint's config (the keys of NVIDIA's config.json; training-only keys are ignored).
    """

    def __init__(self, h, use_cuda_kernel=False):
        super().__init__()
        missing = [k for k in REQUIRED_KEYS if k not in h]
        if missing:
            raise ValueError(f"BigVGAN config lacks {', '.join(missing)}; use the config.json shipped with the "
                             f"checkpoint")
        if use_cuda_kernel:
            raise ValueError("BigVGAN: use_cuda_kernel needs NVIDIA's nvcc-built kernel, which this package does "
                             "not ship; pass use_cuda_kernel=False")
        self.h = dict(h)
        self.num_kernels = len(h["resblock_kernel_sizes"])
        self.num_upsamples = len(h["upsample_rates"])
        ch0 = h["upsample_initial_channel"]
        self.conv_pre = nn.Conv1d(h["num_mels"], ch0, 7, 1, padding=3)
        if h["resblock"] not in ("1", "2"):
            raise ValueError(f"BigVGAN config: resblock must be '1' or '2', got {h['resblock']!r}")
        block = AMPBlock1 if h["resblock"] == "1" else AMPBlock2
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(ch0 // 2 ** i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])))
        self.resblocks = nn.ModuleList(
            block(h, ch0 // 2 ** (i + 1), k, d, activation=h["activation"])
            for i in range(self.num_upsamples)
            for k, d in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]))
        ch = ch0 // 2 ** self.num_upsamples
        self.activation_post = _activation(h, ch)
        self.use_bias_at_final = h.get("use_bias_at_final", True)
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=self.use_bias_at_final)
        self.use_tanh_at_final = h.get("use_tanh_at_final", True)
        self._register_weight_norm_folding()

    def forward(self, x):                                           # (B, num_mels, T) -> (B, 1, T * hop)
        x = self.conv_pre(x)
        for i, stage in enumerate(self.ups):
            for up in stage:
                x = conv_transpose1d(x, up)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for b in blocks[1:]:
                xs += b(x)
            x = xs / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.use_tanh_at_final else x.clamp(min=-1.0, max=1.0)

    @classmethod
    def from_pretrained(cls, model_dir, use_cuda_kernel=False, map_location="cpu"):
        """Load a local checkpoint directory in NVIDIA's layout: ``config.json`` + ``bigvgan_generator.pt``.

        No hub access: download the directory first (e.g. ``huggingface-cli download nvidia/bigvgan_base_24khz_100band
        --local-dir DIR``).
        """
        model_dir = Path(model_dir).expanduser()
        config, weights = model_dir / CONFIG_FILE, model_dir / GENERATOR_FILE
        for f in (config, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing; a BigVGAN directory holds {CONFIG_FILE} and "
                                        f"{GENERATOR_FILE} (download the model repository into {model_dir})")
        model = cls(json.loads(config.read_text()), use_cuda_kernel=use_cuda_kernel)
        model.load_state_dict(load_generator_state(weights, map_location), strict=True)
        return model.eval()


def load_generator_state(path, map_location="cpu"):
    """The generator state dict of a BigVGAN checkpoint file (``{"generator": sd}`` or a bare state dict), read
    without running code and onto the CPU (``map_location`` is accepted for NVIDIA's signature; tensors move with the
    model afterwards). Weight-normed (``weight_g`` / ``weight_v``) and folded layouts both load."""
    sd = load_state_dict(path)
    if "generator" in sd:
        sd = sd["generator"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a BigVGAN generator state dict")
    return strip_wrapper_prefix(sd)
