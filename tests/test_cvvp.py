"""CVVP against the original tortoise-tts 3.0.0 (fixtures from tests/parity/make_clvp_fixtures.py) and key layout."""
import pytest
import torch

from test_clvp import assert_close, load_fixture, ours_keys, released_keys
from tortoise.models.cvvp import CVVP
from tortoise.utils.checkpoints import RELEASED_CONFIGS


def test_released_state_dict_keys_match_original():
    assert ours_keys(CVVP, RELEASED_CONFIGS["cvvp"]) == released_keys("cvvp")


@pytest.fixture(scope="module")
def cases():
    return load_fixture("cvvp.pt")


def build(case):
    model = CVVP(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    return model


@pytest.mark.parametrize("variant", ["codes", "mel"])
def test_similarities_and_loss_match_original(cases, variant):
    case = next(c for c in cases if c["variant"] == variant)
    model = build(case)
    with torch.no_grad():
        assert_close(model(case["mel_cond"], case["mel_input"]), case["sims"])
        assert_close(model(case["mel_cond"], case["mel_input"], return_loss=True), case["loss"])


def test_score_with_one_conditioning_mel_matches_repeated_forward(cases):
    case = next(c for c in cases if c["variant"] == "codes")
    model = build(case)
    cond = case["mel_cond"][:1]
    with torch.no_grad():
        expected = model(cond.repeat(3, 1, 1), case["mel_input"])
    assert_close(model.score(cond, case["mel_input"]), expected)
    with pytest.raises(ValueError, match="one conditioning mel"):
        model.score(case["mel_cond"], case["mel_input"])
