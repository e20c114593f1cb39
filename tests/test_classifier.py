"""The Tortoise detector against the original tortoise-tts 3.0.0 (fixtures from tests/parity/make_clvp_fixtures.py)."""
import torch

from test_clvp import assert_close, load_fixture, ours_keys, released_keys
from tortoise.models.classifier import AudioMiniEncoderWithClassifierHead
from tortoise.utils.checkpoints import RELEASED_CONFIGS


def test_released_state_dict_keys_match_original():
    assert ours_keys(AudioMiniEncoderWithClassifierHead, RELEASED_CONFIGS["classifier"]) == released_keys("classifier")


def build(case):
    model = AudioMiniEncoderWithClassifierHead(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    return model


def test_probabilities_match_original():
    case = load_fixture("classifier.pt")[0]
    model = build(case)
    with torch.no_grad():
        assert_close(model(case["clip"]), case["logits"])
    assert_close(model.probabilities(case["clip"]), case["probs"])


def test_training_loss_with_distributed_zero_label_matches_original():
    case = load_fixture("classifier.pt")[1]
    model = build(case)
    with torch.no_grad():
        assert_close(model(case["clip"], case["labels"]), case["loss"])
