"""RandomLatentConverter: maps Gaussian noise to a conditioning latent (the "random" voice).

Parameter names and ``forward(ref)`` are the original's (released ``rlg_auto.pth``, 1024 channels, and
``rlg_diffuser.pth``, 2048). The layers are StyleGAN2's equalized-learning-rate linears (Karras et al. 2020) with the
fused leaky ReLU written out in plain PyTorch.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def fused_leaky_relu(input, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """leaky_relu(input + bias) * scale, the bias broadcast along dim 1 (StyleGAN2's fused op, in plain PyTorch)."""
    if bias is not None:
        rest_dim = [1] * (input.ndim - bias.ndim - 1)
        input = input + bias.view(1, bias.shape[0], *rest_dim)
    return F.leaky_relu(input, negative_slope=negative_slope) * scale


class EqualLinear(nn.Module):
    """Linear layer with weights stored divided by ``lr_mul`` and rescaled by lr_mul / sqrt(in_dim) at run time,
    followed by the fused leaky ReLU (bias scaled by ``lr_mul``)."""

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, input):
        out = F.linear(input, self.weight * self.scale)
        return fused_leaky_relu(out, None if self.bias is None else self.bias * self.lr_mul)


class RandomLatentConverter(nn.Module):
    """Five EqualLinear layers (lr_mul 0.1) and a plain Linear, applied to fresh noise (one row per row of ``ref``)."""

    def __init__(self, channels):
        super().__init__()
        self.layers = nn.Sequential(*[EqualLinear(channels, channels, lr_mul=0.1) for _ in range(5)],
                                    nn.Linear(channels, channels))
        self.channels = channels

    def forward(self, ref):
        """ref: any tensor whose first dimension is the batch size (the pipeline passes ``torch.tensor([0.0])``);
        returns (B, channels). The noise comes from the global generator on ``ref``'s device."""
        r = torch.randn(ref.shape[0], self.channels, device=ref.device)
        return self.layers(r.to(self.layers[-1].weight.dtype))
