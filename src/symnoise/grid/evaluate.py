"""The evaluation pieces of a grid cell that no other module offers as one function: the prompt subset, the
held-out loss of reference answers, and building the judge from the grid's settings (keys from the environment).

Generation, output statistics, judging and the leaderboard themselves are `symnoise.generation`,
`symnoise.evaluation.stats`, `symnoise.evaluation.judge` and `symnoise.evaluation.leaderboard`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from ..data import Example
from ..evaluation import sources
from ..files import write_json_lines_atomic
from ..generation import Prompt, load_prompts
from ..synthetic import make_task_examples
from .cells import synthetic_dir
from .layout import SYNTHETIC_EVAL, SYNTHETIC_TRAIN
from .sections import GridSpec, JudgeSection

SYNTHETIC_SIZES = (2200, 220)
# What the alpaca_eval package reads its OpenAI credentials from (its constants module).
ALPACA_EVAL_KEY_VARIABLES = ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH")


def write_synthetic_world(spec: GridSpec, seed: int = 0) -> Path:
    """Write the synthetic train and held-out sets (JSONL, instruction/input/output) once; return the folder."""
    folder = synthetic_dir(spec)
    if (folder / SYNTHETIC_EVAL).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    train, held_out = make_task_examples(*SYNTHETIC_SIZES, seed=seed)
    for name, examples in ((SYNTHETIC_TRAIN, train), (SYNTHETIC_EVAL, held_out)):
        rows = (
            {"instruction": e.instruction, "input": e.input, "output": e.output, "dataset": "synthetic"}
            for e in examples
        )
        write_json_lines_atomic(folder / name, rows)
    return folder


def data_folder(spec: GridSpec) -> Path | None:
    """The local data folder of the evaluation (evaluation.data_dir, else $SYMNOISE_DATA_DIR); None: online."""
    return sources.data_dir(None, spec.evaluation.data_dir)


def local_evaluation_path(spec: GridSpec, value: str) -> Path | None:
    """The local file a prompts/references value stands for; None for a named source read from the hub."""
    if not sources.is_alpaca_eval_name(value):
        return Path(value)
    return sources.resolve_alpaca_eval(value, data_folder(spec)).local_path


def needs_synthetic(spec: GridSpec) -> bool:
    """Whether any configured file is missing and falls back to the synthetic set."""
    evaluation = spec.evaluation
    files = []
    if evaluation.fallback:
        files = [local_evaluation_path(spec, v) for v in (evaluation.prompts, evaluation.references) if v]
    files += [d.path for d in spec.axes.dataset if d.fallback]
    files += [spec.pretrain.text] if spec.pretrain and spec.pretrain.fallback else []
    return any(f and not Path(f).is_file() for f in files) or bool(spec.pretrain and not spec.pretrain.text)


def evaluation_file(spec: GridSpec, name: str) -> Path | None:
    """``prompts`` or ``references``: the configured file or named source (a local file, or the hub file in the
    hub cache, see `symnoise.evaluation.sources`), or the synthetic held-out set when a local file is missing."""
    value = getattr(spec.evaluation, name)
    if value is None:
        return None
    local = local_evaluation_path(spec, value)
    if local is None:
        return sources.alpaca_eval_file(value)
    if local.is_file() or spec.evaluation.fallback != "synthetic":
        return local
    return synthetic_dir(spec) / SYNTHETIC_EVAL


def spread(count: int, subset: int | None) -> list[int]:
    """``subset`` indices spread evenly over ``range(count)`` (all of them when subset is None or larger)."""
    if subset is None or subset >= count:
        return list(range(count))
    return [i * count // subset for i in range(subset)]


def evaluation_prompts(spec: GridSpec) -> list[Prompt]:
    """The prompts to generate for, after the evenly spread subset."""
    path = evaluation_file(spec, "prompts")
    prompts = load_prompts(path)
    return [prompts[i] for i in spread(len(prompts), spec.evaluation.subset)]


def reference_examples(spec: GridSpec, prompts: Sequence[Prompt]) -> list[Example]:
    """One example per prompt with a reference output (matched by instruction); prompts without one are left out."""
    from ..evaluation.judge_inputs import load_records

    path = evaluation_file(spec, "references")
    by_instruction = {row["instruction"]: row for row in load_records(path)}
    examples = []
    for prompt in prompts:
        row = by_instruction.get(prompt.instruction)
        if row is not None:
            examples.append(
                Example(
                    prompt.instruction,
                    prompt.input or str(row.get("input", "") or ""),
                    row["output"],
                    f"{path}:{prompt.dataset}",
                )
            )
    return examples


def judge_annotator(section: JudgeSection):
    """The annotator of the openai judge (its prompt, parser and decoding, as `symnoise judge --annotator` loads
    it); None for the other kinds, which keep their own defaults."""
    from ..evaluation.annotators import load_annotator

    return load_annotator(section.annotator, seed=section.seed) if section.kind == "openai" else None


def judge_settings(section: JudgeSection):
    """The section as the judge factory's settings: model, URL and key from the environment variables it names
    (then ``$OPENAI_BASE_URL`` for the URL, as `symnoise judge`), messages naming the section's fields."""
    from ..evaluation.judge_clients import JudgeSettings

    return JudgeSettings(
        kind=section.kind,
        model=section.model,
        alpaca_eval_config=section.annotators,
        base_url_env=(section.base_url_env, "OPENAI_BASE_URL"),
        default_base_url=section.default_base_url,
        model_env=section.model_env,
        api_key_env=tuple(section.api_key_env),
        timeout=section.timeout,
        no_model="evaluation.judge: annotator {annotator} has no model; set evaluation.judge.model or "
        "${model_env}",
        no_key="evaluation.judge: {base_url} needs a key in {dollar_keys}",
    )


