import pytest
import torch

from restpg_dspy.serving.counter_noise import counter_uniforms
from restpg_dspy.serving.generation import SamplingParams, generate
from restpg_dspy.serving.kv_cache import reserved_cache
from restpg_dspy.serving.models import load_model
from restpg_dspy.serving.sampling import choose_tokens, control_repetition


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    # No stop token: the random tiny model's greedy path brushes its EOS token, and which side of that near-tie
    # wins depends on the CPU's kernels, so a length would differ between machines (test_eos_finishes_with_stop
    # names its own stop token).
    eos = set()
    prompt = loaded.tokenizer("Hello there, how are you?")["input_ids"]
    return loaded, eos, prompt


def run(tiny, params, prompts=None):
    loaded, eos, prompt = tiny
    prompts = prompts or [prompt] * len(params)
    return generate(loaded.model, loaded.tokenizer, prompts, params, eos)


def test_greedy_is_deterministic_and_respects_max_tokens(tiny):
    first, second = run(tiny, [SamplingParams(max_tokens=7)] * 2)
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) == 7 and first.finish_reason == "length"


def test_seeded_sampling_repeats_and_different_seeds_differ(tiny):
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=s) for s in (1, 1, 2)]
    a, b, c = run(tiny, params)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_unseeded_sampling_draws_fresh_samples(tiny):
    outputs = run(tiny, [SamplingParams(max_tokens=12, temperature=1.0)] * 4)
    assert len({tuple(o.token_ids) for o in outputs}) > 1


def test_top_k_one_is_greedy(tiny):
    greedy, sampled = run(tiny, [SamplingParams(max_tokens=8), SamplingParams(max_tokens=8, temperature=1.5, top_k=1)])
    assert greedy.token_ids == sampled.token_ids


def test_tiny_top_p_keeps_only_the_most_likely_token(tiny):
    nucleus = SamplingParams(max_tokens=8, temperature=2.0, top_p=1e-6)
    greedy, sampled = run(tiny, [SamplingParams(max_tokens=8), nucleus])
    assert greedy.token_ids == sampled.token_ids


def test_rows_of_different_lengths_match_their_solo_runs(tiny):
    loaded, _eos, prompt = tiny
    short = loaded.tokenizer("Hi")["input_ids"]
    batched = run(tiny, [SamplingParams(max_tokens=6), SamplingParams(max_tokens=3)], [prompt, short])
    alone_long = run(tiny, [SamplingParams(max_tokens=6)], [prompt])[0]
    alone_short = run(tiny, [SamplingParams(max_tokens=3)], [short])[0]
    assert batched[0].token_ids == alone_long.token_ids  # left padding is masked out
    assert batched[1].token_ids == alone_short.token_ids
    assert [b.prompt_tokens for b in batched] == [len(prompt), len(short)]


def test_samples_of_one_prompt_share_its_prefill_and_match_solo_runs(tiny):
    loaded, _eos, prompt = tiny
    short = loaded.tokenizer("Hi")["input_ids"]
    prefill_rows = []
    hook = loaded.model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: prefill_rows.append(args[0].shape[0])
    )
    try:
        params = [SamplingParams(max_tokens=8, temperature=1.0, seed=s) for s in (1, 2, 3)] + [SamplingParams(5)]
        batched = run(tiny, params, [prompt, short, prompt, prompt])
    finally:
        hook.remove()
    assert prefill_rows[0] == 2  # two distinct prompts for four rows
    for row, (p, text) in enumerate(zip(params, [prompt, short, prompt, prompt], strict=True)):
        assert batched[row].token_ids == run(tiny, [p], [text])[0].token_ids
    assert batched[0].token_ids != batched[2].token_ids  # the copies of one prefill still sample independently


