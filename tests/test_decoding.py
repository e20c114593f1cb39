"""The decode loop (`tortoise.models.decoding`) on its own: a small scripted decoder stands in for a network, so the
loop's rules (rows and prompts, the position rule, the range check, stop-token freezing, max_new, HF's output
layout) are checked without a model. That UnifiedVoice and the graph backends give the original's codes through it
is checked by the parity and backend tests."""
import pytest
import torch

from tortoise.models import decoding
from tortoise.utils.sampling import SamplingOptions

V, STOP, START = 12, 11, 10


class Scripted(decoding.DecodeLoop):
    """A decoder whose next-token logits say: row r draws token (r + step) % 5, and stops (STOP) at step r + 2."""
    number_mel_codes, start_mel_token, stop_mel_token = V, START, STOP

    def __init__(self, max_mel_tokens=20, mel_positions=40, offset=1):
        self.max_mel_tokens, self.mel_positions, self.position_offset = max_mel_tokens, mel_positions, offset
        self.prompts, self.fed = None, []

    def _logits(self, rows, t):
        out = torch.full((rows, V), -1e4)
        for r in range(rows):
            out[r, STOP if t >= r + 2 else (r + t) % 5] = 0
        return out

    def encode_prompt(self, plan, state):
        self.prompts = plan
        state.prompt_len = 1 + plan.text_inputs.shape[1] + 2 + plan.n_mel
        state.logits, state.latent = self._logits(plan.rows, 0), torch.zeros(plan.rows, 3)

    def feed(self, state, tokens, mel_pos):
        self.fed.append((tokens.clone(), mel_pos, state.prompt_len + state.t))
        return self._logits(tokens.shape[0], state.t + 1), torch.full((tokens.shape[0], 3), float(state.t + 1))


GREEDY = SamplingOptions.from_generate_kwargs(False, .9, do_sample=False)


def test_generate_lays_rows_out_as_hf_and_freezes_stopped_rows():
    dec = Scripted()
    codes = dec.inference_speech(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.long), num_return_sequences=3,
                                 do_sample=False)
    assert dec.prompts.rows == 3 and dec.prompts.row_map.tolist() == [0, 0, 0]
    # row r draws (r + t) % 5 until step r + 2, then the stop token forever; the loop ends when all stopped
    assert codes.tolist() == [[0, 1, STOP, STOP, STOP], [1, 2, 3, STOP, STOP], [2, 3, 4, 0, STOP]]
    # mel positions: the k-th token fed sits at n_mel + k - 1 + offset; cache positions follow the prompt
    assert [m for _, m, _ in dec.fed] == [2, 3, 4, 5]
    assert [c for _, _, c in dec.fed] == [7, 8, 9, 10]


def test_input_tokens_are_tiled_as_the_original_and_come_back_first():
    dec = Scripted(offset=0)
    given = torch.tensor([[3], [4]])
    codes = dec.inference_speech(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.long), input_tokens=given,
                                 num_return_sequences=2, do_sample=False)
    assert dec.prompts.mel_tokens.tolist() == [[START, 3], [START, 4]]
    assert dec.prompts.row_map.tolist() == [0, 0, 1, 1]  # tiled to n rows, each expanded n times
    assert dec.prompts.prompt_ids[:, -2:].tolist() == [[START, 3], [START, 3], [START, 4], [START, 4]]
    assert codes[:, 0].tolist() == [3, 3, 4, 4]
    assert dec.fed[0][1] == 2  # n_mel = 2, first generated token, no offset
    with pytest.raises(ValueError, match="divisible"):
        dec.inference_speech(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.long), input_tokens=given,
                             num_return_sequences=3, do_sample=False)


def test_max_new_bounds_the_draws_and_the_range_check_names_the_fix():
    dec = Scripted()
    state = dec.prefill(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.long), 3, max_generate_length=2)
    assert dec.decode(state, GREEDY).shape == (3, 2) and len(dec.fed) == 1
    with pytest.raises(ValueError, match="exceeds the model's 40 learned positions; lower max_generate_length"):
        dec.prefill(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.long), 1, max_generate_length=40)


def test_tokens_yields_the_latents_that_predicted_each_token_and_callbacks_can_stop():
    dec = Scripted()
    state = dec.prefill(torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.long), 1)
    assert dec.prompts.row_map.tolist() == [0, 1]
    latents = [latent[0, 0].item() for _, latent in dec.tokens(state, GREEDY)]
    assert latents == [0.0, 1.0, 2.0, 3.0]

    def stop(step, tokens):
        if step == 2:
            raise KeyboardInterrupt
    state = dec.prefill(torch.zeros(1, 4), torch.ones(1, 3, dtype=torch.long), 4)
    with pytest.raises(KeyboardInterrupt):
        dec.decode(state, GREEDY, callback=stop)
    assert state.t == 1


@pytest.mark.parametrize("mode, kv_cache, offset", [("original", True, 1), ("original", False, 0),
                                                     ("contiguous", True, 0), ("shifted", False, 1)])
def test_position_rule(mode, kv_cache, offset):
    assert decoding.position_offset(mode, kv_cache) == offset


def test_position_rule_rejects_unknown_modes():
    with pytest.raises(ValueError, match="position_mode must be one of"):
        decoding.position_offset("sideways", True)
