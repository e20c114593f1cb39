"""The "was this made by Tortoise?" detector: an AudioMiniEncoder over the raw waveform and a linear head.

Parameter names and constructor arguments are the original's (released ``classifier.pth``:
``AudioMiniEncoderWithClassifierHead(2, spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2,
attn_blocks=4, num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5, distribute_zero_label=False)``).
The encoder is the shared ``arch_util.AudioMiniEncoder`` (the original's copy in this module has the same layout).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.arch_util import AudioMiniEncoder, ResBlock  # noqa: F401  (ResBlock: the original's path)


class AudioMiniEncoderWithClassifierHead(nn.Module):
    def __init__(self, classes, distribute_zero_label=True, **kwargs):
        super().__init__()
        self.enc = AudioMiniEncoder(**kwargs)
        self.head = nn.Linear(self.enc.dim, classes)
        self.num_classes = classes
        self.distribute_zero_label = distribute_zero_label

    def forward(self, x, labels=None):
        """x: waveform (B, spec_dim, T) -> logits (B, classes); with ``labels`` (B,) the cross-entropy loss."""
        logits = self.head(self.enc(x))
        if labels is None:
            return logits
        return F.cross_entropy(logits, self._targets(labels))

    def _targets(self, labels):
        """Class targets; with ``distribute_zero_label`` a label 0 moves 20% of its mass evenly to the other classes
        (the original's compensation for noise in the zero class)."""
        if not self.distribute_zero_label:
            return labels
        one_hot = F.one_hot(labels, num_classes=self.num_classes).float()
        extra = torch.full_like(one_hot, 0.2 / (self.num_classes - 1))
        extra[:, 0] = -0.2
        return one_hot + extra * (labels == 0).unsqueeze(-1)

    @torch.no_grad()
    def probabilities(self, x):
        """Softmax over the classes, (B, classes); for the released detector column 0 is "made by Tortoise"."""
        return F.softmax(self(x), dim=-1)
