import json
import subprocess
import sys

import pytest
import torch

from tortoise.utils import checkpoints as ck


def test_registry_names_every_released_file():
    files = {c.filename for c in ck.CHECKPOINTS.values()}
    assert files == {"autoregressive.pth", "diffusion_decoder.pth", "clvp2.pth", "cvvp.pth", "vocoder.pth",
                     "rlg_auto.pth", "rlg_diffuser.pth", "classifier.pth", "hifidecoder.pth"}
    assert set(ck.RELEASED_CONFIGS) == set(ck.CHECKPOINTS) == set(ck.TINY_CONFIGS)


def test_explicit_path_beats_models_dir(tmp_path):
    (tmp_path / "clvp2.pth").write_bytes(b"x")
    other = tmp_path / "mine.pth"
    other.write_bytes(b"y")
    assert ck.resolve_checkpoint("clvp", models_dir=tmp_path) == tmp_path / "clvp2.pth"
    assert ck.resolve_checkpoint("clvp", models_dir=tmp_path, path=other) == other
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.resolve_checkpoint("clvp", path=tmp_path / "nope.pth")


def test_env_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORTOISE_MODELS_DIR", str(tmp_path))
    assert ck.default_models_dir() == tmp_path
    monkeypatch.delenv("TORTOISE_MODELS_DIR")
    assert ck.default_models_dir().parts[-3:] == (".cache", "tortoise", "models")


def _hub_cache(models_dir, filename, payload):
    """The layout huggingface_hub keeps under cache_dir (what the original's downloads leave in models_dir)."""
    repo = models_dir / ("models--" + ck.HUB_REPO.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    torch.save(payload, snap / filename)
    return snap / filename


def test_hub_path_offline_uses_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    target = _hub_cache(tmp_path, "rlg_auto.pth", {"w": torch.ones(2)})
    got = ck.resolve_checkpoint("rlg_auto", models_dir=tmp_path)
    assert got.resolve() == target.resolve()
    assert torch.equal(ck.load_state_dict(got)["w"], torch.ones(2))


def test_hub_path_offline_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ck.CheckpointError) as e:
        ck.resolve_checkpoint("diffusion", models_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "diffusion_decoder.pth" in msg and str(tmp_path) in msg and "--models_dir" in msg


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, p)
    with pytest.raises(ck.CheckpointError, match="refused"):
        ck.load_state_dict(p)


def test_damaged_file_is_reported(tmp_path):
    p = tmp_path / "bad.pth"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ck.CheckpointError, match="damaged"):
        ck.load_state_dict(p)


def test_state_key_and_legacy_format(tmp_path):
    p = tmp_path / "v.pth"
    torch.save({"model_g": {"a": torch.arange(3)}}, p, _use_new_zipfile_serialization=False)
    assert torch.equal(ck.load_state_dict(p, "model_g")["a"], torch.arange(3))
    with pytest.raises(ck.CheckpointError, match="no 'generator' entry"):
        ck.load_state_dict(p, "generator")


def test_config_json_overrides_released(tmp_path):
    assert ck.model_config("autoregressive", tmp_path)["layers"] == 30
    (tmp_path / "config.json").write_text(json.dumps({"autoregressive": {"layers": 3}}))
    cfg = ck.model_config("autoregressive", tmp_path)
    assert cfg["layers"] == 3 and cfg["model_dim"] == 1024
    assert ck.RELEASED_CONFIGS["autoregressive"]["layers"] == 30  # the registry itself is untouched
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ck.CheckpointError, match="not valid JSON"):
        ck.model_config("autoregressive", tmp_path)


def test_tiny_models_load_strictly(tiny_models_dir):
    for name in ck.CHECKPOINTS:
        model = ck.load_model(name, models_dir=tiny_models_dir)
        assert not model.training
        n = sum(p.numel() for p in model.parameters())
        assert 0 < n < 3_000_000, (name, n)


def test_mismatched_checkpoint_names_first_bad_key(tmp_path, tiny_models_dir):
    sd = ck.load_state_dict(tiny_models_dir / "rlg_auto.pth")
    key = next(iter(sd))
    bad = dict(sd)
    bad[key] = torch.zeros(7, 7)
    torch.save(bad, tmp_path / "rlg_auto.pth")
    (tmp_path / "config.json").write_text((tiny_models_dir / "config.json").read_text())
    with pytest.raises(ck.CheckpointError, match=f"{key!r} has shape"):
        ck.load_model("rlg_auto", models_dir=tmp_path)
    # a full-size config against tiny weights: named, one line
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model("rlg_auto", path=tiny_models_dir / "rlg_auto.pth", config={"channels": 1024})
    assert "\n" not in str(e.value)


def test_make_test_models_cli_keeps_existing_files(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "tortoise.utils.make_test_models", str(out), "--size", "tiny",
           "--only", "rlg_auto", "rlg_diffuser"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    assert str(out / "rlg_auto.pth") in first and str(out / "config.json") in first
    stamp = (out / "rlg_auto.pth").stat().st_mtime_ns
    second = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    assert str(out / "rlg_auto.pth") not in second
    assert (out / "rlg_auto.pth").stat().st_mtime_ns == stamp
