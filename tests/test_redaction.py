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


# ---------------------------------------------------------------- checked before any generation

def _offline_without_aligner(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))


def test_bracket_text_problems_are_refused_up_front(tmp_path, monkeypatch):
    _offline_without_aligner(monkeypatch, tmp_path)
    none = tmp_path / "no_models"
    W.check_redaction(["No brackets at all."], none)  # no brackets: the aligner is never needed
    W.check_redaction(["[only brackets]"], none, enabled=False)  # redaction off: the brackets are spoken
    for texts in (["[I am really sad.]"], ["[sad] [angry]."], ["[sad,]", "[angry.]"]):
        with pytest.raises(ValueError, match="entirely in \\[brackets\\]") as e:
            W.check_redaction(texts, none)
        assert "--disable_redaction" in str(e.value) and not isinstance(e.value, W.AlignerUnavailable)
    with pytest.raises(ValueError, match="clip 1 .* entirely in \\[brackets\\]"):
        W.check_redaction(["Hello there.", "[whispering]"], none)
    with pytest.raises(ValueError, match="unmatched"):
        W.check_redaction(["[sad feed me."], none)


def test_missing_aligner_offline_is_one_line_at_once(tmp_path, monkeypatch):
    _offline_without_aligner(monkeypatch, tmp_path)
    with pytest.raises(W.AlignerUnavailable) as e:
        W.check_redaction(["[I am sad,] feed me."], tmp_path / "no_models")
    msg = str(e.value)
    assert "\n" not in msg and W.W2V_MODEL in msg and "offline" in msg and "--disable_redaction" in msg
    assert str(tmp_path / "no_models" / "wav2vec2-large-robust-ft-libritts-voxpopuli") in msg
    assert isinstance(e.value, checkpoint_error())  # the CLI reports it as bad input (exit 2), like a checkpoint


def checkpoint_error():
    from tortoise.utils.checkpoints import CheckpointError
    return CheckpointError


def test_aligner_found_in_models_dir_or_hub_cache(models_dir, tmp_path, monkeypatch):
    _offline_without_aligner(monkeypatch, tmp_path)
    W.check_redaction(["[I am sad,] feed me."], models_dir)  # save_pretrained directories in the models dir
    broken = tmp_path / "broken"
    shutil.copytree(models_dir / "tacotron-symbols", broken / "tacotron-symbols")
    (broken / "wav2vec2-large-robust-ft-libritts-voxpopuli").mkdir()
    with pytest.raises(W.AlignerUnavailable, match="lacks config.json, model.safetensors or pytorch_model.bin"):
        W.check_redaction(["[sad] feed me."], broken)
    # the Hugging Face cache (what an earlier online run left), read offline
    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    for repo, src in ((W.W2V_MODEL, models_dir / "wav2vec2-large-robust-ft-libritts-voxpopuli"),
                      (W.W2V_TOKENIZER, models_dir / "tacotron-symbols")):
        entry = cache / ("models--" + repo.replace("/", "--"))
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text("0" * 40)
        shutil.copytree(src, entry / "snapshots" / ("0" * 40))
    W.check_redaction(["[I am sad,] feed me."], tmp_path / "no_models")


def test_cli_fails_before_loading_any_model(tmp_path, monkeypatch, capsys):
    """Was: the clip rendered first, then the aligner failed (exit 1 after minutes on real models)."""
    from tortoise import cli
    _offline_without_aligner(monkeypatch, tmp_path)
    monkeypatch.setattr(api.TextToSpeech, "__init__", lambda *a, **k: pytest.fail("models loaded before the check"))
    out = tmp_path / "out"
    base = ["--models_dir", str(tmp_path / "no_models"), "-O", str(out), "-q"]
    for text, fragment in (("[I am really sad,] please feed me.", "needs the wav2vec2 aligner"),
                           ("[Only this.]", "entirely in [brackets]")):
        assert cli.main(base + [text]) == cli.EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0] and "--disable_redaction" in err[0], err
    assert not out.exists()


def test_cli_redacts_with_a_local_aligner(models_dir, tmp_path, monkeypatch):
    from tortoise import cli
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = ["--models_dir", str(models_dir), "-O", str(out), "-q", "-p", "ultra_fast", "--num_autoregressive_samples",
            "2", "--max_mel_tokens", "30", "--steps", "2", "--vocoder", "univnet", "--seed", "5"]
    assert cli.main(argv + ["[I am really sad,] please feed me."]) == 0
    assert (out / "random_00_00.wav").is_file()


def test_stream_needs_no_aligner(tmp_path, monkeypatch):
    """--stream does not redact (its audio leaves before the text ends), so it never asks for the aligner."""
    from tortoise import cli
    _offline_without_aligner(monkeypatch, tmp_path)
    d = tmp_path / "models"
    write_models(d, size="tiny", seed=0)
    out = tmp_path / "out"
    assert cli.main(["--models_dir", str(d), "-O", str(out), "-q", "--stream", "--max_mel_tokens", "20", "--seed", "1",
                     "[softly] hello."]) == 0
    assert (out / "random_00_00.wav").is_file()
