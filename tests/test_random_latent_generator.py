"""RandomLatentConverter against the original tortoise-tts 3.0.0 (fixtures from tests/parity/make_clvp_fixtures.py)."""
import torch

from test_clvp import assert_close, load_fixture, ours_keys, released_keys
from tortoise.models.random_latent_generator import RandomLatentConverter, fused_leaky_relu
from tortoise.utils.checkpoints import RELEASED_CONFIGS


def test_released_state_dict_keys_match_original():
    for name in ("rlg_auto", "rlg_diffuser"):
        assert ours_keys(RandomLatentConverter, RELEASED_CONFIGS[name]) == released_keys(name)


def test_random_voice_latents_match_original_for_the_same_seed():
    for case in load_fixture("rlg.pt"):
        model = RandomLatentConverter(**case["config"]).eval()
        model.load_state_dict(case["state_dict"], strict=True)
        for run in case["runs"]:
            torch.manual_seed(run["seed"])
            with torch.no_grad():
                out = model(run["ref"])
            assert out.shape == (run["ref"].shape[0], case["config"]["channels"])
            assert_close(out, run["out"])


def test_fused_leaky_relu_is_scaled_leaky_relu_of_biased_input():
    x = torch.tensor([[-1.0, 2.0], [0.5, -3.0]])
    bias = torch.tensor([0.5, -1.0])
    expected = torch.tensor([[-0.5 * 0.2, 1.0], [1.0, -4.0 * 0.2]]) * 2 ** 0.5
    torch.testing.assert_close(fused_leaky_relu(x, bias), expected)
