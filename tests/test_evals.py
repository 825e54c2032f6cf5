import hashlib
import json
import math
from collections import Counter

import dspy
import pytest
from dspy.lm15 import Message, Response, TextPart, TokenLogprob, TopLogprob, Usage
from rouge_score import rouge_scorer

from restpg_dspy.data import load_longlamp, synthetic
from restpg_dspy.evals import (
    JudgeParseError,
    LLMJudge,
    WeightedMean,
    evaluate,
    loop_rate,
    loops,
    meteor,
    meteor_without_synonyms,
    rouge_1,
    rouge_l,
)
from restpg_dspy.evals.report import markdown_table, plot_scores
from restpg_dspy.experiments import TableConfig, resolve_metrics, run_table
from restpg_dspy.experiments.timings import time_split
from restpg_dspy.optimizers.report import report_compile_run
from restpg_dspy.programs import RAGWriter
from restpg_dspy.retrieval import BM25


def pair(reference, response):
    return dspy.Example(output=reference), dspy.Prediction(response=response)


def test_rouge_matches_rouge_score_on_our_own_pairs():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for reference, response in [("The cats were running home", "a cat runs home"), ("x y z", "q")]:
        expected = scorer.score(reference, response)
        assert rouge_1(*pair(reference, response)) == expected["rouge1"].fmeasure
        assert rouge_l(*pair(reference, response)) == expected["rougeL"].fmeasure


def test_rouge_on_the_longlamp_sample_reproduces_the_published_baseline(shared_sample):
    examples = load_longlamp("abstract_generation", "val", path=shared_sample)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    ours_1, ours_l = [], []
    for example in examples:
        prediction = dspy.Prediction(response=example.reference_prediction)
        expected = scorer.score(example.output, example.reference_prediction)
        ours_1.append(rouge_1(example, prediction))
        ours_l.append(rouge_l(example, prediction))
        assert ours_1[-1] == expected["rouge1"].fmeasure and ours_l[-1] == expected["rougeL"].fmeasure
    assert round(sum(ours_1) / len(ours_1), 3) == 0.431 and round(sum(ours_l) / len(ours_l), 3) == 0.244


def test_meteor_uses_wordnet_synonyms():
    # nltk stems unmatched words before the WordNet lookup, so the pair must survive stemming (quick/fast does).
    example, prediction = pair("the fast dog runs home", "the quick dog runs home")
    assert meteor(example, prediction) > 0.99 > meteor_without_synonyms(example, prediction)


def test_meteor_without_wordnet_is_never_reported_as_meteor(monkeypatch):
    from restpg_dspy.evals import wordnet

    monkeypatch.setattr(wordnet, "load", lambda: None)
    with pytest.raises(RuntimeError, match="METEOR needs WordNet"):
        meteor(*pair("a", "a"))
    assert [m.__name__ for m in resolve_metrics(["rouge_l", "meteor"])] == ["rouge_l", "meteor_without_synonyms"]


def test_a_text_loops_when_a_word_six_gram_comes_back_a_third_time():
    clause = "the proposed method improves the accuracy of"
    assert not loops(f"{clause} x. {clause} y.")  # twice: a repeated phrase, not a loop
    assert loops(f"{clause} x. {clause} y. {clause}")
    assert loops("The Proposed method, improves; the proposed METHOD improves. " * 2)  # case and punctuation aside
    # Four-word terms repeated in technical writing are not loops.
    term = "grapheme to phoneme conversion"
    assert not loops(f"{term} is hard. We improve {term} with data. Our {term} model beats {term} baselines.")
    assert not loops("") and not loops("one two three four five six")
    assert loop_rate(*pair("ref", f"{clause} x {clause} y {clause}")) == 1.0
    assert loop_rate(*pair("ref", clause)) == 0.0
    with pytest.raises(ValueError, match="no string 'response'"):
        loop_rate(dspy.Example(output="ref"), dspy.Prediction(answer="x"))


def test_real_abstracts_rarely_loop(shared_sample):
    records = [json.loads(line) for line in shared_sample.read_text().splitlines()]
    assert sum(loops(r["output"]) for r in records) <= 2  # human writing: the definition's false alarms are rare


def test_metrics_refuse_a_prediction_without_a_response():
    with pytest.raises(ValueError, match="no string 'response'"):
        rouge_l(dspy.Example(output="x"), dspy.Prediction(answer="x"))


