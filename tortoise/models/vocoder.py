"""Vocoders: 100-band 24 kHz log-mel spectrogram -> 24 kHz waveform.

``UnivNetGenerator`` is Tortoise's vocoder (released ``vocoder.pth``, state dict under ``model_g``), with the original's
constructor keyword arguments, parameter names and ``inference(c, z=None)``. Released checkpoints store every
convolution with weight norm (``weight_g`` / ``weight_v``); this implementation keeps plain folded ``weight`` tensors
(what the original holds after ``eval(inference=True)``) and folds a weight-normed state dict while loading it, so the
released file loads with ``strict=True``.

The location-variable convolution (a 3-tap convolution whose kernel changes every mel frame) runs as batched matrix
products over frames, read straight from the activations through strided views, with the kernel predictor's output
channels reordered so that every frame's kernel is a contiguous matrix. The original builds the same sums with
unfold + einsum, which copies the activations several times.

``load_vocoder(name, path, device)`` gives UnivNet and BigVGAN (``tortoise.models.bigvgan``) one call signature:
``mel [B, 100, T] -> wav [B, 1, T * 256]`` at 24 kHz.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.bigvgan import BigVGAN, load_generator_state
from tortoise.models.conv import WeightNormFolding, conv_transpose1d, fold_weight_norm  # noqa: F401 (re-exported)
from tortoise.utils.checkpoints import BIGVGAN_REPOS, load_state_dict, model_config

SILENCE_MEL = -11.5129        # log(1e-5): a silent frame of the log-mel, appended before vocoding
INFERENCE_PAD_FRAMES = 10     # silent frames appended by inference(), their samples trimmed afterwards


# ----------------------------------------------------------------------------------------------------------------
# UnivNet
# ----------------------------------------------------------------------------------------------------------------
class KernelPredictor(nn.Module):
    """Predicts, from the mel, the per-frame kernels and biases of an LVC block's location-variable convolutions."""

    def __init__(self, cond_channels, conv_in_channels, conv_out_channels, conv_layers, conv_kernel_size=3,
                 kpnet_hidden_channels=64, kpnet_conv_size=3, kpnet_dropout=0.0,
                 kpnet_nonlinear_activation="LeakyReLU", kpnet_nonlinear_activation_params={"negative_slope": 0.1}):
        super().__init__()
        self.conv_in_channels = conv_in_channels
        self.conv_out_channels = conv_out_channels
        self.conv_kernel_size = conv_kernel_size
        self.conv_layers = conv_layers
        kernel_channels = conv_in_channels * conv_out_channels * conv_kernel_size * conv_layers
        bias_channels = conv_out_channels * conv_layers
        act = lambda: getattr(nn, kpnet_nonlinear_activation)(**kpnet_nonlinear_activation_params)  # noqa: E731
        pad = (kpnet_conv_size - 1) // 2
        hidden = kpnet_hidden_channels
        self.input_conv = nn.Sequential(nn.Conv1d(cond_channels, hidden, 5, padding=2, bias=True), act())
        self.residual_convs = nn.ModuleList(
            nn.Sequential(nn.Dropout(kpnet_dropout), nn.Conv1d(hidden, hidden, kpnet_conv_size, padding=pad),
                          act(), nn.Conv1d(hidden, hidden, kpnet_conv_size, padding=pad), act())
            for _ in range(3))
        self.kernel_conv = nn.Conv1d(hidden, kernel_channels, kpnet_conv_size, padding=pad, bias=True)
        self.bias_conv = nn.Conv1d(hidden, bias_channels, kpnet_conv_size, padding=pad, bias=True)

    def _hidden(self, c):
        c = self.input_conv(c)                      # (B, H, L)
        for residual_conv in self.residual_convs:
            c = c + residual_conv(c)
        return c

    def lvc_params(self, c):
        """Kernels (B, L, layers, K, C_out, C_in) and biases (B, L, layers, C_out), each frame's matrix contiguous.

        kernel_conv's output channels are ordered (layers, C_in, C_out, K); reordering its weight rows to
        (layers, K, C_out, C_in) and computing it as one matmul over im2col'd frames gives that layout directly.
        """
        batch, _, length = c.shape
        h = self._hidden(c)                                                  # (B, H, L)
        conv = self.kernel_conv
        size, pad = conv.kernel_size[0], conv.padding[0]
        cols = F.pad(h, (pad, pad)).unfold(2, size, 1)                       # (B, H, L, size)
        cols = cols.permute(0, 2, 1, 3).reshape(batch, length, -1)           # (B, L, H*size)
        order = (self.conv_layers, self.conv_in_channels, self.conv_out_channels, self.conv_kernel_size)
        weight = conv.weight.reshape(*order, -1).permute(0, 3, 2, 1, 4).reshape(conv.out_channels, -1)
        bias = conv.bias.reshape(order).permute(0, 3, 2, 1).reshape(-1, 1)
        weight = torch.cat((weight, bias), dim=1)                            # (N, H*size + 1): bias as a column
        cols = torch.cat((cols, cols.new_ones(batch, length, 1)), dim=2)     # (B, L, H*size + 1)
        kernels = torch.matmul(cols, weight.t())                             # (B, L, layers*K*C_out*C_in)
        kernels = kernels.view(batch, length, self.conv_layers, self.conv_kernel_size, self.conv_out_channels,
                               self.conv_in_channels)
        b = self.bias_conv(h).view(batch, self.conv_layers, self.conv_out_channels, length)
        return kernels, b.permute(0, 3, 1, 2)                                # (B, L, layers, C_out)

    def forward(self, c):
        """The original's layout: kernels (B, layers, C_in, C_out, K, L), bias (B, layers, C_out, L) (views)."""
        kernels, bias = self.lvc_params(c)
        return kernels.permute(0, 2, 5, 4, 3, 1), bias.permute(0, 2, 3, 1)