def test_stop_string_cuts_text_and_finishes_with_stop(tiny):
    reference = run(tiny, [SamplingParams(max_tokens=10)])[0]
    loaded = tiny[0]
    stop = loaded.tokenizer.decode(reference.token_ids[3:5], skip_special_tokens=True)
    assert stop.strip()
    stopped = run(tiny, [SamplingParams(max_tokens=10, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert reference.text.startswith(stopped.text)


def test_eos_finishes_with_stop(tiny):
    loaded, _eos, prompt = tiny
    first = run(tiny, [SamplingParams(max_tokens=1)])[0].token_ids[0]
    stopped = generate(loaded.model, loaded.tokenizer, [prompt], [SamplingParams(max_tokens=5)], {first})[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == []


def test_logprobs_are_reported_per_token(tiny):
    out = run(tiny, [SamplingParams(max_tokens=4, logprobs=3)])[0]
    assert len(out.scores) == 4
    for token, score in zip(out.token_ids, out.scores, strict=True):
        assert score.token_id == token and score.logprob <= 0
        assert len(score.top) == 3 and score.top[0][1] >= score.logprob - 1e-6  # greedy: chosen is the best


def test_mismatched_params_are_refused(tiny):
    with pytest.raises(ValueError, match="one SamplingParams per prompt"):
        run(tiny, [SamplingParams(max_tokens=1)], [[1, 2], [3]])


def test_the_reserved_kv_cache_writes_the_dynamic_caches_tokens_and_logprobs(tiny, monkeypatch):
    from restpg_dspy.serving import kv_cache

    writes = []
    update = kv_cache._ReservedLayer.update
    monkeypatch.setattr(
        kv_cache._ReservedLayer, "update", lambda self, *a, **k: writes.append(1) or update(self, *a, **k)
    )
    loaded, eos, prompt = tiny
    short = loaded.tokenizer("Hi")["input_ids"]
    # Shared prefills, prompts of two lengths, greedy and seeded rows, budgets that end rows at different steps.
    prompts = [prompt, short, prompt, prompt, short]
    params = [
        SamplingParams(max_tokens=9, logprobs=2),
        SamplingParams(max_tokens=4, temperature=1.0, seed=3, logprobs=2),
        SamplingParams(max_tokens=12, temperature=0.8, seed=5, logprobs=2),
        SamplingParams(max_tokens=2, temperature=1.2, seed=7, logprobs=2, no_repeat_ngram_size=2),
        SamplingParams(max_tokens=12, logprobs=2, repetition_penalty=1.3),
    ]
    reserved, dynamic = (
        generate(loaded.model, loaded.tokenizer, prompts, params, eos, kv_cache=cache)
        for cache in ("reserved", "dynamic")
    )
    assert len(writes) == 2 * 12  # the reserved run wrote through its layers (2) at each of its 12 forward passes
    for a, b in zip(reserved, dynamic, strict=True):
        assert (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
        assert [(s.token_id, s.logprob, s.top) for s in a.scores] == [(s.token_id, s.logprob, s.top) for s in b.scores]
    assert [len(c.token_ids) for c in reserved] == [9, 4, 12, 2, 12]
    with pytest.raises(ValueError, match="kv_cache must be one of"):
        generate(loaded.model, loaded.tokenizer, [prompt], params[:1], eos, kv_cache="static")


@pytest.mark.parametrize("kv_cache", ["reserved", "dynamic"])
def test_rows_joining_a_batch_between_steps_write_what_they_write_alone(tiny, kv_cache):
    from restpg_dspy.serving.decoding import DecodingBatch

    loaded, eos, prompt = tiny
    short = loaded.tokenizer("Hi")["input_ids"]
    long = loaded.tokenizer("A much longer request, which runs on for more words than the others do. " * 3)["input_ids"]
    first = [SamplingParams(max_tokens=10), SamplingParams(max_tokens=6, temperature=1.0, seed=4, logprobs=1)]
    later = [SamplingParams(max_tokens=8, temperature=0.9, seed=9), SamplingParams(max_tokens=5)]
    batch = DecodingBatch(loaded.model, loaded.tokenizer, eos, kv_cache=kv_cache)
    ids = batch.add([prompt, short], first)
    done = {}
    for _ in range(3):
        done.update(batch.step())
    ids += batch.add([short], later[:1])  # shorter than the batch's cache: padded on the left
    done.update(batch.step())
    ids += batch.add([long], later[1:])  # longer than the batch's cache: the batch is padded on the left
    while len(batch):
        done.update(batch.step())
    alone = [run(tiny, [p], [text])[0] for p, text in zip(first + later, [prompt, short, short, long], strict=True)]
    for row, solo in zip(ids, alone, strict=True):
        assert done[row].token_ids == solo.token_ids and done[row].finish_reason == solo.finish_reason
    assert [s.logprob for s in done[ids[1]].scores] == pytest.approx([s.logprob for s in alone[1].scores], abs=1e-5)
    assert batch.row_steps == sum(len(c.token_ids) for c in done.values())  # no EOS: each row decodes its budget


def test_only_models_whose_layers_all_attend_in_full_get_a_reserved_cache():
    from transformers import LlamaConfig, MistralConfig

    shape = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    assert reserved_cache(LlamaConfig(**shape), reserve=4) is not None
    assert reserved_cache(MistralConfig(sliding_window=8, **shape), reserve=4) is None  # transformers' own layers


def _splitmix(x):
    mask = (1 << 64) - 1
    x &= mask
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_counter_noise_is_splitmix64_of_seed_step_and_token():
    seeds, steps = [0, 1, 12345678901234, 2**62 + 7], [0, 5, 17, 3]
    u = counter_uniforms(torch.tensor(seeds), torch.tensor(steps), 50)
    golden = 0x9E3779B97F4A7C15
    for row, (seed, step) in enumerate(zip(seeds, steps, strict=True)):
        for token in (0, 1, 49):
            bits = _splitmix(_splitmix(seed * golden + step) + token * golden) >> 41
            assert u[row, token].item() == (bits + 0.5) / 2**23


def test_batch_sampling_without_generators_is_per_row_and_has_the_right_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = 20000
    params = [SamplingParams(max_tokens=1, temperature=1.0)] * draws
    picks = choose_tokens(probs.log().repeat(draws, 1), params, None, list(range(draws)), [0] * draws)
    frequencies = torch.bincount(torch.tensor(picks), minlength=4).float() / draws
    assert torch.allclose(frequencies, probs, atol=0.015), frequencies
    # A row's pick depends on its own seed and step, not on the rows beside it or their settings.
    mixed = [SamplingParams(1, temperature=0.7, top_p=0.9), SamplingParams(1), SamplingParams(1, temperature=1.3)]
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    together = choose_tokens(logits, mixed, None, [11, 12, 13], [4, 0, 9])
    alone = [choose_tokens(logits[i : i + 1], [mixed[i]], None, [11 + i], [[4, 0, 9][i]])[0] for i in range(3)]
    assert together == alone and together[1] == int(logits[1].argmax())


@pytest.mark.parametrize("with_generators", [False, True])
def test_top_k_one_picks_the_greedy_token_among_tied_logits(with_generators):
    logits = torch.zeros(1, 16)
    logits[0, [5, 9, 12]] = 3.0  # a three-way tie at the top, as bfloat16 logits often have
    params = [SamplingParams(max_tokens=1, temperature=1.5, top_k=1, seed=seed) for seed in range(64)]
    generators = [torch.Generator().manual_seed(p.seed) for p in params] if with_generators else None
    picks = choose_tokens(logits.expand(64, -1), params, generators, list(range(64)), [0] * 64)
    assert set(picks) == {int(logits.argmax())} == {5}


def test_top_k_keeps_exactly_k_tokens_whatever_the_ties():
    logits = torch.zeros(1, 16)
    logits[0, [2, 7, 11]] = 1.0
    params = [SamplingParams(max_tokens=1, temperature=1.0, top_k=2, seed=seed) for seed in range(256)]
    picks = choose_tokens(logits.expand(256, -1), params, None, list(range(256)), [0] * 256)
    assert set(picks) == {2, 7}


# --- repetition controls ----------------------------------------------------------------------------------------


def repeated_ngrams(tokens, size):
    grams = [tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
    return len(grams) - len(set(grams))


def test_no_repeat_ngram_size_leaves_no_ngram_twice_in_the_completion(tiny):
    sizes = (1, 2, 3)
    loose, *controlled = run(
        tiny, [SamplingParams(max_tokens=200), *(SamplingParams(max_tokens=200, no_repeat_ngram_size=n) for n in sizes)]
    )
    assert repeated_ngrams(loose.token_ids, 1) > 0  # 200 greedy tokens of the random tiny model repeat some token
    for size, completion in zip(sizes, controlled, strict=True):
        assert repeated_ngrams(completion.token_ids, size) == 0 and len(completion.token_ids) == 200


def test_controls_off_by_default_and_each_repeats_less_than_greedy(tiny):
    (plain,) = run(tiny, [SamplingParams(max_tokens=200)])
    assert not SamplingParams(max_tokens=1).controls_repetition
    for setting in ({"repetition_penalty": 2.0}, {"frequency_penalty": 5.0}, {"presence_penalty": 5.0}):
        (controlled,) = run(tiny, [SamplingParams(max_tokens=200, **setting)])
        assert SamplingParams(max_tokens=1, **setting).controls_repetition
        assert repeated_ngrams(controlled.token_ids, 1) < repeated_ngrams(plain.token_ids, 1), setting


def test_a_controlled_row_leaves_the_other_rows_of_its_batch_alone(tiny):
    (alone,) = run(tiny, [SamplingParams(max_tokens=200)])
    batch = run(tiny, [SamplingParams(max_tokens=200, repetition_penalty=2.0), SamplingParams(max_tokens=200)])
    assert batch[1].token_ids == alone.token_ids and batch[0].token_ids != alone.token_ids


def test_repetition_controls_follow_their_definitions():

    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    prompt_and_completion, completion = {0, 1}, [2, 2, 3]
    penalized = control_repetition(
        logits, [SamplingParams(max_tokens=1, repetition_penalty=2.0)], [prompt_and_completion], [completion]
    )
    assert penalized.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # only seen tokens; divided if positive, else multiplied
    counted = control_repetition(
        logits, [SamplingParams(max_tokens=1, frequency_penalty=0.5, presence_penalty=0.25)], [set()], [completion]
    )
    assert counted.tolist() == [[2.0, -2.0, 1.0 - 2 * 0.5 - 0.25, 0.5 - 0.5 - 0.25]]
    banned = control_repetition(logits, [SamplingParams(max_tokens=1, no_repeat_ngram_size=2)], [set()], [[3, 1, 3]])
    assert banned[0, 1] == float("-inf") and torch.isfinite(banned[0, [0, 2, 3]]).all()
    assert logits.tolist() == [[2.0, -2.0, 1.0, 0.5]]  # the model's own logits are left as they were
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        SamplingParams(max_tokens=1, repetition_penalty=0.0)
