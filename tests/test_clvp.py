"""CLVP against the original tortoise-tts 3.0.0 (fixtures from tests/parity/make_clvp_fixtures.py) and key layout."""
import json
from pathlib import Path

import pytest
import torch

from tortoise.models.clvp import CLVP
from tortoise.utils.checkpoints import RELEASED_CONFIGS

FIXTURES = Path(__file__).parent / "parity" / "fixtures" / "clvp"
# fp32 on CPU; SDPA and the fused q/k/v matmul reorder sums, so allow a few ulps of the scores' scale (~3).
ATOL = 1e-5


def load_fixture(name):
    return torch.load(FIXTURES / name, weights_only=True)


def released_keys(name):
    with open(FIXTURES / "released_keys.json") as f:
        return [(k, tuple(shape)) for k, shape in json.load(f)[name]]


def ours_keys(cls, cfg):
    with torch.device("meta"):
        model = cls(**cfg)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def assert_close(actual, expected, atol=ATOL):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol * scale)


def test_released_state_dict_keys_match_original():
    assert ours_keys(CLVP, RELEASED_CONFIGS["clvp"]) == released_keys("clvp")


@pytest.fixture(scope="module")
def cases():
    return load_fixture("clvp.pt")


@pytest.mark.parametrize("variant", ["xformers", "plain"])
def test_similarities_match_original(cases, variant):
    case = next(c for c in cases if c["variant"] == variant)
    model = CLVP(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        for text, speech, expected in zip(case["texts"], case["speech"], case["sims"]):
            assert_close(model(text, speech), expected)
        assert_close(model(case["texts"][0], case["speech"][0], return_loss=True), case["loss"])


@pytest.mark.parametrize("variant", ["xformers", "plain"])
def test_score_encodes_text_once_and_matches_forward(cases, variant):
    case = next(c for c in cases if c["variant"] == variant)
    model = CLVP(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    text, speech, expected = case["texts"][0], case["speech"][0], case["sims"][0]
    calls = []
    model.text_transformer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    scores = model.score(text[:1], speech)
    assert calls == [1]  # the text went through its encoder once, for one row
    assert_close(scores, expected)
    assert_close(model.score(text[0], speech), expected)  # a 1-D text is accepted too


def test_forward_with_distinct_texts_does_not_share_text_encoding(cases):
    case = next(c for c in cases if c["variant"] == "xformers")
    model = CLVP(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    text, speech = case["texts"][1], case["speech"][1]
    with torch.no_grad():
        together = model(text, speech)
        apart = torch.cat([model(text[i:i + 1], speech[i:i + 1]) for i in range(text.shape[0])])
    assert_close(together, apart)
    assert not torch.allclose(together[0], together[1])


def test_score_rejects_several_texts(cases):
    model = CLVP(**cases[0]["config"]).eval()
    with pytest.raises(ValueError, match=r"one text of shape \(1, T\)"):
        model.score(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_training_masks_change_the_result_and_keep_gradients(cases):
    torch.manual_seed(0)
    cfg = dict(cases[0]["config"], text_mask_percentage=0.5, voice_mask_percentage=0.5)
    model = CLVP(**cfg)
    model.load_state_dict(cases[0]["state_dict"], strict=True)
    text, speech = cases[0]["texts"][1], cases[0]["speech"][1]
    loss = model.train()(text, speech, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.speech_emb.weight.grad is not None
    with torch.no_grad():
        assert not torch.allclose(model(text, speech), model.eval()(text, speech))


def test_chunked_and_grad_enabled_paths_equal_the_plain_forward(cases, monkeypatch):
    import tortoise.models.clvp as clvp_module
    case = next(c for c in cases if c["variant"] == "xformers")
    model = CLVP(**case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    text, speech, expected = case["texts"][0], case["speech"][0], case["sims"][0]
    monkeypatch.setattr(clvp_module, "CPU_CHUNK_TOKENS", speech.shape[1])  # one candidate per chunk
    assert_close(model.score(text[:1], speech), expected)
    assert_close(model(text, speech).detach(), expected)  # grad enabled: the out-of-place rotary / residual path
