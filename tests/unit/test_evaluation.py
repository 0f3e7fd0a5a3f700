"""The evaluate library in one process: seeds, the seeded sampler against transformers' own warpers,
batch-independent sampling on a tiny Qwen2 with known answers, the resumable log, benchmark files."""

import json
from collections import Counter

import pytest
import torch

from evaluation_fixtures import write_benchmarks, write_chain_model
from redi_megatron.config import ConfigError
from redi_megatron.evaluation.benchmarks import (PUBLIC_RELEASES, BenchmarkFileError, public_record,
                                                 read_benchmarks)
from redi_megatron.evaluation.generation_log import GenerationLog, check_run_manifest
from redi_megatron.evaluation.sampling import SamplingSettings, sample_seeds
from redi_megatron.evaluation.transformers_backend import SeededSampling, TransformersSampler


def test_sample_seeds_depend_on_base_seed_problem_and_index_only():
    seeds = sample_seeds(0, "aime/1", 16)
    assert seeds == sample_seeds(0, "aime/1", 16) and len(set(seeds)) == 16
    assert sample_seeds(0, "aime/1", 4) == seeds[:4]
    assert not set(seeds) & set(sample_seeds(1, "aime/1", 16))
    assert not set(seeds) & set(sample_seeds(0, "aime/2", 16))


def test_seeded_sampling_draws_from_transformers_temperature_top_p_distribution():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    rows = 4000
    sampler = SeededSampling(list(range(rows)), temperature=0.6, top_p=0.9)
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.expand(rows, -1))
    assert torch.equal((out == 0).sum(-1), torch.ones(rows, dtype=torch.long))  # one token left per row
    counts = Counter(out.argmax(-1).tolist())
    warped = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.6)(None, logits.clone()))
    expected = torch.softmax(warped, -1)[0]
    for token in range(logits.shape[1]):
        if expected[token] == 0:
            assert counts[token] == 0, f"token {token} is outside top-p but was drawn"
        else:
            assert abs(counts[token] / rows - expected[token].item()) < 0.03
    # Same seeds, same draws; a row's draw does not depend on the rows beside it.
    again = SeededSampling(list(range(rows)), 0.6, 0.9)(None, logits.expand(rows, -1))
    alone = SeededSampling([17], 0.6, 0.9)(None, logits)
    assert torch.equal(out, again) and torch.equal(alone[0], out[17])


@pytest.fixture(scope="module")
def chain_model(tmp_path_factory):
    return write_chain_model(tmp_path_factory.mktemp("chain") / "hf")


def _sample(model_dir, problems, settings, batches):
    from redi_megatron.data.tokenizer_loading import load_tokenizer
    from redi_megatron.evaluation.prompts import PromptBuilder

    tokenizer = load_tokenizer(model_dir)
    sampler = TransformersSampler(str(model_dir), settings, [tokenizer.end_of_turn_id], tokenizer.pad_id)
    prompts = PromptBuilder(tokenizer).prompt_ids(problems)
    seeds = [sample_seeds(settings.seed, f"p{i}", settings.samples) for i in range(len(problems))]
    out = []
    for start in range(0, len(problems), batches):
        out += sampler.sample(prompts[start:start + batches], seeds[start:start + batches])
    return [[tokenizer.decode(c.token_ids) for c in samples] for samples in out]


def test_transformers_samples_are_reproducible_and_independent_of_batching(chain_model):
    problems = ["What is 3 plus 4?", "Half of 14?", "Compute 2 times 4, then add nothing at all."]
    settings = SamplingSettings(samples=6, max_new_tokens=16, seed=3)
    together = _sample(chain_model, problems, settings, batches=3)
    assert together == _sample(chain_model, problems, settings, batches=1)
    answers = [sample.removeprefix("</think> The answer is ") for samples in together for sample in samples]
    assert set(answers) == {"\\boxed{7}", "\\boxed{8}"}  # the chain, then a fair coin
    assert together != _sample(chain_model, problems, SamplingSettings(6, max_new_tokens=16, seed=4), 3)


def test_truncated_responses_are_counted_as_truncated_and_wrong(chain_model, tmp_path):
    from redi_megatron.evaluation.runner import evaluate

    paths = write_benchmarks(tmp_path / "bench", alpha=2, beta=1)
    report = evaluate(chain_model, paths, tmp_path / "out", SamplingSettings(samples=2, max_new_tokens=5),
                      workers=1, show_progress=False)
    for name in ("alpha", "beta"):
        assert report["lengths"][name] == {"samples": 2 * (2 if name == "alpha" else 1), "mean_tokens": 5.0,
                                           "max_tokens": 5, "truncated_share": 1.0, "unclosed_thinking_share": 0.0}
        assert report["benchmarks"][name]["pass@1"] == 0.0


def test_generation_log_drops_a_partial_last_line_and_appends(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_text(json.dumps({"id": "a", "samples": ["x"]}) + "\n" + '{"id": "b", "sam')
    log = GenerationLog(path)
    assert list(log.records) == ["a"]
    log.append({"id": "b", "samples": ["y"]})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]
    assert list(GenerationLog(path).records) == ["a", "b"]


def test_a_restart_with_other_settings_is_refused(tmp_path):
    manifest = {"model": {"hf": "/m"}, "sampling": {"samples": 16, "temperature": 0.6}}
    check_run_manifest(tmp_path / "run.json", manifest)
    check_run_manifest(tmp_path / "run.json", manifest)
    with pytest.raises(ConfigError, match="'sampling' differs"):
        check_run_manifest(tmp_path / "run.json", {**manifest, "sampling": {"samples": 8, "temperature": 0.6}})


def test_benchmark_files_need_fields_and_unique_ids(tmp_path):
    good = tmp_path / "math.jsonl"
    good.write_text(json.dumps({"id": 1, "problem": "p", "answer": 2}) + "\n\n")
    (problem,) = read_benchmarks([good])
    assert (problem.id, problem.answer, problem.benchmark) == ("1", "2", "math")
    with pytest.raises(BenchmarkFileError, match="already used"):
        read_benchmarks([good, good])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "problem": "p"}) + "\n")
    with pytest.raises(BenchmarkFileError, match="bad.jsonl:1: field 'answer'"):
        read_benchmarks([bad])


def test_public_releases_map_to_benchmark_records():
    rows = {"MATH-500": {"problem": " p ", "answer": "\\frac{1}{2}", "unique_id": "test/algebra/1.json"},
            "AIME24": {"id": 60, "problem": "p", "answer": "204"},
            "AMC23": {"id": 3, "question": "p", "answer": 27.0},
            "Minerva": {"question": "p", "answer": "0.5"},
            "OlympiadBench": {"question": "p", "answer": ["$x=1$"]}}
    assert set(rows) == set(PUBLIC_RELEASES)
    records = {name: public_record(name, row, 7) for name, row in rows.items()}
    assert records["MATH-500"] == {"id": "MATH-500/test/algebra/1.json", "problem": "p", "answer": "\\frac{1}{2}",
                                   "benchmark": "MATH-500"}
    assert records["AIME24"]["id"] == "AIME24/60" and records["AMC23"]["answer"] == "27.0"
    assert records["Minerva"]["id"] == "Minerva/7" and records["OlympiadBench"]["answer"] == "$x=1$"
