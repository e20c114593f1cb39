"""Seeded random weights for released-format vocoder state dicts, shared by the fixture script (run in the
original's environment) and the tests, so both build the same tensors. Needs only torch."""
import torch

KERNEL_GAIN = 0.03  # UnivNet's predicted LVC kernels kept O(1), as in a trained model (else fp32 rounding
#                    is amplified chaotically and no two correct implementations agree)


def recipe_weights(keys, seed):
    """Deterministic random weights for a released-format state dict: one seeded generator per tensor.

    weight_v / weight / bias: N(0, 1) / scaled so a conv keeps unit activations; weight_g: the norm of a unit-gain
    weight (so weight norm keeps the same scale). Only torch.randn with explicit generators: identical in any process.
    """
    sd = {}
    for i, (key, shape) in enumerate(keys):
        gen = torch.Generator().manual_seed(seed * 100003 + i)
        t = torch.randn(shape, generator=gen)
        if key.endswith("weight_g"):
            # per-output-channel norm ~ 0.5..1.5 (UnivNet's kernel predictor output scaled down, see KERNEL_GAIN)
            t = (0.5 + 0.5 * t.abs()) * (KERNEL_GAIN if ".kernel_predictor.kernel_conv." in key else 1.0)
        elif key.endswith(("weight_v", "weight")) and len(shape) > 1:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = t / fan_in ** 0.5
        else:
            t = 0.05 * t                                      # biases
        sd[key] = t
    return sd


def checksum(sd):
    return float(sum(v.double().abs().sum() for v in sd.values()))