class ScriptedJudge:
    """A judge engine answering a fixed text with fixed log-probabilities."""

    def __init__(self, text, logprobs=None):
        self.text, self.logprobs = text, logprobs

    def complete(self, request):
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(self.text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
            logprobs=self.logprobs,
        )

    def close(self):
        pass


def token(text, logprob, top=()):
    return TokenLogprob(token=text, logprob=logprob, top=tuple(TopLogprob(t, lp) for t, lp in top))


def judge_of(engine):
    return LLMJudge(dspy.LM("scripted/judge", engine=engine, cache=False))


def test_judge_takes_the_most_probable_score_from_logprobs():
    example, prediction = pair("ref", "resp")
    sampled_seven = [token("7", math.log(0.3), [("8", math.log(0.6)), ("7", math.log(0.3))])]
    judge = judge_of(ScriptedJudge("7", sampled_seven))
    assert judge(example, prediction) == 0.8  # "8" was more probable than the sampled "7"
    ten = [
        token("1", math.log(0.7), [("1", math.log(0.7)), ("9", math.log(0.2))]),
        token("0", math.log(0.9), [("0", math.log(0.9))]),
    ]
    assert judge_of(ScriptedJudge("10", ten))(example, prediction) == 1.0
    assert judge.stats["scored_by_logprobs"] == 1


def test_judge_splits_ten_only_with_the_distribution_after_one():
    example, prediction = pair("ref", "resp")
    # A sampled "8": the "0" that follows is the distribution after "8", which says nothing about "10".
    eighty = [
        token("8", math.log(0.2), [("1", math.log(0.5)), ("8", math.log(0.2)), ("9", math.log(0.1))]),
        token("0", math.log(0.9), [("0", math.log(0.9))]),
    ]
    judge = judge_of(ScriptedJudge("8", eighty))
    assert judge(example, prediction) == 0.8  # "1" or "10" cannot be told apart: the written answer decides
    assert judge.stats["scored_by_text"] == 1
    nine = [
        token("8", math.log(0.2), [("9", math.log(0.5)), ("1", math.log(0.25)), ("8", math.log(0.2))]),
        token("0", math.log(0.9), [("0", math.log(0.9))]),
    ]
    assert judge_of(ScriptedJudge("8", nine))(example, prediction) == 0.9
    one = [
        token("1", math.log(0.6), [("1", math.log(0.6)), ("9", math.log(0.3))]),
        token("<eos>", math.log(0.8), [("<eos>", math.log(0.8)), ("0", math.log(0.2))]),
    ]
    assert judge_of(ScriptedJudge("1", one))(example, prediction) == 0.1  # 0.48 for "1" beats 0.3 and 0.12


def test_judges_differ_in_identity_by_model_rubric_and_scoring():
    from restpg_dspy.evals.metrics import metric_identity, metric_key

    base = LLMJudge(dspy.LM("openai/judge-a", cache=False))
    variants = [
        LLMJudge(dspy.LM("openai/judge-b", cache=False)),
        LLMJudge(dspy.LM("openai/judge-a", cache=False, temperature=0.5)),
        LLMJudge(dspy.LM("openai/judge-a", cache=False), rubric="Grade strictly."),
        LLMJudge(dspy.LM("openai/judge-a", cache=False), use_logprobs=False),
    ]
    keys = {metric_key(j) for j in [base, *variants]}
    assert len(keys) == 5
    assert metric_key(LLMJudge(dspy.LM("openai/judge-a", cache=False))) == metric_key(base)
    assert metric_identity(base)["lm"]["model"] == "openai/judge-a"


def test_judge_parses_text_and_counts_unparseable_answers():
    example, prediction = pair("ref", "resp")
    assert judge_of(ScriptedJudge("Score: 6/10"))(example, prediction) == 0.6
    judge = judge_of(ScriptedJudge("It is quite good."))
    with pytest.raises(JudgeParseError):
        judge(example, prediction)
    assert judge.stats["unparseable"] == 1


@pytest.fixture
def rag(tiny_lm):
    program = RAGWriter(retriever=BM25(k=2))
    program.set_lm(tiny_lm.copy(max_tokens=6))
    return program


