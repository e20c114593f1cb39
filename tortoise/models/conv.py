"""Pieces shared by the vocoder-like networks (UnivNet, BigVGAN, the HiFi-GAN decoder): weight-norm folding for
checkpoints stored with weight norm, and a transposed 1-d convolution that runs as one matrix product."""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# Weight norm: released checkpoints hold (weight_g, weight_v); we keep weight = g * v / ||v|| (norm over all but dim 0)
# ----------------------------------------------------------------------------------------------------------------
def fold_weight_norm(state_dict):
    """Return a copy of ``state_dict`` with every ``*.weight_g`` / ``*.weight_v`` pair folded into ``*.weight``.

    The fold is ``torch._weight_norm(v, g, 0)``, the op ``torch.nn.utils.remove_weight_norm`` runs, so the folded
    weights are bit-identical to the original's after ``eval(inference=True)``. Other keys pass through unchanged.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("weight_g"):
            continue
        if key.endswith("weight_v"):
            stem = key[: -len("_v")]
            g = state_dict.get(stem + "_g")
            if g is None:
                raise KeyError(f"{key} has no matching {stem}_g; the checkpoint is damaged or not weight-normed")
            out[stem] = torch._weight_norm(value, g, 0)
        else:
            out[key] = value
    for key in state_dict:
        if key.endswith("weight_g") and key[: -len("_g")] + "_v" not in state_dict:
            raise KeyError(f"{key} has no matching weight_v; the checkpoint is damaged")
    return out


def _fold_weight_norm_pre_hook(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: fold weight-normed keys in place so a released checkpoint loads with strict=True."""
    mine = {k: v for k, v in state_dict.items() if k.startswith(prefix) and k.endswith(("weight_g", "weight_v"))}
    if not mine:
        return
    for key in mine:
        del state_dict[key]
    state_dict.update(fold_weight_norm(mine))


class WeightNormFolding:
    """Mixin for inference networks stored with weight norm: ``load_state_dict`` accepts both the weight-normed
    (released) and the folded layout; ``convert_checkpoint`` maps a released state dict to our keys."""

    def _register_weight_norm_folding(self):
        self.register_load_state_dict_pre_hook(_fold_weight_norm_pre_hook)

    @classmethod
    def convert_checkpoint(cls, state_dict):
        return fold_weight_norm(state_dict)

    # state-dict key prefixes of convolutions the original does NOT weight-norm
    PLAIN_WEIGHT_PREFIXES = ()

    def released_state_dict(self):
        """Our weights in the released layout: each weight-normed conv's ``weight`` as (``weight_g``, ``weight_v``)
        with v = weight, g = its norm over all dims but 0 (folding them back gives the weight to rounding)."""
        convs = {name for name, m in self.named_modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))}
        sd = {}
        for key, value in self.state_dict().items():
            owner, _, leaf = key.rpartition(".")
            if leaf == "weight" and owner in convs and not key.startswith(self.PLAIN_WEIGHT_PREFIXES):
                sd[key + "_g"] = torch.norm_except_dim(value, 2, 0)
                sd[key + "_v"] = value.clone()
            else:
                sd[key] = value
        return sd

    def remove_weight_norm(self):
        """No-op kept for API compatibility: weights are always stored folded."""



def conv_transpose1d(x, conv):
    """``conv(x)`` for an ``nn.ConvTranspose1d`` (groups 1, dilation 1) as one matmul plus an overlap-add.

    x: (B, C_in, L) -> (B, C_out, (L-1)*stride - 2*padding + K + output_padding). Every tap's contribution
    W[:, :, k]^T x lands at n*stride + k; taps are grouped in blocks of ``stride`` so each block is a shifted add.
    PyTorch's CPU kernel for long 1-d transposed convolutions is a slow reference loop; this is a GEMM.
    """
    batch, _, length = x.shape
    stride, padding, out_pad = conv.stride[0], conv.padding[0], conv.output_padding[0]
    c_out, taps = conv.out_channels, conv.kernel_size[0]
    if conv.groups != 1 or conv.dilation[0] != 1:
        raise NotImplementedError("conv_transpose1d: only groups=1, dilation=1")
    blocks = -(-taps // stride)
    weight = F.pad(conv.weight, (0, blocks * stride - taps))                  # (C_in, C_out, blocks*stride)
    y = torch.matmul(weight.flatten(1).t(), x)                                # (B, C_out*blocks*stride, L)
    y = y.view(batch, c_out, blocks, stride, length).transpose(3, 4)          # (B, C_out, blocks, L, stride)
    full = x.new_zeros(batch, c_out, length + blocks - 1, stride)
    for j in range(blocks):
        full[:, :, j:j + length] += y[:, :, j]
    full = full.flatten(2)                                                    # (B, C_out, (L+blocks-1)*stride)
    out_len = (length - 1) * stride - 2 * padding + taps + out_pad
    out = full[:, :, padding:padding + out_len]
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1)
    return out
