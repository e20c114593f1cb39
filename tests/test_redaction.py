"""Redaction of [bracketed] text: the alignment helpers against the original implementation, and the pipeline with a
tiny random wav2vec2 written by the test (loaded only when a text has brackets)."""
import json
import os
import shutil

import pytest
import torch

from tortoise import api
from tortoise.utils import wav2vec_alignment as W
from tortoise.utils.make_test_models import write_models

FIX = os.path.join(os.path.dirname(__file__), "parity", "fixtures", "pipeline")
CHARS = "abcdefghijklmnopqrstuvwxyz',.?!"


@pytest.fixture(scope="module")
def fixture():
    return torch.load(os.path.join(FIX, "alignment.pt"), weights_only=True)


def test_max_alignment_matches_the_original(fixture):
    for s1, s2, expected in fixture["max_alignment"]:
        assert W.max_alignment(s1, s2) == expected, (s1, s2)


def test_max_alignment_handles_long_text_without_recursion():
    text = "the quick brown fox jumps over the lazy dog " * 40  # 1760 chars: the original's recursion overflows
    out = W.max_alignment(text, text.replace("o", ""))
    assert len(out) == len(text) and out.count(W.SKIP) == text.count("o")


def test_fix_autoregressive_output_matches_the_original(fixture):
    fixed = torch.stack([api.fix_autoregressive_output(r.clone(), 8193, complain=False) for r in fixture["codes"]])
    assert torch.equal(fixed, fixture["fixed_codes"])


def test_split_redactions_and_interpolation():
    bare, keep = W.split_redactions("[I am sad,] feed me [now]")
    assert bare == "I am sad, feed me now" and keep == [(9, 17)]
    assert W.split_redactions("plain")[1] == [(0, 4)]
    with pytest.raises(ValueError, match="unmatched '\\['"):
        W.split_redactions("a [b c")
    with pytest.raises(ValueError, match="unmatched '\\]'"):
        W.split_redactions("a b] c")
    assert W.interpolate_missing([0, -1, -1, 30, -1], 50) == [0, 10, 20, 30, 40]


def test_align_and_redact_match_the_original(fixture, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(os.path.join(FIX, "w2v"), models / "wav2vec2-large-robust-ft-libritts-voxpopuli")
    shutil.copytree(os.path.join(FIX, "w2v"), models / "tacotron-symbols")
    aligner = W.Wav2VecAlignment(device="cpu", models_dir=models)
    clip = fixture["clip"]
    for text, aligned, redacted in zip(fixture["texts"], fixture["align"], fixture["redact"]):
        bare = text.replace("[", "").replace("]", "")
        assert aligner.align(clip, bare) == aligned.tolist(), text
        torch.testing.assert_close(aligner.redact(clip, text), redacted, rtol=0, atol=0)


# ---------------------------------------------------------------- through the pipeline

def save_tiny_wav2vec2(models_dir):
    """A tiny random wav2vec2 CTC model and character tokenizer, saved where TextToSpeech looks for them."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC
    tok_dir = models_dir / "tacotron-symbols"
    tok_dir.mkdir(parents=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4} | {c: 5 + i for i, c in enumerate(CHARS)}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2CTCTokenizer(str(tok_dir / "vocab.json")).save_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(16, 16), conv_kernel=(10, 4), conv_stride=(5, 4), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, vocab_size=len(vocab), pad_token_id=0)
    Wav2Vec2ForCTC(cfg).save_pretrained(str(models_dir / "wav2vec2-large-robust-ft-libritts-voxpopuli"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_models_w2v")
    write_models(d, size="tiny", seed=0)
    save_tiny_wav2vec2(d)
    return d


KW = dict(num_autoregressive_samples=2, max_mel_tokens=30, diffusion_iterations=2, verbose=False)


def test_brackets_are_cut_from_the_audio(models_dir):
    text = "[I am really sad,] please feed me."
    plain = api.TextToSpeech(models_dir=models_dir, device="cpu", enable_redaction=False)
    full = plain.tts(text, use_deterministic_seed=5, **KW)  # [1, 1, S]: same seed, nothing cut
    tts = api.TextToSpeech(models_dir=models_dir, device="cpu", enable_redaction=True)
    cut = tts.tts(text, use_deterministic_seed=5, **KW)
    bare, keep = W.split_redactions(text)
    pos = tts.aligner.align(full.squeeze(1), bare)
    (a, b), = keep
    assert torch.equal(cut, full[:, :, pos[a]:pos[b]])
    assert 0 < cut.shape[-1] < full.shape[-1]


def test_aligner_loads_only_for_brackets(tmp_path, monkeypatch):
    """Without wav2vec2 weights anywhere (offline, none in the models dir), text without brackets still works."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "models"
    write_models(d, size="tiny", seed=0)
    tts = api.TextToSpeech(models_dir=d, device="cpu", enable_redaction=True)
    wav = tts.tts("No brackets here.", use_deterministic_seed=1, **KW)
    assert wav.shape[-1] > 0 and tts._aligner is None
    off = api.TextToSpeech(models_dir=d, device="cpu", enable_redaction=False)
    assert off.tts("[kept] because redaction is off", use_deterministic_seed=1, **KW).shape[-1] > 0
    assert off._aligner is None
    with pytest.raises(RuntimeError, match="--disable_redaction"):
        tts.tts("[needs] the aligner", use_deterministic_seed=1, **KW)