def test_an_evaluation_reports_the_share_of_predictions_cut_off_by_their_budget(rag, tiny_lm, tmp_path):
    testset = synthetic("test", seed=0, users=3, requests_per_user=1)
    cut = evaluate(rag, testset, [rouge_l], cache_dir=tmp_path, progress=False)  # 6 tokens: every answer is cut
    assert [row["truncated"] for row in cut.rows] == [True] * 3 and cut.summary()["truncation_rate"]["mean"] == 1.0
    cached = evaluate(rag, testset, [rouge_l], cache_dir=tmp_path, progress=False)
    assert cached.cached_predictions == 3 and cached.summary()["truncation_rate"] == cut.summary()["truncation_rate"]
    roomy = rag.deepcopy()
    roomy.set_lm(tiny_lm.copy(max_tokens=50, stop=list("aeiou ")))  # stopped by a stop string before the budget
    stopped = evaluate(roomy, testset, [rouge_l], cache_dir=tmp_path, progress=False)
    assert [row["truncated"] for row in stopped.rows] == [False] * 3
    assert stopped.summary()["truncation_rate"]["mean"] == 0.0


def test_second_identical_run_reads_everything_from_disk(rag, tmp_path):
    testset = synthetic("test", seed=0, users=3, requests_per_user=1)
    first = evaluate(rag, testset, [rouge_l, rouge_1], cache_dir=tmp_path, progress=False)
    assert first.cached_predictions == 0
    second = evaluate(rag, testset, [rouge_l, rouge_1], cache_dir=tmp_path, progress=False)
    assert second.cached_predictions == 3 and second.cached_scores == 6
    assert second.rows == first.rows
    summary = second.summary()["rouge_l"]
    assert summary["n"] == 3 and summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    changed = rag.deepcopy()
    changed.write.signature = changed.write.signature.with_instructions("Write it briefly.")
    assert evaluate(changed, testset, [rouge_l], cache_dir=tmp_path, progress=False).cached_predictions == 0
    (tmp_path / "out").mkdir()
    second.to_jsonl(tmp_path / "out" / "rows.jsonl")
    second.to_csv(tmp_path / "out" / "rows.csv")
    assert len((tmp_path / "out" / "rows.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "out" / "rows.csv").read_text().startswith("id,user_id,rouge_l,rouge_1")


def test_metric_errors_and_missing_fields_are_recorded_not_fatal(rag, tmp_path):
    testset = synthetic("test", seed=0, users=2, requests_per_user=1)

    def flaky(example, prediction, trace=None):
        if example.id == testset[0].id:
            raise ZeroDivisionError("boom")
        return 0.5

    result = evaluate(rag, testset, [flaky], cache_dir=tmp_path, progress=False)
    assert "ZeroDivisionError: boom" in result.rows[0]["errors"]["flaky"] and result.rows[1]["flaky"] == 0.5
    assert result.summary()["flaky"]["errors"] == 1

    class NoResponse(dspy.Module):
        def forward(self, request, profile):
            return dspy.Prediction(answer="x")

    missing = evaluate(NoResponse(), testset, [rouge_l], progress=False)
    assert missing.summary()["rouge_l"]["missing_field"] == 2 and all(r["rouge_l"] == 0.0 for r in missing.rows)


def test_failures_are_recorded_but_retried_on_the_next_run(rag, tmp_path):
    testset = synthetic("test", seed=0, users=3, requests_per_user=1)
    outage = {"program": {testset[0].id}, "metric": {testset[1].id}}
    calls = Counter()

    class Flaky(dspy.Module):
        """The RAG program, failing for the examples in ``outage`` (a rate limit, say) until it is lifted."""

        def __init__(self):
            super().__init__()
            self.rag = rag

        def forward(self, request, profile):
            calls[request] += 1
            if any(e.request == request for e in testset if e.id in outage["program"]):
                raise TimeoutError("the API timed out")
            return self.rag(request=request, profile=profile)

    def reward(example, prediction, trace=None):
        if example.id in outage["metric"]:
            raise ConnectionError("judge unreachable")
        return rouge_l(example, prediction)

    reward.__qualname__ = "reward"
    first = evaluate(Flaky(), testset, [reward], cache_dir=tmp_path, progress=False)
    assert first.failed == 2 and first.summary()["reward"]["errors"] == 2
    assert first.summary()["reward"]["error_kinds"] == {"TimeoutError": 1, "ConnectionError": 1}
    assert first.summary()["reward"]["n"] == 1
    outage["program"], outage["metric"] = set(), set()
    second = evaluate(Flaky(), testset, [reward], cache_dir=tmp_path, progress=False)
    assert second.failed == 0 and second.summary()["reward"]["n"] == 3
    assert second.cached_predictions == 2 and second.cached_scores == 1  # only the failures were computed again
    assert calls[testset[0].request] == 2 and calls[testset[2].request] == 1
    third = evaluate(Flaky(), testset, [reward], cache_dir=tmp_path, progress=False)
    assert third.cached_predictions == 3 and third.cached_scores == 3 and third.rows == second.rows


def test_scores_are_cached_by_metric_identity_not_name(rag, tmp_path):
    testset = synthetic("test", seed=0, users=2, requests_per_user=1)
    evaluate(rag, testset, [WeightedMean({rouge_l: 1})], cache_dir=tmp_path, progress=False)
    again = evaluate(rag, testset, [WeightedMean({rouge_l: 1, rouge_1: 1})], cache_dir=tmp_path, progress=False)
    assert again.cached_predictions == 2 and again.cached_scores == 0
    judges = [LLMJudge(dspy.LM("openai/a", cache=False)), LLMJudge(dspy.LM("openai/b", cache=False))]
    with pytest.raises(ValueError, match=r"llm_judge.*distinct name"):
        evaluate(rag, testset, judges, cache_dir=tmp_path, progress=False)


def test_a_failure_cached_by_an_older_version_is_retried(rag, tmp_path):
    import diskcache

    testset = synthetic("test", seed=0, users=2, requests_per_user=1)
    first = evaluate(rag, testset, [rouge_l], cache_dir=tmp_path, progress=False)
    with diskcache.Cache(str(tmp_path)) as cache:
        key = next(k for k in cache if k.startswith("prediction:"))
        payload = json.dumps({"error": "RateLimitError: slow down"})
        cache.set(key, (payload, hashlib.sha256(payload.encode()).hexdigest()))
    again = evaluate(rag, testset, [rouge_l], cache_dir=tmp_path, progress=False)
    assert again.failed == 0 and again.recomputed_corrupt == 1 and again.rows == first.rows


def test_corrupted_cache_entries_are_dropped_and_recomputed(rag, tmp_path):
    import diskcache

    testset = synthetic("test", seed=0, users=2, requests_per_user=1)
    first = evaluate(rag, testset, [rouge_l], cache_dir=tmp_path, progress=False)
    with diskcache.Cache(str(tmp_path)) as cache:
        key = next(k for k in cache if k.startswith("prediction:"))
        cache.set(key, ('{"fields": {"response": "tampered"}}', "not-the-checksum"))
    again = evaluate(rag, testset, [rouge_l], cache_dir=tmp_path, progress=False)
    assert again.recomputed_corrupt == 1 and again.cached_predictions == 1
    assert [r["response"] for r in again.rows] == [r["response"] for r in first.rows]


def test_markdown_table_and_plots(tmp_path):
    stats = {"rouge_l": {"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n": 5}}
    results = {"sft": {"synthetic": stats}, "rest-pg": {"synthetic": stats}}
    table = markdown_table(results, ["rouge_l"])
    assert table.splitlines()[2] == "| sft | 0.3000 [0.2000, 0.4000] |"
    assert plot_scores(results, "rouge_l", tmp_path / "s.png").stat().st_size > 1000


def test_table_runner_and_compile_run_report(tiny_model_dir, tmp_path, monkeypatch):
    import restpg_dspy.training.trainer as trainer

    trainings = []
    fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda job, tokenizer=None: trainings.append(job) or fit(job, tokenizer))
    config = TableConfig(
        run_dir=str(tmp_path / "table"),
        student=f"local:{tiny_model_dir}",
        methods=["no-personalization", "sft", "rest-em"],
        metrics=["rouge_l", "meteor"],
        synthetic_train_users=2,
        synthetic_test_users=2,
        max_tokens=6,
        optimizer={"rounds": 1, "samples_per_input": 2, "verbose": False},
        train_kwargs={"max_steps": 1},
    )
    results = run_table(config)
    assert set(results) == {"no-personalization", "sft", "rest-em"}
    # ReST-EM's SFT stage is SFT's training: the methods share one adapters folder, and it is trained once.
    stage = json.loads((tmp_path / "table/synthetic/rest-em/sft/model.json").read_text())["model"]
    assert stage == json.loads((tmp_path / "table/synthetic/sft/sft/model.json").read_text())["model"]
    assert len(trainings) == 2 and len(list((tmp_path / "table/synthetic/adapters").glob(".trained-*"))) == 2
    assert results["rest-em"]["synthetic"]["meteor"]["n"] == 6  # 2 users x 3 requests
    table = (tmp_path / "table" / "table.md").read_text()
    assert "synthetic rouge_l" in table and "| rest-em |" in table
    assert (tmp_path / "table" / "scores_meteor.png").exists()
    files = report_compile_run(tmp_path / "table" / "synthetic" / "rest-em")
    assert {f.name for f in files} == {"rewards.png", "keep_rates.png", "report.md"}
    report = (tmp_path / "table" / "synthetic" / "rest-em" / "report.md").read_text()
    assert "round_1" in report and "## Wall time per part" in report and "| round_1.train |" in report
    parts = json.loads((tmp_path / "table/synthetic/rest-em/timings.json").read_text())
    assert {"teacher", "sft.train", "sft.validate", "round_1.sample", "round_1.train", "round_1.validate"} <= set(parts)
    assert parts["sft.train"] > 0 and parts["round_1.sample"] > 0
    split = time_split(tmp_path / "table" / "synthetic")
    assert split["rest-em: round_1.sample"] == parts["round_1.sample"] and split["sft: sft.train"] > 0
    assert split["no-personalization: evaluation"] > 0 and "no-personalization: compile" not in split
    stored = json.loads((tmp_path / "table" / "results.json").read_text())
    assert stored["rest-em"]["synthetic"]["rouge_l"]["n"] == 6
    paired = json.loads((tmp_path / "table" / "paired.json").read_text())["synthetic"]
    pairs = {(e["better"], e["worse"], e["subset"], e["metric"]): e["n_pairs"] for e in paired}
    assert pairs[("rest-em", "sft", "all", "rouge_l")] == pairs[("sft", "no-personalization", "all", "rouge_l")] == 6
    assert pairs[("sft", "no-personalization", "seen", "meteor")] == 3
    assert pairs[("sft", "no-personalization", "held_out", "meteor")] == 3
    groups = {(e["subset"], e["unit"]): e["n_groups"] for e in paired if e["metric"] == "rouge_l"}
    assert groups[("all", "users")] == 2 and 1 <= groups[("held_out", "wordings")] <= groups[("all", "wordings")]
    assert "sft − no-personalization" in (tmp_path / "table" / "paired.md").read_text()


def test_table_config_files_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods: [rag]\nrounds: 3\n")
    with pytest.raises(ValueError, match=r"unknown settings \['rounds'\]"):
        TableConfig.from_file(path)
    path.write_text("methods: [rag]\noptimizer: {rounds: 3}\n")
    assert TableConfig.from_file(path, run_dir="x").optimizer == {"rounds": 3}
    with pytest.raises(ValueError, match="unknown methods"):
        TableConfig(methods=["magic"])


def test_meteor_is_safe_from_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    pairs = [
        pair(f"they tear the planks and find a way {i}", f"they rip the boards and discover a path {i}")
        for i in range(40)
    ]
    expected = [meteor(*p) for p in pairs]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda p: meteor(*p), pairs)) == expected


