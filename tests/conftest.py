"""Shared test fixtures: tiny random-weight models in the released checkpoint format, parity fixture loading, the
original Tortoise voices fetched once per session."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

PARITY_FIXTURES = Path(__file__).parent / "parity" / "fixtures"


def load_parity_fixture(area, name):
    """A fixture written by ``tests/parity/make_<area>_fixtures.py`` in the original implementation's environment."""
    return torch.load(PARITY_FIXTURES / area / name, map_location="cpu", weights_only=True)


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
    from tortoise.voices.original import release
    return SimpleNamespace(cache=cache, originals=cache / "original", archive=kept / release().filename,
                           stdout=proc.stdout, stderr=proc.stderr)
