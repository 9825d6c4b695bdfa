"""The sampling engine on the tiny model: batched == one by one, seeded, stop reasons, log-probs."""

import pytest
import torch

from rlhf.core.chat import render_prompt
from rlhf.core.errors import ConfigError
from rlhf.core.models import build_tiny_model
from rlhf.core.sampling import SamplingConfig, TransformersBackend, _choose

PROMPTS = [[{"role": "user", "content": "hello " * i}] for i in range(1, 7)]


@pytest.fixture(scope="module")
def backend():
    model, tok = build_tiny_model(seed=0)
    return TransformersBackend(model, tok, "fp32")


def test_greedy_batched_equals_greedy_one_by_one(backend):
    cfg = SamplingConfig(temperature=0, max_new_tokens=12, batch_prompts=6)
    batched = backend.sample(PROMPTS, 1, cfg)
    for i, prompt in enumerate(PROMPTS):
        alone = backend.sample([prompt], 1, cfg).iloc[0]
        assert batched.token_ids[i] == alone.token_ids


def test_greedy_matches_transformers_generate(backend):
    ids = render_prompt(backend.tokenizer, PROMPTS[2])[None]
    out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                 pad_token_id=backend.tokenizer.pad_token_id)
    ours = backend.sample([PROMPTS[2]], 1, SamplingConfig(temperature=0, max_new_tokens=8)).iloc[0]
    assert ours.token_ids == out[0, ids.shape[1]:].tolist()[:len(ours.token_ids)]


def test_same_seed_same_samples_other_seed_other_samples(backend):
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=7)
    a, b = backend.sample(PROMPTS, 3, cfg), backend.sample(PROMPTS, 3, cfg)
    assert list(a.token_ids) == list(b.token_ids)
    c = backend.sample(PROMPTS, 3, SamplingConfig(temperature=1.0, max_new_tokens=10, seed=8))
    assert list(a.token_ids) != list(c.token_ids)
    assert sorted(zip(a.prompt_index, a.sample_index)) == [(p, s) for p in range(6) for s in range(3)]