def test_a_run_directory_adds_up_the_time_of_each_part_over_the_runs_that_resume_it(tmp_path):
    import time

    from restpg_dspy.optimizers.run_dir import RunDir

    with RunDir(tmp_path, {"rounds": 1}).timed("round_1.sample"):
        time.sleep(0.2)
    with pytest.raises(KeyboardInterrupt), RunDir(tmp_path, {"rounds": 1}).timed("round_1.sample"):
        time.sleep(0.2)
        raise KeyboardInterrupt  # an interrupted part still counts the time it took
    assert json.loads((tmp_path / "timings.json").read_text())["round_1.sample"] >= 0.4


def test_compile_run_report_skips_a_line_cut_off_by_a_crash(tmp_path):
    (tmp_path / "round_1").mkdir()
    (tmp_path / "history.json").write_text(json.dumps([{"stage": "round_1", "rows": 1, "keep_rate": 0.5}]))
    samples = [{"id": "a", "index": i, "reward": r} for i, r in enumerate([0.2, 0.6])]
    cut_off = '{"id": "a", "index": 2, "rew'
    (tmp_path / "round_1" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples) + cut_off)
    (tmp_path / "round_1" / "kept.jsonl").write_text(json.dumps(samples[1]) + "\n")
    files = report_compile_run(tmp_path)
    assert {f.name for f in files} == {"rewards.png", "keep_rates.png", "report.md"}
    assert "| round_1 | 1 | 0.5 |" in (tmp_path / "report.md").read_text()