def location_variable_convolution(x, kernels, bias, hop_size):
    """Per-frame convolution: frame l of x (hop_size samples) is convolved with its own kernel.

    x: (B, C_in, L*hop); kernels: (B, L, K, C_out, C_in); bias: (B, L, C_out) -> (B, L, C_out, hop) (frame-major).
    Zero padding (K-1)//2 each side, dilation 1 (as the original calls it). Each tap k is one batched matmul over
    frames whose right operand is a strided view of the padded input (no unfold copy).
    """
    batch, channels, length = x.shape
    frames, taps = kernels.shape[1], kernels.shape[2]
    if length != frames * hop_size:
        raise ValueError(f"LVC input length {length} != {frames} frames x hop {hop_size}")
    pad = (taps - 1) // 2
    xp = F.pad(x, (pad, pad))                                                 # (B, C_in, T + 2*pad)
    out = x.new_empty(batch, frames, kernels.shape[3], hop_size)              # (B, L, C_out, hop)
    for b in range(batch):
        for k in range(taps):
            window = xp[b, :, k:k + length].unflatten(1, (frames, hop_size)).transpose(0, 1)  # (L, C_in, hop)
            if k == 0:
                torch.baddbmm(bias[b].unsqueeze(-1), kernels[b, :, k], window, out=out[b])
            else:
                out[b].baddbmm_(kernels[b, :, k], window)
    return out


