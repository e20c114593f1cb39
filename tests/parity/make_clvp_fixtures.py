"""Parity fixtures for CLVP, CVVP, the random latent generators and the classifier, from the ORIGINAL implementation.

Run with the original's environment (our package is not installed there):

    /work/origenv/bin/python tests/parity/make_clvp_fixtures.py

Writes, under ``tests/parity/fixtures/clvp/``:
  released_keys.json   state-dict keys and shapes of every released config, built on the meta device;
  clvp.pt, cvvp.pt, rlg.pt, classifier.pt, xtransformers_masked.pt
                       tiny random-weight networks (fixed seeds): config, state dict, inputs and outputs.
Every parameter is perturbed after construction so zero-initialised branches (zero_module, LayerScale) take part.
Deterministic: re-running produces the same tensors.
"""
import json
import os

import torch
import torch.nn.functional as F

from tortoise.models.classifier import AudioMiniEncoderWithClassifierHead
from tortoise.models.clvp import CLVP
from tortoise.models.cvvp import CVVP
from tortoise.models.random_latent_generator import RandomLatentConverter

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clvp")

# The released constructor arguments (as the original api.py passes them).
RELEASED = {
    "clvp": (CLVP, dict(dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
                        text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20,
                        speech_heads=12, speech_seq_len=430, use_xformers=True)),
    "cvvp": (CVVP, dict(model_dim=512, transformer_heads=8, dropout=0, mel_codes=8192, conditioning_enc_depth=8,
                        cond_mask_percentage=0, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1)),
    "rlg_auto": (RandomLatentConverter, dict(channels=1024)),
    "rlg_diffuser": (RandomLatentConverter, dict(channels=2048)),
    "classifier": (AudioMiniEncoderWithClassifierHead,
                   dict(classes=2, spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2,
                        attn_blocks=4, num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5,
                        distribute_zero_label=False)),
}


