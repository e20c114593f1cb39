"""The checkpoints as they are published (REFERENCE.md, "What the released files really hold"): each trait written on
its own and loaded through the public entry points (TextToSpeech(models_dir=...), --ar_checkpoint, the models dir
the web UI and every other test use)."""
import json
import shutil
import zipfile

import pytest
import torch

from tortoise.utils import checkpoints as ck
from tortoise.utils.make_test_models import write_models

AR_FILE = "autoregressive.pth"


def _ar_state(models_dir):
    return ck.load_state_dict(models_dir / AR_FILE)


def _copy_models(src, dst, skip=()):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def _storage_locations(path):
    """The device tags torch.save recorded for every storage of a zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {tag for tag in (b"cpu", b"cuda:0") if tag in pkl}


# ---------------------------------------------------------------- the test models carry the traits

def test_test_models_are_written_as_released(tiny_models_dir):
    sd = _ar_state(tiny_models_dir)
    n_layers = json.loads((tiny_models_dir / "config.json").read_text())["autoregressive"]["layers"]
    masks = [k for k in sd if k.endswith(".attn.bias")]
    assert len(masks) == n_layers and len([k for k in sd if k.endswith(".attn.masked_bias")]) == n_layers
    mask = sd["gpt.h.0.attn.bias"]
    assert mask.dtype == torch.uint8 and mask.shape == (1, 1, 1012, 1012)  # 604 + 2 + 2 mel + 402 + 2 text positions
    assert float(sd["gpt.h.0.attn.masked_bias"]) == -1e4
    assert not any(k.startswith(("gpt.wte", "gpt.wpe", "module.")) for k in sd)
    keys = list(sd)  # HF order: the buffers follow ln_1
    assert keys[keys.index("gpt.h.0.ln_1.bias") + 1] == "gpt.h.0.attn.bias"
    # UnivNet's training container, saved on CUDA
    raw = torch.load(tiny_models_dir / "vocoder.pth", weights_only=True, map_location="cpu")
    assert set(raw) == {"model_g", "model_d", "optim_g", "optim_d", "step", "epoch", "hp_str", "githash"}
    assert any(k.endswith("weight_g") for k in raw["model_g"]) and isinstance(raw["hp_str"], str)
    for name in ("vocoder.pth", "hifidecoder.pth"):
        assert _storage_locations(tiny_models_dir / name) == {b"cuda:0"}
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tiny_models_dir / name, weights_only=True)
    assert _storage_locations(tiny_models_dir / AR_FILE) == {b"cpu"}


def test_released_models_dir_runs_the_whole_pipeline(tiny_models_dir):
    from tortoise.api import TextToSpeech
    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    wav = tts.tts_with_preset("Hello there.", preset="ultra_fast", num_autoregressive_samples=2,
                              diffusion_iterations=2, max_mel_tokens=20, use_deterministic_seed=1, verbose=False)
    assert wav.shape[:2] == (1, 1) and wav.shape[-1] > 0 and torch.isfinite(wav).all()
    chunks = list(tts.tts_stream("Hi.", max_mel_tokens=20, use_deterministic_seed=1, verbose=False))
    assert sum(c.numel() for c in chunks) > 0


# ---------------------------------------------------------------- the autoregressive file

@pytest.mark.parametrize("variant", ["uint8", "bool", "fp16", "no_buffers", "module_prefix", "inference_copies"])
def test_fine_tune_variants_load_through_ar_checkpoint(tiny_models_dir, tmp_path, variant):
    from tortoise.api import TextToSpeech
    sd = _ar_state(tiny_models_dir)
    reference = ck.load_model("autoregressive", models_dir=tiny_models_dir).state_dict()
    if variant == "bool":
        sd = {k: v.bool() if k.endswith(".attn.bias") else v for k, v in sd.items()}
    elif variant == "fp16":  # ai-voice-cloning's half precision: every tensor, masks included
        sd = {k: v.half() for k, v in sd.items()}
    elif variant == "no_buffers":
        sd = {k: v for k, v in sd.items() if ".attn.bias" not in k and ".attn.masked_bias" not in k}
    elif variant == "module_prefix":
        sd = {"module." + k: v for k, v in sd.items()}
    elif variant == "inference_copies":
        sd = dict(sd, **{"inference_model.transformer." + k[4:]: v for k, v in sd.items() if k.startswith("gpt.")},
                  **{"gpt.wte.weight": sd["mel_embedding.weight"]})
    path = tmp_path / "finetune.pth"
    torch.save(sd, path)
    tts = TextToSpeech(models_dir=tiny_models_dir, ar_checkpoint=path, device="cpu", preload=False)
    ar = tts.autoregressive
    for key, value in ar.state_dict().items():
        expected = reference[key].half().float() if variant == "fp16" else reference[key]
        assert value.dtype == reference[key].dtype and torch.equal(value, expected), key


def test_ar_checkpoint_flag_loads_a_released_file(models_dir, tmp_path):
    from tortoise.cli import main
    path = tmp_path / "my_ar.pth"
    sd = {"module." + k: (v.half() if v.is_floating_point() else v) for k, v in _ar_state(models_dir).items()}
    torch.save(sd, path)
    out = tmp_path / "out"
    code = main(["--models_dir", str(models_dir), "--ar_checkpoint", str(path), "-p", "ultra_fast", "-q",
                 "--num_autoregressive_samples", "2", "--steps", "2", "--max_mel_tokens", "16", "--seed", "3",
                 "-O", str(out), "Hello."])
    assert code == 0 and (out / "random_00_00.wav").is_file()


@pytest.mark.parametrize("key,bad,fragment", [
    ("gpt.h.0.attn.bias", torch.ones(1, 1, 8, 8, dtype=torch.uint8), "causal-mask"),
    ("gpt.h.0.attn.masked_bias", torch.tensor(0.0), "-1e4"),
])
def test_a_legacy_buffer_that_is_not_what_it_claims_is_refused(models_dir, tmp_path, key, bad, fragment):
    sd = dict(_ar_state(models_dir), **{key: bad})
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model("autoregressive", models_dir=models_dir, path=tmp_path / "bad.pth")
    assert key in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)


def test_missing_and_unexpected_keys_are_named(models_dir, tmp_path):
    sd = _ar_state(models_dir)
    torch.save({k: v for k, v in sd.items() if k != "final_norm.weight"}, tmp_path / "missing.pth")
    with pytest.raises(ck.CheckpointError, match="lacks key 'final_norm.weight'"):
        ck.load_model("autoregressive", models_dir=models_dir, path=tmp_path / "missing.pth")
    torch.save(dict(sd, **{"gpt.wpe.weight": torch.zeros(4, 4)}), tmp_path / "extra.pth")
    with pytest.raises(ck.CheckpointError, match="unexpected key 'gpt.wpe.weight'"):
        ck.load_model("autoregressive", models_dir=models_dir, path=tmp_path / "extra.pth")


def _tokenizer_with(n_tokens, path):
    """A tokenizer.json of ``n_tokens`` entries: the shipped vocabulary plus made-up merges' results."""
    from tortoise.utils.tokenizer import DEFAULT_VOCAB_FILE
    data = json.loads(open(DEFAULT_VOCAB_FILE).read())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), n_tokens):
        vocab[f"zz{i}"] = i
    path.write_text(json.dumps(data))
    return path