class LVCBlock(nn.Module):
    """Upsampling transposed conv, then dilated convs each followed by a location-variable conv and a gated unit."""

    def __init__(self, in_channels, cond_channels, stride, dilations=[1, 3, 9, 27], lReLU_slope=0.2,
                 conv_kernel_size=3, cond_hop_length=256, kpnet_hidden_channels=64, kpnet_conv_size=3,
                 kpnet_dropout=0.0):
        super().__init__()
        self.cond_hop_length = cond_hop_length
        self.conv_layers = len(dilations)
        self.conv_kernel_size = conv_kernel_size
        self.kernel_predictor = KernelPredictor(
            cond_channels=cond_channels, conv_in_channels=in_channels, conv_out_channels=2 * in_channels,
            conv_layers=len(dilations), conv_kernel_size=conv_kernel_size,
            kpnet_hidden_channels=kpnet_hidden_channels, kpnet_conv_size=kpnet_conv_size,
            kpnet_dropout=kpnet_dropout, kpnet_nonlinear_activation_params={"negative_slope": lReLU_slope})
        self.convt_pre = nn.Sequential(
            nn.LeakyReLU(lReLU_slope),
            nn.ConvTranspose1d(in_channels, in_channels, 2 * stride, stride=stride,
                               padding=stride // 2 + stride % 2, output_padding=stride % 2))
        self.conv_blocks = nn.ModuleList(
            nn.Sequential(nn.LeakyReLU(lReLU_slope),
                          nn.Conv1d(in_channels, in_channels, conv_kernel_size,
                                    padding=dilation * (conv_kernel_size - 1) // 2, dilation=dilation),
                          nn.LeakyReLU(lReLU_slope))
            for dilation in dilations)

    def forward(self, x, c):
        """x: (B, C, L') -> (B, C, stride*L'); c: the mel (B, n_mels, L), L*hop == stride*L'."""
        x = conv_transpose1d(self.convt_pre[0](x), self.convt_pre[1])        # (B, C, T)
        kernels, bias = self.kernel_predictor.lvc_params(c)
        for i, conv in enumerate(self.conv_blocks):
            out = location_variable_convolution(conv(x), kernels[:, :, i], bias[:, :, i], self.cond_hop_length)
            x = _gated_residual(x, out)
        return x

    def location_variable_convolution(self, x, kernel, bias, dilation=1, hop_size=256):
        """The original's method and layouts: kernel (B, C_in, C_out, K, L), bias (B, C_out, L) -> (B, C_out, T)."""
        if dilation != 1:
            raise NotImplementedError("location_variable_convolution: only dilation=1 is used by UnivNet")
        out = location_variable_convolution(x, kernel.permute(0, 4, 3, 2, 1), bias.transpose(1, 2), hop_size)
        return out.permute(0, 2, 1, 3).flatten(2)

    def remove_weight_norm(self):
        """No-op: weights are stored folded."""


def _gated_residual(x, out):
    """x + sigmoid(a) * tanh(b) with (a, b) the halves of the LVC output. x: (B, C, L*hop); out: (B, L, 2C, hop)."""
    channels, frames, hop = x.shape[1], out.shape[1], out.shape[3]
    res = torch.empty_like(x)
    for b in range(x.shape[0]):
        torch.addcmul(_frame_major(x[b], frames, hop), torch.sigmoid(out[b, :, :channels]),
                      torch.tanh(out[b, :, channels:]), out=_frame_major(res[b], frames, hop))
    return res


def _frame_major(t, frames, hop):
    """(C, L*hop) -> (L, C, hop), a view."""
    return t.unflatten(1, (frames, hop)).transpose(0, 1)


class UnivNetGenerator(WeightNormFolding, nn.Module):
    """UnivNet generator (mindslab-ai/univnet), the original's constructor, parameter names and ``inference``."""

    def __init__(self, noise_dim=64, channel_size=32, dilations=[1, 3, 9, 27], strides=[8, 8, 4], lReLU_slope=.2,
                 kpnet_conv_size=3, hop_length=256, n_mel_channels=100):
        super().__init__()
        self.mel_channel = n_mel_channels
        self.noise_dim = noise_dim
        self.hop_length = hop_length
        self.res_stack = nn.ModuleList()
        hop = 1
        for stride in strides:
            hop *= stride
            self.res_stack.append(LVCBlock(channel_size, n_mel_channels, stride=stride, dilations=dilations,
                                           lReLU_slope=lReLU_slope, cond_hop_length=hop,
                                           kpnet_conv_size=kpnet_conv_size))
        self.conv_pre = nn.Conv1d(noise_dim, channel_size, 7, padding=3, padding_mode="reflect")
        self.conv_post = nn.Sequential(nn.LeakyReLU(lReLU_slope),
                                       nn.Conv1d(channel_size, 1, 7, padding=3, padding_mode="reflect"),
                                       nn.Tanh())
        self._register_weight_norm_folding()

    def forward(self, c, z):
        """c: mel (B, n_mels, L); z: noise (B, noise_dim, L) -> (B, 1, L * prod(strides))."""
        z = self.conv_pre(z)                                                  # (B, C, L)
        for res_block in self.res_stack:
            z = res_block(z, c)                                               # (B, C, L * s_0 * ... * s_i)
        return self.conv_post(z)

    def eval(self, inference=False):
        """``eval(inference=True)`` is the original's way to drop weight norm; ours is already folded."""
        return super().eval()

    @torch.no_grad()
    def inference(self, c, z=None):
        """Mel (B, n_mels, L) -> waveform (B, 1, L * hop_length) in [-1, 1].

        As the original: appends 10 silent frames (log-mel -11.5129) against end artifacts, draws z from the CPU
        generator (so a seed gives the original's noise on any device), vocodes and trims those frames' samples.
        """
        silence = c.new_full((c.shape[0], self.mel_channel, INFERENCE_PAD_FRAMES), SILENCE_MEL)
        mel = torch.cat((c, silence), dim=2)                                  # (B, n_mels, L + 10)
        if z is None:
            z = torch.randn(c.shape[0], self.noise_dim, mel.shape[2]).to(device=mel.device, dtype=mel.dtype)
        audio = self.forward(mel, z)
        audio = audio[:, :, :-(self.hop_length * INFERENCE_PAD_FRAMES)]
        return audio.clamp(min=-1, max=1)


# ----------------------------------------------------------------------------------------------------------------
# Vocoder selection: one call signature for every vocoder
# ----------------------------------------------------------------------------------------------------------------
# The 24 kHz 100-band mel every vocoder here takes (Tortoise's wav_to_univnet_mel / NVIDIA's 24 kHz 100-band configs).
MEL_CONFIG = dict(sampling_rate=24000, num_mels=100, n_fft=1024, hop_size=256, win_size=1024, fmin=0, fmax=12000)

# Generator keys of NVIDIA's published config.json for the 24 kHz 100-band models (training-only keys left out).
BIGVGAN_BASE_24KHZ_100BAND = dict(MEL_CONFIG, resblock="1", upsample_rates=[8, 8, 2, 2],
                                  upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512,
                                  resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3,
                                  activation="snakebeta", snake_logscale=True)
BIGVGAN_24KHZ_100BAND = dict(BIGVGAN_BASE_24KHZ_100BAND, upsample_rates=[4, 4, 2, 2, 2, 2],
                             upsample_kernel_sizes=[8, 8, 4, 4, 4, 4], upsample_initial_channel=1536)

VOCODERS = {
    "univnet": dict(MEL_CONFIG, kind="univnet", checkpoint="vocoder.pth", state_key="model_g", params="14.8M",
                    kwargs={}),
    "bigvgan_base": dict(MEL_CONFIG, kind="bigvgan", hub_repo=BIGVGAN_REPOS["bigvgan_base"], params="14M",
                         config=BIGVGAN_BASE_24KHZ_100BAND),
    "bigvgan": dict(MEL_CONFIG, kind="bigvgan", hub_repo=BIGVGAN_REPOS["bigvgan"], params="112M",
                    config=BIGVGAN_24KHZ_100BAND),
}
DEFAULT_VOCODER = "bigvgan_base"  # the fast fork's default


class Vocoder(nn.Module):
    """``mel (B, 100, T) -> wav (B, 1, T * 256)`` at 24 kHz, in [-1, 1], whichever network is inside.

    UnivNet goes through its ``inference`` (silence padding, noise from the CPU generator, clamp), BigVGAN through
    its forward.
    """

    def __init__(self, net, name):
        super().__init__()
        self.net = net
        self.name = name
        self.sample_rate = VOCODERS[name]["sampling_rate"]
        self.hop_length = VOCODERS[name]["hop_size"]

    @torch.no_grad()
    def forward(self, mel):
        if VOCODERS[self.name]["kind"] == "univnet":
            return self.net.inference(mel)
        return self.net(mel).clamp(min=-1, max=1)


def load_vocoder(name, path_or_dir, device="cpu"):
    """Load vocoder ``name`` (univnet | bigvgan_base | bigvgan) from a local file or directory, in eval mode.

    univnet: ``vocoder.pth`` (state dict under ``model_g``, weight-normed) or a models directory holding it (whose
    ``config.json`` may override the constructor kwargs under ``"vocoder"``). bigvgan*: a directory in NVIDIA's
    layout (``config.json`` + ``bigvgan_generator.pt``), or a bare generator file read with the published config.
    """
    if name not in VOCODERS:
        raise ValueError(f"unknown vocoder {name!r}; choose one of {', '.join(VOCODERS)}")
    path = Path(path_or_dir).expanduser()
    spec = VOCODERS[name]
    if spec["kind"] == "univnet":
        net = _load_univnet(path, spec)
    else:
        if path.is_dir():
            net = BigVGAN.from_pretrained(path)
        elif path.is_file():
            net = BigVGAN(spec["config"])
            net.load_state_dict(load_generator_state(path), strict=True)
        else:
            raise FileNotFoundError(f"{path} does not exist; download {spec['hub_repo']} into a directory and pass it")
    return Vocoder(net.eval(), name).to(device).eval()


def _load_univnet(path, spec):
    kwargs = dict(spec["kwargs"])
    if path.is_dir():
        kwargs = model_config("vocoder", path)
        path = path / spec["checkpoint"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the path of vocoder.pth or the models directory")
    net = UnivNetGenerator(**kwargs)
    net.load_state_dict(UnivNetGenerator.convert_checkpoint(load_state_dict(path, spec["state_key"])), strict=True)
    return net