def build_judge(section: JudgeSection, annotator=None):
    """The judge the grid asks for; the OpenAI-compatible one takes model, URL and key from the environment and
    sends ``annotator``'s request (loaded from the section when not given), exactly as `symnoise judge` does."""
    from ..evaluation.judge_clients import make_judge

    if section.kind == "openai":
        annotator = annotator or judge_annotator(section)
    return make_judge(judge_settings(section), annotator)


def judge_problem(section: JudgeSection | None) -> str | None:
    """What keeps the judge from running, found without sending a request; None when nothing does."""
    if section is None:
        return None
    if section.kind == "openai":
        from ..evaluation.annotators import AnnotatorError
        from ..evaluation.judge_inputs import JudgeInputError

        try:
            build_judge(section)
        except AnnotatorError as error:
            return f"evaluation.judge.annotator: {error}"
        except JudgeInputError as error:
            return str(error)
    elif section.kind == "alpaca_eval":
        if importlib.util.find_spec("alpaca_eval") is None:
            return 'evaluation.judge: kind alpaca_eval needs the alpaca_eval package (pip install "symnoise[eval]")'
        if not any(os.environ.get(v) for v in ALPACA_EVAL_KEY_VARIABLES):
            return (
                f"evaluation.judge: the alpaca_eval annotators {section.annotators} need an OpenAI key: set "
                f"{' or '.join(ALPACA_EVAL_KEY_VARIABLES)}"
            )
    return None


def leaderboard_source(spec: GridSpec) -> sources.LeaderboardSource:
    """Where the leaderboard stage reads its tasks: the section's folder, the evaluation's, or the harness online."""
    section = spec.evaluation.leaderboard
    folder = sources.data_dir(section.data_dir, spec.evaluation.data_dir)
    return sources.resolve_leaderboard(folder, online=section.online)


def unreachable_inputs(spec: GridSpec) -> list[str]:
    """Every evaluation input the grid will need that cannot be read now (files, hub files, judge, harness)."""
    evaluation, problems = spec.evaluation, []
    for name in ("prompts", "references"):
        value = getattr(evaluation, name)
        if not value:
            continue
        local = local_evaluation_path(spec, value)
        if local is None:
            problem = sources.check_alpaca_eval(value)
            if problem:
                problems.append(
                    f"evaluation.{name}: {sources.resolve_alpaca_eval(value).describe()}: {problem}"
                )
        elif not local.is_file() and evaluation.fallback != "synthetic":
            problems.append(f"evaluation.{name}: {local} not found")
    judge = judge_problem(evaluation.judge)
    if judge:
        problems.append(judge)
    if evaluation.leaderboard:
        problems += sources.check_leaderboard(evaluation.leaderboard.tasks, leaderboard_source(spec))
    return problems