def released_keys():
    out = {}
    for name, (cls, cfg) in RELEASED.items():
        with torch.device("meta"):
            model = cls(**cfg)
        out[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    return out


def build(cls, cfg, seed):
    torch.manual_seed(seed)
    model = cls(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pipeline_codes(lengths, total, vocab, gen):
    """Speech codes shaped as the original pipeline feeds CLVP: generated codes, then calm tokens (83) to ``total``,
    the last three set to 45, 45, 248 (what ``fix_autoregressive_output`` does after the stop token)."""
    rows = []
    for n in lengths:
        row = torch.full((total,), 83, dtype=torch.long)
        row[:n] = torch.randint(0, vocab, (n,), generator=gen)
        row[-3:] = torch.tensor([45, 45, 248])
        rows.append(row)
    return torch.stack(rows)


def clvp_cases():
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for variant, use_xformers in (("xformers", True), ("plain", False)):
        cfg = dict(dim_text=32, dim_speech=32, dim_latent=24, num_text_tokens=40, text_enc_depth=2, text_seq_len=24,
                   text_heads=1, num_speech_tokens=256, speech_enc_depth=2, speech_heads=2, speech_seq_len=64,
                   use_xformers=use_xformers)
        model = build(CLVP, cfg, seed=10 + use_xformers)
        inputs = []
        # 1: the pipeline's call: one text (with the pipeline's trailing 0) repeated for every candidate.
        text = F.pad(torch.randint(1, 40, (1, 11), generator=gen), (0, 1))
        inputs.append((text.repeat(3, 1), pipeline_codes([20, 31, 9], 40, 256, gen)))
        # 2: different texts per row, zero padded, and shorter speech.
        texts = torch.randint(1, 40, (2, 9), generator=gen)
        texts[1, 6:] = 0
        inputs.append((texts, torch.randint(0, 256, (2, 17), generator=gen)))
        # 3: a single pair of length 1 text.
        inputs.append((torch.randint(1, 40, (1, 1), generator=gen), torch.randint(0, 256, (1, 5), generator=gen)))
        with torch.no_grad():
            sims = [model(t, s, return_loss=False) for t, s in inputs]
            loss = model(*inputs[0], return_loss=True)
        cases.append(dict(variant=variant, config=cfg, state_dict=state(model),
                          texts=[t for t, _ in inputs], speech=[s for _, s in inputs], sims=sims, loss=loss))
    return cases


def cvvp_cases():
    gen = torch.Generator().manual_seed(99)
    cases = []
    for variant, mel_codes in (("codes", 256), ("mel", None)):
        cfg = dict(model_dim=32, transformer_heads=2, dropout=0, mel_codes=mel_codes, conditioning_enc_depth=2,
                   cond_mask_percentage=0, speech_enc_depth=2, speech_mask_percentage=0, latent_multiplier=1)
        model = build(CVVP, cfg, seed=20)
        mel_cond = torch.randn(3, 80, 48, generator=gen)
        if mel_codes is None:
            mel_input = torch.randn(3, 80, 30, generator=gen)
        else:
            mel_input = pipeline_codes([12, 25, 7], 30, 256, gen)
        with torch.no_grad():
            sims = model(mel_cond, mel_input, return_loss=False)
            loss = model(mel_cond, mel_input, return_loss=True)
        cases.append(dict(variant=variant, config=cfg, state_dict=state(model), mel_cond=mel_cond,
                          mel_input=mel_input, sims=sims, loss=loss))
    return cases


def rlg_cases():
    cases = []
    for channels in (32, 64):
        model = build(RandomLatentConverter, dict(channels=channels), seed=30 + channels)
        outs = []
        with torch.no_grad():
            for seed, ref in ((0, torch.tensor([0.0])), (7, torch.zeros(3, 5))):
                torch.manual_seed(seed)
                outs.append(dict(seed=seed, ref=ref, out=model(ref)))
        cases.append(dict(config=dict(channels=channels), state_dict=state(model), runs=outs))
    return cases


def classifier_cases():
    gen = torch.Generator().manual_seed(5)
    cfg = dict(classes=2, spec_dim=1, embedding_dim=32, depth=2, downsample_factor=4, resnet_blocks=2,
               attn_blocks=2, num_attn_heads=2, base_channels=8, dropout=0, kernel_size=5,
               distribute_zero_label=False)
    model = build(AudioMiniEncoderWithClassifierHead, cfg, seed=40)
    clip = torch.randn(2, 1, 700, generator=gen) * 0.3
    with torch.no_grad():
        logits = model(clip)
        probs = F.softmax(logits, dim=-1)
    cfg3 = dict(cfg, classes=3, distribute_zero_label=True)
    model3 = build(AudioMiniEncoderWithClassifierHead, cfg3, seed=41)
    labels3 = torch.tensor([0, 2])
    with torch.no_grad():
        loss3 = model3(clip, labels3)
    return [dict(config=cfg, state_dict=state(model), clip=clip, logits=logits, probs=probs),
            dict(config=cfg3, state_dict=state(model3), clip=clip, labels=labels3, loss=loss3)]


def xtransformer_masked_case():
    """The encoder with an explicit padding mask (training-time path): masked pairs get -finfo.max."""
    from tortoise.models.xtransformers import ContinuousTransformerWrapper, Encoder
    cfg = dict(dim=32, depth=2, heads=2, ff_mult=2, use_rmsnorm=True, ff_glu=True, rotary_pos_emb=True)
    torch.manual_seed(50)
    model = ContinuousTransformerWrapper(max_seq_len=-1, attn_layers=Encoder(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    gen = torch.Generator().manual_seed(51)
    x = torch.randn(3, 9, 32, generator=gen)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, ::2] = False
    with torch.no_grad():
        out = model(x, mask=mask)
    return dict(config=cfg, state_dict=state(model), x=x, mask=mask, out=out)


def main():
    os.makedirs(OUT, exist_ok=True)
    keys = released_keys()
    with open(os.path.join(OUT, "released_keys.json"), "w") as f:  # one tensor a line, for readable diffs
        f.write("{\n" + ",\n".join(
            json.dumps(name) + ": [\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]"
            for name, entries in keys.items()) + "\n}\n")
    torch.save(clvp_cases(), os.path.join(OUT, "clvp.pt"))
    torch.save(cvvp_cases(), os.path.join(OUT, "cvvp.pt"))
    torch.save(rlg_cases(), os.path.join(OUT, "rlg.pt"))
    torch.save(classifier_cases(), os.path.join(OUT, "classifier.pt"))
    torch.save(xtransformer_masked_case(), os.path.join(OUT, "xtransformers_masked.pt"))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
