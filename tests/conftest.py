"""Shared test fixtures: tiny random-weight models in the released checkpoint format, parity fixture loading, the
original Tortoise voices fetched once per session."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from tortoise.utils.checkpoints import TINY_CONFIGS

PARITY_FIXTURES = Path(__file__).parent / "parity" / "fixtures"

# The integration tiers, by test file: each file's tests get the tier's marker and `slow`, so `pytest -m "not slow"`
# is the quick unit tier and `pytest -m ray` (etc.) runs one tier. CI runs them all.
TIERS = {
    "export": ("test_export_backends.py", "test_backend_pipeline.py"),  # graphs exported and verified
    "ray": ("test_ray.py",),                                           # a real local Ray cluster and Serve
    "browser": ("test_webui_browser.py",),                             # the web UI in headless Chromium
    "server": ("test_server.py", "test_server_wyoming.py", "test_webui_turtle.py"),  # servers as subprocesses
    "download": ("test_voices_fetch.py",),                             # the original voices over HTTP (local)
    "scripts": ("test_readme.py", "test_packaging.py", "test_benchmark_scripts.py", "test_run_tests_script.py",
                "test_cli.py", "test_original_compat.py"),             # command lines and scripts as subprocesses
}
TIER_OF = {name: tier for tier, names in TIERS.items() for name in names}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = TIER_OF.get(item.path.name)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
            item.add_marker(pytest.mark.slow)


def load_parity_fixture(area, name):
    """A fixture written by ``tests/parity/make_<area>_fixtures.py`` in the original implementation's environment."""
    return torch.load(PARITY_FIXTURES / area / name, map_location="cpu", weights_only=True)


def write_tone(path, seconds=1.0, f0=220.0, sr=22050, tremolo=False):
    """A 0.3-amplitude sine written as a float wav; with ``tremolo`` its level swings at 3 Hz (a little more like a
    voice)."""
    t = np.arange(int(sr * seconds)) / sr
    wav = 0.3 * np.sin(2 * np.pi * f0 * t)
    if tremolo:
        wav = wav * (0.6 + 0.4 * np.sin(6 * np.pi * t))
    sf.write(str(path), wav.astype(np.float32), sr)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """A complete models directory of tiny random-weight networks (written once per test session)."""
    from tortoise.utils.make_test_models import write_models
    out = tmp_path_factory.mktemp("tiny_models")
    write_models(out, size="tiny", seed=0)
    return out


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tiny models: thread start-up costs more than it saves, and the machine is often shared.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def models_dir(tiny_models_dir):
    """The shared tiny models directory, for tests that only read it."""
    return tiny_models_dir


def tiny_diffusion_model(fx):
    """Our DiffusionTts built with a diffusion fixture's tiny config and strictly loaded with its weights."""
    from tortoise.models.diffusion_decoder import DiffusionTts
    model = DiffusionTts(**fx["config"]).eval()
    model.load_state_dict(fx["state_dict"], strict=True)
    return model


@pytest.fixture(autouse=True)
def _no_fetched_voices_of_the_user(tmp_path_factory, monkeypatch):
    """Voices fetched into the developer's own ~/.cache never take part in a test: an empty voices cache unless a
    test points TORTOISE_VOICES_DIR elsewhere."""
    monkeypatch.setenv("TORTOISE_VOICES_DIR", str(tmp_path_factory.getbasetemp() / "empty_voices_cache"))


@pytest.fixture(scope="session")
def original_voices(tmp_path_factory):
    """The original Tortoise voices fetched FOR REAL, once per session, by the command users run
    (``python -m tortoise.voices fetch``: pip downloads tortoise-tts 3.0.0 from the index it is configured for) into a
    temporary voices cache; the checked archive is kept (``--keep-archive``) for the tests that use a local file."""
    root = tmp_path_factory.mktemp("original_voices")
    cache, kept = root / "cache", root / "kept"
    env = {k: v for k, v in os.environ.items() if k != "TORTOISE_VOICES_DIR"}
    proc = subprocess.run([sys.executable, "-m", "tortoise.voices", "fetch", "--cache-dir", str(cache),
                           "--keep-archive", str(kept)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    from tortoise.utils.original_voices import release
    return SimpleNamespace(cache=cache, originals=cache / "original", archive=kept / release().filename,
                           stdout=proc.stdout, stderr=proc.stderr)


# ---------------------------------------------------------------------------------------------------------------
# models for the exported-graph tests (test_export_backends, test_backend_pipeline)
# ---------------------------------------------------------------------------------------------------------------
# Two upsampling stages of 16 (still hop 256), fewer residual branches: the same blocks, less graph to trace.
SMALL_CONFIGS = {
    "vocoder": dict(TINY_CONFIGS["vocoder"], dilations=[1, 3], strides=[16, 16]),
    "hifidecoder": dict(TINY_CONFIGS["hifidecoder"], resblock_kernel_sizes=[3, 7],
                        resblock_dilation_sizes=[[1, 3, 5]] * 2, upsample_factors=[16, 16],
                        upsample_kernel_sizes=[32, 32]),
    "diffusion": dict(TINY_CONFIGS["diffusion"], num_layers=1),
}
BIGVGAN_SMALL = dict(upsample_initial_channel=32, upsample_rates=[16, 16], upsample_kernel_sizes=[32, 32],
                     resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])


def write_bigvgan(models_dir, seed=0):
    """A tiny BigVGAN directory in NVIDIA's layout (weight-normed generator) under its hub repository's name."""
    from tortoise.models.bigvgan import BigVGAN
    from tortoise.models.vocoder import BIGVGAN_BASE_24KHZ_100BAND
    config = dict(BIGVGAN_BASE_24KHZ_100BAND, **BIGVGAN_SMALL)
    torch.manual_seed(seed)
    net = BigVGAN(config)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    directory = models_dir / "bigvgan_base_24khz_100band"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    torch.save({"generator": net.released_state_dict()}, directory / "bigvgan_generator.pt")
    return directory


@pytest.fixture(scope="session")
def export_models(tmp_path_factory):
    """Tiny models with graph-friendly vocoders and diffusion trunk (and a BigVGAN); their graphs are cached in the
    default place, ``<dir>/exported``, so every test that needs a graph exports it once per session."""
    from tortoise.utils.make_test_models import write_models
    out = tmp_path_factory.mktemp("export_models")
    write_models(out, size="tiny", seed=0, configs={**TINY_CONFIGS, **SMALL_CONFIGS})
    write_bigvgan(out)
    return out


@pytest.fixture(autouse=True)
def _export_cache_beside_the_models(monkeypatch):
    """Graphs go to the default cache beside the test's checkpoints, never to a developer's $TORTOISE_EXPORT_DIR."""
    monkeypatch.delenv("TORTOISE_EXPORT_DIR", raising=False)