def test_fine_tune_with_its_own_text_vocabulary(models_dir, tmp_path):
    from tortoise.api import TextToSpeech
    sd = _ar_state(models_dir)
    rows = 301  # 300 text tokens + the start token
    gen = torch.Generator().manual_seed(0)
    sd["text_embedding.weight"] = torch.randn(rows, sd["text_embedding.weight"].shape[1], generator=gen) * 0.02
    sd["text_head.weight"] = torch.randn(rows, sd["text_head.weight"].shape[1], generator=gen) * 0.02
    sd["text_head.bias"] = torch.zeros(rows)
    path = tmp_path / "custom_vocab.pth"
    torch.save(sd, path)
    ar = ck.load_model("autoregressive", models_dir=models_dir, path=path)
    assert ar.number_text_tokens == 300 and ar.start_text_token == 300
    with pytest.raises(ck.CheckpointError) as e:  # the released tokenizer does not fit it
        TextToSpeech(models_dir=models_dir, ar_checkpoint=path, device="cpu", preload=False).autoregressive
    assert "300 tokens" in str(e.value) and "255" in str(e.value) and "--tokenizer" in str(e.value)
    tok = _tokenizer_with(300, tmp_path / "tokenizer.json")
    tts = TextToSpeech(models_dir=models_dir, ar_checkpoint=path, tokenizer_vocab_file=tok, device="cpu")
    wav = tts.tts_with_preset("Hello.", preset="ultra_fast", num_autoregressive_samples=2, diffusion_iterations=2,
                              max_mel_tokens=16, use_deterministic_seed=0, verbose=False)
    assert torch.isfinite(wav).all()


