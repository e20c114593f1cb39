"""Shared test fixtures: tiny random-weight models in the released checkpoint format, parity fixture loading."""
from pathlib import Path

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
