"""Parity fixtures for the pipeline helpers and redaction, from the ORIGINAL implementation.

Run with the original's environment (our package is not installed there; see tests/parity/make_env.sh):

    /work/origenv/bin/python tests/parity/make_pipeline_fixtures.py

Writes, under ``tests/parity/fixtures/pipeline/``:
  alignment.pt   random (text, transcript) pairs and the original ``max_alignment`` of each;
                 code rows and the original ``fix_autoregressive_output`` of each;
                 a synthetic 24 kHz clip, texts with [brackets], and the original ``Wav2VecAlignment.align`` /
                 ``redact`` outputs computed with the tiny random wav2vec2 below.
  w2v/           that tiny wav2vec2 (``save_pretrained``; seed 0) and its character tokenizer (a vocab.json).
Deterministic: fixed seeds; re-running writes the same tensors.
"""
import json
import os
import random

import torch
from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

from tortoise.api import fix_autoregressive_output
from tortoise.utils.wav2vec_alignment import Wav2VecAlignment, max_alignment

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pipeline")
W2V = os.path.join(OUT, "w2v")
CHARS = "abcdefghijklmnopqrstuvwxyz',.?!"
TINY_W2V = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
                vocab_size=4 + 1 + len(CHARS), pad_token_id=0)
TEXTS = ["[I am really sad,] please feed me.", "hello [there] my friend", "[whisper] quiet words [end]"]


def write_w2v():
    os.makedirs(W2V, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c: 5 + i for i, c in enumerate(CHARS)})
    with open(os.path.join(W2V, "vocab.json"), "w") as f:
        json.dump(vocab, f, sort_keys=True)
    tok = Wav2Vec2CTCTokenizer(os.path.join(W2V, "vocab.json"))
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY_W2V)).eval()
    with torch.no_grad():  # a lm_head that favours letters, so the CTC transcript is not all padding
        model.lm_head.bias[:5] -= 2.0
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(W2V, safe_serialization=False)
    return model, tok


def aligner(model, tok):
    a = Wav2VecAlignment.__new__(Wav2VecAlignment)  # the original's __init__ downloads from the hub
    a.model, a.tokenizer, a.device = model, tok, "cpu"
    return a


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(0)
    pairs = []
    for _ in range(300):
        s1 = "".join(rng.choice("abcde ',") for _ in range(rng.randint(0, 25)))
        s2 = "".join(rng.choice("abcdef |") for _ in range(rng.randint(0, 30)))
        pairs.append([s1, s2, max_alignment(s1, s2)])
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 8192, (6, 40), generator=gen)
    for i, stop in enumerate([3, 10, 25, 38, 39, None]):
        if stop is not None:
            rows[i, stop:] = 8193
    fixed = torch.stack([fix_autoregressive_output(r.clone(), 8193, complain=False) for r in rows])

    model, tok = write_w2v()
    t = torch.arange(24000 * 2) / 24000
    clip = (0.3 * torch.sin(2 * torch.pi * 200 * t) * torch.sin(2 * torch.pi * 1.5 * t)
            + 0.05 * torch.randn(t.shape[0], generator=gen))[None]  # [1, 48000]
    a = aligner(model, tok)
    aligned, redacted = [], []
    for text in TEXTS:
        bare = text.replace("[", "").replace("]", "")
        aligned.append(torch.tensor(a.align(clip, bare)))
        redacted.append(a.redact(clip, text))
    torch.save({"max_alignment": pairs, "codes": rows, "fixed_codes": fixed, "clip": clip, "texts": TEXTS,
                "align": aligned, "redact": redacted}, os.path.join(OUT, "alignment.pt"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