def test_cli_tokenizer_mismatch_is_one_line(models_dir, tmp_path, capsys):
    from tortoise.cli import main
    sd = _ar_state(models_dir)
    sd["text_embedding.weight"] = torch.zeros(301, sd["text_embedding.weight"].shape[1])
    sd["text_head.weight"] = torch.zeros(301, sd["text_head.weight"].shape[1])
    sd["text_head.bias"] = torch.zeros(301)
    torch.save(sd, tmp_path / "v.pth")
    code = main(["--models_dir", str(models_dir), "--ar_checkpoint", str(tmp_path / "v.pth"), "-O",
                 str(tmp_path / "o"), "Hi."])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--tokenizer" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- vocoders

def test_univnet_container_and_cuda_storages_load(models_dir, tmp_path):
    from tortoise.api import TextToSpeech
    tts = TextToSpeech(models_dir=models_dir, device="cpu", preload=False)
    univnet = tts.vocoder
    mel = torch.randn(1, 100, 5) - 5
    assert univnet.inference(mel).shape == (1, 1, 5 * 256)
    assert tts.hifi_decoder is not None  # hifidecoder.pth: CUDA storages, weight norm


def test_bigvgan_generator_container_in_both_layouts(tmp_path):
    from tortoise.models.bigvgan import BigVGAN, GENERATOR_FILE
    from tortoise.models.vocoder import BIGVGAN_BASE_24KHZ_100BAND, load_vocoder
    cfg = dict(BIGVGAN_BASE_24KHZ_100BAND, upsample_initial_channel=16, resblock_kernel_sizes=[3],
               resblock_dilation_sizes=[[1, 3, 5]])
    torch.manual_seed(0)
    net = BigVGAN(cfg).eval()
    mel = torch.randn(1, 100, 4)
    want = net(mel)
    for layout, sd in (("weight_norm", net.released_state_dict()), ("folded", net.state_dict())):
        d = tmp_path / layout
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        torch.save({"generator": sd}, d / GENERATOR_FILE)
        got = load_vocoder("bigvgan_base", d).net(mel)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- where files come from

def _hub_cache(models_dir, repo, filename, payload, revision="main", commit="0" * 40):
    """The layout huggingface_hub keeps under cache_dir."""
    root = models_dir / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    target = root / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return target


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)


def test_cvvp_comes_from_the_older_repository_when_the_main_one_lacks_it(tmp_path, models_dir, offline):
    home = tmp_path / "models"
    sd = ck.load_state_dict(models_dir / "cvvp.pth")
    target = _hub_cache(home, "jbetker/tortoise-tts-v2", ".models/cvvp.pth", sd)
    (home / "config.json").write_text((models_dir / "config.json").read_text())
    assert ck.resolve_checkpoint("cvvp", models_dir=home).resolve() == target.resolve()
    assert ck.load_model("cvvp", models_dir=home) is not None
    with pytest.raises(ck.CheckpointError) as e:  # nowhere at all: both repositories named
        ck.resolve_checkpoint("cvvp", models_dir=tmp_path / "empty")
    assert "Manmay/tortoise-tts" in str(e.value) and "jbetker/tortoise-tts-v2" in str(e.value)


def test_hub_revision_is_one_setting(tmp_path, monkeypatch, offline):
    old = _hub_cache(tmp_path, ck.HUB_REPO, "rlg_auto.pth", {"w": torch.zeros(1)}, "v1", "1" * 40)
    new = _hub_cache(tmp_path, ck.HUB_REPO, "rlg_auto.pth", {"w": torch.ones(1)}, "main", "2" * 40)
    assert ck.resolve_checkpoint("rlg_auto", models_dir=tmp_path).resolve() == new.resolve()
    assert ck.resolve_checkpoint("rlg_auto", models_dir=tmp_path, revision="v1").resolve() == old.resolve()
    monkeypatch.setenv(ck.HUB_REVISION_ENV, "v1")
    assert ck.resolve_checkpoint("rlg_auto", models_dir=tmp_path).resolve() == old.resolve()
    with pytest.raises(ck.CheckpointError, match="@nope"):
        ck.resolve_checkpoint("rlg_auto", models_dir=tmp_path, revision="nope")


def test_make_test_models_keeps_config_json_unless_forced(tmp_path):
    cfg = tmp_path / "config.json"
    write_models(tmp_path, size="tiny", only=["rlg_auto"])
    cfg.write_text('{"rlg_auto": {"channels": 64}, "mine": true}')
    write_models(tmp_path, size="tiny", only=["rlg_diffuser"])
    assert json.loads(cfg.read_text())["mine"] is True
    write_models(tmp_path, size="tiny", only=["rlg_diffuser"], force=True)
    assert "mine" not in json.loads(cfg.read_text())
