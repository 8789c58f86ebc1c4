"""Comparisons between methods over prompts and over training seeds (`symnoise.evaluation.comparisons`), in
`symnoise report` and in the grid's summary.

Run directories are built as `symnoise train` and the grid leave them, filled with slices of the real published
AlpacaEval annotations and outputs (every file of annotations_alpaca_eval_gpt4 is judged against text-davinci-003
on the same 805 prompts, so different models stand in for different training seeds of one method). Every number is
checked against `paired_difference` / `seed_difference` / `seed_summary` computed directly from the files."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report import PNG_SIGNATURE, make_run, write_json, write_slice

from symnoise.evaluation.comparisons import ONE_SEED, build_comparisons
from symnoise.evaluation.paired import paired_difference, seed_difference, seed_summary
from symnoise.evaluation.runs import load_runs
from symnoise.evaluation.stats import file_stats, first_words, repetition_and_diversity
from symnoise.evaluation.winrate import score, win_rates
from symnoise.layout import REFERENCE_LOSS as REFERENCE_LOSS_FILE

pytestmark = pytest.mark.slow  # multi-process, subprocess or whole-pipeline tests: `make test` only

AE = Path("alpaca_eval")
PROMPTS = slice(0, 200)
# One published model per (method, seed): three "seeds" of each of base, NEFT and SymNoise.
MODELS = {
    ("none", 0): "alpaca-7b",
    ("none", 1): "falcon-7b-instruct",
    ("none", 2): "text_davinci_001",
    ("uniform", 0): "alpaca-7b-neft",
    ("uniform", 1): "llama-2-7b-chat-hf",
    ("uniform", 2): "vicuna-13b",
    ("symnoise", 0): "llama-2-chat-7b-evol70k-neft",
    ("symnoise", 1): "zephyr-7b-beta",
    ("symnoise", 2): "tulu-2-dpo-7b",
}
LABELS = {"none": "base", "uniform": "NEFT", "symnoise": "SymNoise"}
TOL = 1e-9


def reference_losses(instructions: list[str], method: str, seed: int) -> list[dict]:
    """Made-up per-prompt losses: SymNoise a little lower than NEFT on most prompts, different on every seed."""
    rng = random.Random(f"{method}-{seed}")
    shift = {"none": 0.3, "uniform": 0.1, "symnoise": 0.0}[method]
    return [
        {
            "instruction": text,
            "input": "",
            "loss": 1.5 + shift + rng.gauss(0, 0.2),
            "tokens": rng.randint(5, 90),
        }
        for text in instructions
    ]


def make_seed_run(root: Path, shared: Path, method: str, seed: int, alpha: float = 5) -> Path:
    """A run of ``method`` trained with ``seed``: config.yaml, annotations, outputs and per-prompt ref. losses."""
    run = make_run(root, f"{method}-a{alpha:g}-s{seed}", method=method, alpha=alpha)
    (run / "config.yaml").write_text(yaml.safe_dump({"training": {"seed": seed}}), encoding="utf-8")
    model = MODELS[(method, seed)]
    ann = shared / AE / "annotations_alpaca_eval_gpt4" / f"{model}.json"
    write_slice(ann, run / "eval" / "annotations.json", PROMPTS.start, PROMPTS.stop)
    outputs = shared / AE / "model_outputs" / f"{model}.json"
    write_slice(outputs, run / "model_outputs.json", PROMPTS.start, PROMPTS.stop)
    instructions = [r["instruction"] for r in json.loads((run / "model_outputs.json").read_text())]
    rows = reference_losses(instructions, method, seed)
    write_json(run / "eval" / REFERENCE_LOSS_FILE, {"loss": 1.7, "tokens": 1, "examples": len(rows),
                                                    "per_example": rows})  # fmt: skip
    return run


@pytest.fixture
def seed_runs(tmp_path, shared_data) -> dict[tuple[str, int], Path]:
    return {key: make_seed_run(tmp_path / "runs", shared_data, *key) for key in MODELS}


# ---------------------------------------------------------------------------------- values from the files


def win_scores(run: Path) -> dict[str, float | None]:
    rows = json.loads((run / "eval/annotations.json").read_text())
    return {r["instruction"]: None if r["preference"] is None else 100 * score(r["preference"]) for r in rows}


def paired_win_scores(a: Path, b: Path) -> tuple[list[float], list[float]]:
    qa, qb = win_scores(a), win_scores(b)
    kept = [k for k in qa if qa[k] is not None and qb[k] is not None]
    return [qa[k] for k in kept], [qb[k] for k in kept]


def outputs_of(run: Path) -> list[str]:
    return [r["output"] for r in json.loads((run / "model_outputs.json").read_text())]


def losses_of(run: Path) -> list[float]:
    return [r["loss"] for r in json.loads((run / "eval" / REFERENCE_LOSS_FILE).read_text())["per_example"]]


def rep2(text: str, words: int = 50) -> float | None:
    cut = first_words(text, words)
    return None if cut is None else 100 * repetition_and_diversity(cut).rep_2


def expected_per_seed(metric: str, a: Path, b: Path):
    if metric == "win_rate":
        return paired_difference(*paired_win_scores(a, b))
    if metric == "reference_loss":
        return paired_difference(losses_of(a), losses_of(b))
    if metric == "length_chars":
        return paired_difference([len(o) for o in outputs_of(a)], [len(o) for o in outputs_of(b)])
    both = [(rep2(x), rep2(y)) for x, y in zip(outputs_of(a), outputs_of(b), strict=True)]
    both = [(x, y) for x, y in both if x is not None and y is not None]
    return paired_difference([x for x, _ in both], [y for _, y in both])


def own_value(metric: str, run: Path) -> float:
    """The run's own value, computed by the report's own per-file functions."""
    if metric == "win_rate":
        return win_rates([run / "eval/annotations.json"])[0].win_rate
    if metric == "reference_loss":
        losses = losses_of(run)
        return sum(losses) / len(losses)
    (stats,) = file_stats([run / "model_outputs.json"], 50)
    return stats.mean_chars if metric == "length_chars" else stats.rep_2_pct


def assert_close(actual, expected) -> None:
    assert (actual is None) == (expected is None), (actual, expected)
    if expected is not None:
        assert abs(actual - expected) <= TOL * max(1.0, abs(expected)), (actual, expected)


def find(comparisons, a: str, b: str, metric: str):
    (row,) = [r for r in comparisons.rows if (r.a, r.b, r.metric) == (a, b, metric)]
    return row


# ------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("metric", ["win_rate", "reference_loss", "length_chars", "repetition_2gram"])
def test_numbers_equal_the_paired_statistics_computed_directly(seed_runs, metric):
    comparisons = build_comparisons(load_runs(list(seed_runs.values())))
    kinds = {(r.a, r.b): r.kind for r in comparisons.rows}
    assert kinds == {
        ("base", "NEFT"): "vs base",
        ("base", "SymNoise"): "vs base",
        ("NEFT", "SymNoise"): "vs NEFT",
    }
    for a, b in (("none", "uniform"), ("none", "symnoise"), ("uniform", "symnoise")):
        row = find(comparisons, LABELS[a], LABELS[b], metric)
        assert row.seeds == [0, 1, 2] and row.seeds_a == row.seeds_b == [0, 1, 2]
        for seed_row in row.per_seed:
            expected = expected_per_seed(metric, seed_runs[(a, seed_row.seed)], seed_runs[(b, seed_row.seed)])
            for field in ("difference", "standard_error", "ci_low", "ci_high", "a", "b"):
                assert_close(getattr(seed_row.paired, field), getattr(expected, field))
            assert seed_row.paired.n == expected.n > 50
        a_values = [own_value(metric, seed_runs[(a, s)]) for s in range(3)]
        b_values = [own_value(metric, seed_runs[(b, s)]) for s in range(3)]
        expected = seed_difference(a_values, b_values, paired_by_seed=True)
        assert row.over_seeds.method == "paired" and row.over_seeds.df == 2
        for field in ("difference", "standard_error", "ci_low", "ci_high"):
            assert_close(getattr(row.over_seeds, field), getattr(expected, field))
        for summary, values in ((row.a_over_seeds, a_values), (row.b_over_seeds, b_values)):
            for field in ("mean", "sd", "ci_low", "ci_high"):
                assert_close(getattr(summary, field), getattr(seed_summary(values), field))
        difference, low, high, basis = row.headline
        assert basis == "seeds (paired)"
        for value, field in ((difference, "difference"), (low, "ci_low"), (high, "ci_high")):
            assert_close(value, getattr(expected, field))


def test_verdicts_in_words(seed_runs):
    comparisons = build_comparisons(load_runs(list(seed_runs.values())))
    for row in comparisons.rows:
        over = row.over_seeds
        if over.ci_low > 0 or over.ci_high < 0:
            side = "higher" if over.ci_low > 0 else "lower"
            assert row.verdict.startswith(
                f"{row.b} {side} than {row.a} at 95% over seeds (3 seeds, paired by seed)"
            )
        else:
            assert row.verdict.startswith("not shown at 95% (interval contains 0) over seeds")
        overlap = (
            row.a_over_seeds.ci_low <= row.b_over_seeds.ci_high
            and row.b_over_seeds.ci_low <= row.a_over_seeds.ci_high
        )
        assert ("the per-method intervals overlap" in row.verdict) == overlap
        for seed_row in row.per_seed:
            p = seed_row.paired
            if p.ci_low > 0 or p.ci_high < 0:
                side = "higher" if p.ci_low > 0 else "lower"
                assert (
                    seed_row.verdict
                    == f"{row.b} {side} than {row.a} at 95% over prompts (seed {seed_row.seed})"
                )
            else:
                assert (
                    seed_row.verdict
                    == f"not shown at 95% (interval contains 0) over prompts (seed {seed_row.seed})"
                )
    # the made-up losses put SymNoise 0.1 below NEFT on every seed: shown over prompts and over seeds
    loss = find(comparisons, "NEFT", "SymNoise", "reference_loss")
    assert loss.verdict.startswith("SymNoise lower than NEFT at 95% over seeds")
    assert all(
        s.verdict == f"SymNoise lower than NEFT at 95% over prompts (seed {s.seed})" for s in loss.per_seed
    )
    shown = {r.verdict.split(" at 95%")[0] for r in comparisons.rows}
    assert any(v.startswith("not shown") for v in shown), "the fixture should have a difference not shown"


def test_one_seed_says_the_interval_over_seeds_is_undefined(seed_runs):
    runs = load_runs([seed_runs[("uniform", 0)], seed_runs[("symnoise", 0)]])
    (row,) = [r for r in build_comparisons(runs).rows if r.metric == "win_rate"]
    expected = paired_difference(*paired_win_scores(seed_runs[("uniform", 0)], seed_runs[("symnoise", 0)]))
    assert row.seeds == [0] and row.over_seeds.ci_low is None and row.a_over_seeds.ci_low is None
    assert row.headline == (expected.difference, expected.ci_low, expected.ci_high, "prompts (seed 0)")
    claim = (
        f"SymNoise {'higher' if expected.ci_low > 0 else 'lower'} than NEFT at 95% over prompts (seed 0)"
        if expected.shows_difference
        else "not shown at 95% (interval contains 0) over prompts (seed 0)"
    )
    assert row.verdict == f"{claim}; {ONE_SEED}"
    assert "one seed: the interval over seeds is undefined" in row.verdict


def test_different_seed_sets_use_welch_over_each_methods_seeds(seed_runs):
    chosen = [p for (m, s), p in seed_runs.items() if m != "none" and (m, s) != ("uniform", 2)]
    row = find(build_comparisons(load_runs(chosen)), "NEFT", "SymNoise", "length_chars")
    assert row.seeds == [0, 1] and row.seeds_a == [0, 1] and row.seeds_b == [0, 1, 2]
    a_values = [own_value("length_chars", seed_runs[("uniform", s)]) for s in (0, 1)]
    b_values = [own_value("length_chars", seed_runs[("symnoise", s)]) for s in (0, 1, 2)]
    expected = seed_difference(a_values, b_values, paired_by_seed=False)
    assert row.over_seeds.method == "welch"
    for field in ("difference", "standard_error", "ci_low", "ci_high", "df"):
        assert_close(getattr(row.over_seeds, field), getattr(expected, field))
    assert "Welch, the seeds differ" in row.verdict and "seeds differ" in row.notes[0]


def test_runs_judged_against_different_references_are_not_compared(seed_runs):
    path = seed_runs[("symnoise", 1)] / "eval/annotations.json"
    rows = json.loads(path.read_text())
    rows[3]["output_1"] += " (another reference)"
    path.write_text(json.dumps(rows))
    comparisons = build_comparisons(load_runs(list(seed_runs.values())))
    row = find(comparisons, "NEFT", "SymNoise", "win_rate")
    assert row.verdict == "not compared: the runs cannot be paired by prompt" and row.over_seeds is None
    assert "judged against different references" in row.notes[0] and str(path) in row.notes[0]
    assert find(comparisons, "NEFT", "SymNoise", "length_chars").over_seeds is not None  # other metrics go on


def test_one_run_per_seed_and_method_the_papers_alpha_first(seed_runs, tmp_path, shared_data):
    extra = make_seed_run(tmp_path / "runs", shared_data, "symnoise", 0, alpha=15)
    runs = load_runs([extra, *seed_runs.values()])
    comparisons = build_comparisons(runs)
    row = find(comparisons, "NEFT", "SymNoise", "win_rate")
    assert row.per_seed[0].b_run == "symnoise-a5-s0"  # alpha 5 is Alpaca's, 15 is left out
    assert any("symnoise-a15-s0" in note for note in comparisons.notes)


def test_compute_matched_control_is_chosen_by_draws(seed_runs, monkeypatch):
    from symnoise.evaluation import comparisons as module

    runs = load_runs([p for (m, _), p in seed_runs.items() if m != "none"])
    neft = [r for r in runs if r.noise.method == "uniform"]
    monkeypatch.setattr(module, "noise_draws", lambda run: 2 if run in neft else 1)
    kinds = {(r.kind, r.a, r.b) for r in build_comparisons(runs).rows}
    assert kinds == {("vs compute-matched control", "NEFT", "SymNoise")}  # NEFT with two draws is the control


# ------------------------------------------------------------------------------------------- report files


def test_report_writes_the_comparisons_section_and_plot(seed_runs, tmp_path):
    out = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "symnoise",
        "report",
        *map(str, seed_runs.values()),
        "--out",
        str(out),
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "## Comparisons\n" in markdown and "## Comparisons per seed (paired over prompts)" in markdown
    assert "](paired_differences.png)" in markdown
    data = (out / "paired_differences.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = report["paired_comparisons"]["rows"]
    assert len(rows) == 3 * 4 and {r["metric"] for r in rows} == {"win_rate", "reference_loss", "length_chars",
                                                                  "repetition_2gram"}  # fmt: skip
    loss = next(r for r in rows if (r["a"], r["b"], r["metric"]) == ("NEFT", "SymNoise", "reference_loss"))
    direct = seed_difference(
        [own_value("reference_loss", seed_runs[("uniform", s)]) for s in range(3)],
        [own_value("reference_loss", seed_runs[("symnoise", s)]) for s in range(3)],
        paired_by_seed=True,
    )
    assert_close(loss["difference"], direct.difference) and assert_close(loss["ci_high"], direct.ci_high)
    assert [s["seed"] for s in loss["per_seed"]] == [0, 1, 2] and loss["interval_over"] == "seeds (paired)"
    line = "| Alpaca | SymNoise − NEFT | held-out ref. loss | 0, 1, 2 |"
    assert (
        line in markdown
        and f"{direct.difference:+.4f} | [{direct.ci_low:+.4f}, {direct.ci_high:+.4f}]" in markdown
    )
    assert [t["title"] for t in report["tables"]][-1] == "Runs"  # the papers' tables are as before


def test_report_names_a_bad_reference_loss_file(seed_runs, tmp_path):
    bad = seed_runs[("symnoise", 0)] / "eval" / REFERENCE_LOSS_FILE
    bad.write_text(
        json.dumps({"loss": 1.0, "per_example": [{"instruction": "x", "loss": "high", "tokens": 3}]})
    )
    command = [
        sys.executable,
        "-m",
        "symnoise",
        "report",
        *map(str, seed_runs.values()),
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0  # the metric is left out of that comparison, named in a note
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"{bad}: per_example[0]: expected an object" in markdown


# ------------------------------------------------------------------------------------ per-example ref. loss


def test_reference_loss_keeps_each_examples_mean_token_loss(tiny_tokenizer, tiny_model_factory):
    """Each kept example's loss equals its own unpadded forward; the token-weighted mean of them is ``loss``;
    an example dropped by the tokeniser (prompt alone too long) is left out and the others keep their names."""
    import torch
    import torch.nn.functional as F

    from symnoise.data import Example, tokenize_examples
    from symnoise.evaluation.reference_loss import reference_loss

    examples = [
        Example(
            f"Add {i} and {i + 1}.", "" if i % 2 else str(i), "The answer is " + "x " * (2 * i), "f.json:toy"
        )
        for i in range(6)
    ]
    examples.insert(2, Example("long " * 400, "", "never seen", "f.json:toy"))
    model = tiny_model_factory("llama")
    result = reference_loss(model, tiny_tokenizer, examples, "alpaca", 256, batch_size=4)
    kept = [e for e in examples if not e.instruction.startswith("long")]
    assert result["dropped"] == 1 and result["examples"] == len(kept) == len(result["per_example"])
    assert [(r["instruction"], r["input"]) for r in result["per_example"]] == [
        (e.instruction, e.input) for e in kept
    ]
    for row, example in zip(result["per_example"], kept, strict=True):
        item = tokenize_examples([example], tiny_tokenizer, "alpaca", 256)[0]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([item["input_ids"]])).logits[0, :-1]
        labels = torch.tensor(item["labels"][1:])
        assert row["tokens"] == int((labels != -100).sum())
        assert abs(row["loss"] - F.cross_entropy(logits, labels, ignore_index=-100).item()) < 1e-5
    weighted = sum(r["loss"] * r["tokens"] for r in result["per_example"]) / result["tokens"]
    assert sum(r["tokens"] for r in result["per_example"]) == result["tokens"]
    assert abs(weighted - result["loss"]) < 1e-6


# ---------------------------------------------------------------------------------------------- grid summary


def cell(method: str, seed: int, loss: float | None, chars: float | None, alpha: float = 5.0) -> dict:
    return {"cell": f"{method}-s{seed}", "model": "tiny", "dataset": "toy", "method": method, "alpha": alpha,
            "seed": seed, "status": "finished", "error": None, "final_loss": loss, "train_s": 1.0,
            "reference_loss": loss and loss + 1, "win_rate": None, "mean_chars": chars, "mean_words": None,
            "n_kept": None, "rep_2_pct": None, "log_diversity": None}  # fmt: skip


def test_grid_summary_aggregates_the_seed_axis():
    from symnoise.grid.summary import ONE_SEED_NOTE, seed_json, seed_markdown, seed_rows

    rows = [cell("none", 0, 1.0, 10.0), cell("symnoise", 0, 0.8, 30.0), cell("none", 1, 1.2, None),
            cell("symnoise", 1, 0.7, 20.0), cell("none", 2, 1.1, 14.0), cell("symnoise", 2, None, 25.0)]  # fmt: skip
    aggregated = seed_rows(rows)
    assert [(r["method"], r["seeds"]) for r in aggregated] == [("none", [0, 1, 2]), ("symnoise", [0, 1, 2])]
    none, sym = aggregated
    assert none["final_loss"] == seed_summary([1.0, 1.2, 1.1]) and none["mean_chars"] == seed_summary(
        [10.0, 14.0]
    )
    assert sym["reference_loss"] == seed_summary([1.8, 1.7]) and sym["win_rate"] is None
    markdown = "\n".join(seed_markdown(aggregated))
    s = seed_summary([1.0, 1.2, 1.1])
    assert (
        f"| tiny | toy | none | 5 | 0, 1, 2 | {s.mean:.3f} ± {(s.ci_high - s.ci_low) / 2:.3f} (3) |"
        in markdown
    )
    assert ONE_SEED_NOTE not in markdown
    as_json = seed_json(aggregated)
    assert as_json[0]["final_loss"]["ci_low"] == s.ci_low and json.dumps(as_json)

    one_seed = seed_rows([r for r in rows if r["seed"] == 0])
    assert "\n".join(seed_markdown(one_seed)).count("|") == 0 and ONE_SEED_NOTE in seed_markdown(one_seed)
    assert "intervals over seeds are undefined" in ONE_SEED_NOTE


@pytest.mark.slow
def test_a_grid_with_two_seeds_summarises_over_seeds(tmp_path):
    from test_grid import tiny_grid

    from symnoise.grid import read_stages, run_grid, validate_grid

    data = tiny_grid(tmp_path)
    data["axes"]["seed"] = [0, 1]
    grid = validate_grid(data)
    outcome = run_grid(grid, log=lambda line: None)
    assert [c.status for c in outcome.cells] == ["finished"] * 4
    summary = json.loads((tmp_path / "grid/summary.json").read_text())
    by_method = {r["method"]: r for r in summary["seeds"]}
    assert by_method["none"]["seeds"] == by_method["symnoise"]["seeds"] == [0, 1]
    for method, row in by_method.items():
        losses = [c["reference_loss"] for c in summary["cells"] if c["method"] == method]
        assert row["reference_loss"] == {**seed_summary(losses)._asdict(), "note": None}

    def per_prompt(method: str, seed: int) -> list[float]:
        (run,) = [c.run_dir for c in grid.cells if (c.method, c.seed) == (method, seed)]
        rows = json.loads((run / "eval" / REFERENCE_LOSS_FILE).read_text())["per_example"]
        assert len(rows) == 6 and "per_example" not in read_stages(run)["reference_loss"]
        return [r["loss"] for r in rows]

    (row,) = [r for r in summary["comparisons"]["rows"] if r["metric"] == "reference_loss"]
    assert (row["a"], row["b"], row["kind"]) == ("base", "SymNoise", "vs base")
    means = {(m, s): sum(per_prompt(m, s)) / 6 for m in ("none", "symnoise") for s in (0, 1)}
    direct = seed_difference([means["none", s] for s in (0, 1)], [means["symnoise", s] for s in (0, 1)], True)
    assert_close(row["difference"], direct.difference) and assert_close(row["ci_low"], direct.ci_low)
    first = paired_difference(per_prompt("none", 0), per_prompt("symnoise", 0))
    assert_close(row["per_seed"][0]["difference"], first.difference)
    assert_close(row["per_seed"][0]["ci_high"], first.ci_high)
    markdown = (tmp_path / "grid/summary.md").read_text()
    assert "## Over seeds" in markdown and "| tiny-llama | toy | symnoise | 5 | 0, 1 |" in markdown
    assert "| Alpaca | SymNoise − base | held-out ref. loss | 0, 1 |" in markdown
    assert "\n\n## Over seeds\n" in markdown
    # outputs of 2 words: no repetition on the first 5 words, said in words rather than shown as a number
    assert (
        "| 2-gram rep. (%) | 0 | 0 | – | – | – | – | interval undefined over prompts (seed 0): no paired values |"
        in (markdown)
    )
    assert "not compared: no value on some seed (e.g. no output of 5 words or more)" in markdown
    report = json.loads((tmp_path / "grid/report/report.json").read_text())
    assert report["paired_comparisons"]["rows"] == summary["comparisons"]["rows"]


def test_runs_without_a_seed_count_as_one_unknown_seed(seed_runs):
    chosen = [seed_runs[("uniform", 1)], seed_runs[("symnoise", 2)]]
    for run in chosen:
        (run / "config.yaml").unlink()
    comparisons = build_comparisons(load_runs(chosen))
    row = find(comparisons, "NEFT", "SymNoise", "length_chars")
    assert row.seeds == [None] and row.headline[3] == "prompts (seed unknown)"
    assert row.verdict.endswith(f"over prompts (seed unknown); {ONE_SEED}")
    assert comparisons.notes == [
        "runs without training.seed in config.yaml count as one seed of unknown value"
    ]