def test_paired_bootstrap_resamples_users_and_matches_a_hand_computation():
    from restpg_dspy.evals import paired_bootstrap

    def rows(values):
        return [{"id": f"{u}-{i}", "user_id": u, "m": v} for u, vs in values.items() for i, v in enumerate(vs)]

    a = rows({"u1": [1.0, 1.0, 1.0], "u2": [0.0, 0.0, 0.0], "u3": [1.0, 1.0, 1.0], "u4": [0.5, 0.5, 0.5]})
    b = rows({"u1": [0.0, 0.0, 0.0], "u2": [0.0, 0.0, 0.0], "u3": [0.5, 0.5, 0.5], "u4": [0.5, 0.5, 0.5]})
    by_user = paired_bootstrap(a, b, "m")
    assert by_user["mean_difference"] == pytest.approx(1.5 / 4) and by_user["n_pairs"] == 12
    assert by_user["n_groups"] == 4 and by_user["ci_low"] <= 0.375 <= by_user["ci_high"]
    by_example = paired_bootstrap(a, b, "m", by="id")
    # Differences are identical within a user: resampling examples as if independent understates the uncertainty.
    assert by_example["ci_high"] - by_example["ci_low"] < by_user["ci_high"] - by_user["ci_low"]
    only_u1 = paired_bootstrap(a, b, "m", ids={"u1-0", "u1-1"})
    assert only_u1 == {**only_u1, "mean_difference": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n_pairs": 2}
    pairs_of_users = {r["id"]: "u1+u2" if r["user_id"] in ("u1", "u2") else "u3+u4" for r in a}
    by_mapping = paired_bootstrap(a, b, "m", by=pairs_of_users)
    assert by_mapping["n_groups"] == 2 and by_mapping["mean_difference"] == by_user["mean_difference"]
    b[0]["m"] = None
    assert paired_bootstrap(a, b, "m")["unpaired"] == 1
    with pytest.raises(ValueError, match="no example has a 'rouge_l' score in both results"):
        paired_bootstrap(a, b, "rouge_l")


def test_a_table_compares_the_paper_order_and_the_ablation_pairs_of_the_methods_it_ran():
    from restpg_dspy.evals.paired import differences_table, paired_differences
    from restpg_dspy.experiments.registry import compared_pairs

    # A table of SFT with reasoning and REST-PG alone has no adjacent pair of the paper's order, yet it is the
    # comparison that says what self-training added.
    assert compared_pairs(["sft-reasoning", "rest-pg"]) == [("rest-pg", "sft-reasoning")]
    assert compared_pairs(["rest-pg", "rest-em", "sft", "rag"]) == [
        ("rest-pg", "rest-em"),
        ("rest-em", "sft"),
        ("sft", "rag"),
    ]
    scores = {"rest-pg": [1.0, 1.0, 0.0, 1.0], "sft-reasoning": [0.0, 1.0, 0.0, 1.0], "sft": [0.0, 0.0, 0.0, 1.0]}
    rows = {
        method: [{"id": str(i), "user_id": f"u{i // 2}", "m": v} for i, v in enumerate(values)]
        for method, values in scores.items()
    }
    entries = paired_differences(
        rows, [*compared_pairs(rows), ("rest-pg", "rag")], ["m"], {"all": None, "first": {"0"}}
    )
    differences = {(e["better"], e["worse"], e["subset"]): e["mean_difference"] for e in entries}
    assert differences == {
        ("rest-pg", "sft", "all"): 0.5,
        ("rest-pg", "sft", "first"): 1.0,
        ("rest-pg", "sft-reasoning", "all"): 0.25,
        ("rest-pg", "sft-reasoning", "first"): 1.0,
        ("sft-reasoning", "sft", "all"): 0.25,
        ("sft-reasoning", "sft", "first"): 0.0,
    }  # ("rest-pg", "rag") is skipped: RAG did not run
    assert "| rest-pg − sft-reasoning | all (n=4, 2 users) | +0.250 [" in differences_table(entries)


def test_weighted_mean_reward_from_a_config_string():
    reward = resolve_metrics(["0.75*rouge_l+0.25*option_accuracy"])[0]
    assert reward.__name__ == "0.75*rouge_l+0.25*option_accuracy"
    example = synthetic("test", seed=0, users=1, requests_per_user=1)[0]
    wrong = dspy.Prediction(response=example.output.replace(example.answer, example.options[-1]))
    assert example.answer != example.options[-1]
    assert reward(example, wrong) == pytest.approx(0.75 * rouge_l(example, wrong))
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        resolve_metrics(["rouge_l+bleu"])
    with pytest.raises(ValueError, match="reasoning_max_tokens must be a positive number"):
        TableConfig(reasoning_max_tokens=0)
    with pytest.raises(ValueError, match="unknown synthetic_task 'riddles'"):
        TableConfig(synthetic_task="riddles")