def assert_logprobs_match_a_separate_forward_pass(backend, samples, atol=1e-4):
    for row in samples.itertuples():
        prompt = render_prompt(backend.tokenizer, PROMPTS[row.prompt_index])
        full = torch.cat([prompt, torch.tensor(row.token_ids)])
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(full[None]).logits[0, :-1].float(), -1)
        expected = logp[len(prompt) - 1:].gather(-1, torch.tensor(row.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(expected, torch.tensor(row.logprobs), atol=atol)


def test_logprobs_match_a_separate_forward_pass(backend):
    samples = backend.sample(PROMPTS, 2, SamplingConfig(temperature=1.0, max_new_tokens=10, seed=1))
    assert_logprobs_match_a_separate_forward_pass(backend, samples)


def test_long_answers_outgrow_the_cache_room_and_retire_rows_on_the_way(backend):
    # 150 new tokens: the in-place KV cache moves to bigger buffers twice (room 64), while rows stop
    # and leave the batch along the way; every log-prob must still be the model's for the prefix
    samples = backend.sample(PROMPTS, 4, SamplingConfig(temperature=1.0, max_new_tokens=150, seed=3))
    lengths = sorted(samples.n_tokens)
    assert lengths[0] < 64 and lengths[-1] == 150 and (samples.stop_reason == "stop").sum() >= 4, lengths
    assert_logprobs_match_a_separate_forward_pass(backend, samples)


def test_stop_reasons():
    model, tok = build_tiny_model(seed=0)
    end = tok.eos_token_id
    with torch.no_grad():  # make the end-of-turn token overwhelmingly likely after one step
        model.lm_head.weight[end] += 50 * model.lm_head.weight.std()
    # With the end token boosted, greedy stops at once; a high temperature keeps some running to length.
    stops = TransformersBackend(model, tok, "fp32").sample(PROMPTS, 1, SamplingConfig(temperature=0, max_new_tokens=5))
    assert set(stops.stop_reason) == {"stop"} and set(stops.n_tokens) == {1} and set(stops.text) == {""}
    model2, tok2 = build_tiny_model(seed=0)
    longs = TransformersBackend(model2, tok2, "fp32").sample(PROMPTS, 2,
                                                             SamplingConfig(temperature=0, max_new_tokens=5))
    for row in longs.itertuples():
        assert (row.stop_reason == "stop") == (row.token_ids[-1] == tok2.eos_token_id)
        assert row.stop_reason == "stop" or row.n_tokens == 5


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(_choose(logits, SamplingConfig(top_p=0.7), gen)[0]) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 >= 0.7: tokens 2 and 3 never drawn
    draws = {int(_choose(logits, SamplingConfig(top_p=0.4), gen)[0]) for _ in range(50)}
    assert draws == {0}


def test_bad_sampling_config_names_the_key(backend):
    with pytest.raises(ConfigError, match="sampling.top_p"):
        backend.sample(PROMPTS, 1, SamplingConfig(top_p=0))


def test_sampling_draws_follow_the_distribution():
    # 40,000 draws at once: frequencies within 4 standard errors of the probabilities; zero weight never drawn
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = torch.log(probs).expand(40_000, 4)
    draws, logprobs = _choose(logits, SamplingConfig(temperature=1.0), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[1] == 0
    assert torch.all((freq - probs).abs() <= 4 * torch.sqrt(probs * (1 - probs) / len(draws)) + 1e-9), freq
    # temperature 2 flattens: p ** 0.5, renormalised
    flat = probs.sqrt() / probs.sqrt().sum()
    draws, logprobs = _choose(logits, SamplingConfig(temperature=2.0), torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.all((freq - flat).abs() <= 4 * torch.sqrt(flat * (1 - flat) / len(draws)) + 1e-9), freq
    # the log-probs are the model's own (temperature 1), whatever the sampling temperature
    assert torch.allclose(logprobs, torch.log(probs)[draws])


def test_draws_across_vocabulary_blocks_follow_the_distribution():
    # a vocabulary of 1,000 (not a multiple of the 256-token block), the mass spread over four blocks,
    # in the first and last tokens of blocks where a rounding slip would pick a zero-weight neighbour
    probs = torch.zeros(1000)
    probs[[0, 255, 256, 511, 700, 999]] = torch.tensor([0.05, 0.15, 0.2, 0.1, 0.3, 0.2])
    logits = torch.log(probs).expand(40_000, 1000)
    draws, logprobs = _choose(logits, SamplingConfig(temperature=1.0), torch.Generator().manual_seed(2))
    freq = torch.bincount(draws, minlength=1000).float() / len(draws)
    assert freq[probs == 0].sum() == 0
    assert torch.all((freq - probs).abs() <= 4 * torch.sqrt(probs * (1 - probs) / len(draws)) + 1e-9)
    assert torch.allclose(logprobs, torch.log(probs)[draws])
    greedy, greedy_logprobs = _choose(logits[:3], SamplingConfig(temperature=0), torch.Generator())
    assert greedy.tolist() == [700] * 3 and torch.allclose(greedy_logprobs, torch.log(torch.tensor(0.3)))


def test_bf16_engine_samples_with_a_bf16_copy_and_leaves_the_model_alone():
    model, tok = build_tiny_model(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = TransformersBackend(model, tok, "bf16").sample(PROMPTS[:2], 2, SamplingConfig(max_new_tokens=4, seed=0))
    assert len(out) == 4 and all(0 < n <= 4 for n in out.n_tokens)
    assert next(model.parameters()).dtype == torch.float32  # the trained weights stay fp32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("tied", [False, True])
def test_cast_copy_is_deepcopy_then_to_without_the_full_precision_copy(tied):
    """The engine's bf16 decoding copy: the same module as ``deepcopy(model).to(bf16)`` (weights, buffers,
    a tied embedding still tied, the same logits), and the model itself is left as it was."""
    import copy

    from rlhf.core.sampling import cast_copy

    model, _ = build_tiny_model(seed=0)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours, reference = cast_copy(model, torch.bfloat16), copy.deepcopy(model).to(torch.bfloat16)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert ours.state_dict()[key].dtype == value.dtype and torch.equal(ours.state_dict()[key], value), key
    for a, b in zip(ours.buffers(), reference.buffers(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(ours.parameters(), model.parameters()))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(ours(ids).logits, reference(ids).logits)
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in model.state_dict().items())
