"""``symnoise judge``: AlpacaEval win rate of model outputs against reference outputs with an LLM judge.

``--annotator`` picks the ``alpaca_eval`` annotator (default ``alpaca_eval_gpt4``, AlpacaEval 1); its reference
outputs (text-davinci-003 for AlpacaEval 1, gpt4_1106_preview for AlpacaEval 2) come from the package's loaders
online or from the data folder offline, unless ``--reference`` names a file. The OpenAI-compatible judge reads its
settings from flags or the environment: base URL from ``SYMNOISE_JUDGE_BASE_URL`` or ``OPENAI_BASE_URL``, model
from ``SYMNOISE_JUDGE_MODEL`` (default: the annotator's), and the key from ``SYMNOISE_JUDGE_API_KEY`` or
``OPENAI_API_KEY`` (the key is never taken from the command line, where other users could read it).

Exit status: 0 when every example has a verdict, 3 when some have none (the annotations are written all the same;
a re-run retries failed requests, ``--retry-nulls`` also re-asks unparsable answers), 2 for bad input, 1 when the
judge refused to work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from symnoise import layout
from symnoise.evaluation import annotators as A
from symnoise.evaluation import judge as J
from symnoise.evaluation import references as R
from symnoise.evaluation import sources
from symnoise.evaluation.judge_clients import (
    BASE_URL_VARIABLES,
    DEFAULT_BASE_URL,
    JUDGE_KINDS,
    KEY_VARIABLES,
    JudgeSettings,
    make_judge,
)
from symnoise.evaluation.judge_inputs import load_examples

EXIT_INCOMPLETE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"The API key is read from {' or '.join(KEY_VARIABLES)}, never from a flag. Writes "
        f"{layout.ANNOTATIONS}, {layout.JUDGE_METRICS} and {layout.JUDGE_CACHE} (re-runs reuse it) to --out."
    )
    parser.add_argument(
        "outputs", type=Path, help="AlpacaEval model_outputs.json (list of instruction/output)"
    )
    parser.add_argument(
        "--annotator",
        default=A.DEFAULT_ANNOTATOR,
        help=f"alpaca_eval annotator configuration (default {A.DEFAULT_ANNOTATOR}: AlpacaEval 1; "
        f"chatgpt_fn: its ChatGPT judge; {A.AE2_ANNOTATOR}: AlpacaEval 2), or {A.PAIRWISE_V1} "
        "(symnoise's own prompt, not comparable with AlpacaEval)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="reference outputs (JSON list or JSONL); default: the "
        "annotator's AlpacaEval reference, from --data-dir when given, else the alpaca_eval package",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"local data folder: the reference is read from DIR/alpaca_eval/ (default: "
        f"${sources.DATA_DIR_ENV}; without either, the alpaca_eval package's loader fetches it)",
    )
    parser.add_argument(
        "--judge",
        choices=JUDGE_KINDS,
        default="openai",
        help="openai: any OpenAI-compatible server (default); hf: a local causal LM; alpaca_eval: "
        "the alpaca_eval package end to end (its own client and cache, no resume)",
    )
    parser.add_argument(
        "--model",
        help="judge model: served model name (openai; env SYMNOISE_JUDGE_MODEL; default "
        "the annotator's, e.g. gpt-4), or path / hub name (hf)",
    )
    parser.add_argument(
        "--base-url",
        help=f"chat-completions base URL (env {' or '.join(BASE_URL_VARIABLES)}; default {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="override the annotator's max_tokens (reasoning models "
        "need more: their reasoning counts against it)",
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: OUTPUTS_STEM_judged next to OUTPUTS)"
    )
    parser.add_argument("--limit", type=int, help="judge only the first N outputs")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the order of the two outputs (default 0, alpaca_eval's)"
    )
    parser.add_argument(
        "--max-retries", type=int, default=4, help="retries per example after a transient failure"
    )
    parser.add_argument(
        "--backoff", type=float, default=1.0, help="seconds before the first retry; doubles each time"
    )
    parser.add_argument("--retry-budget", type=int, default=200, help="retries allowed over the whole run")
    parser.add_argument(
        "--max-reasks",
        type=int,
        default=2,
        help="times an unparsable answer is asked again before it is recorded as null",
    )
    parser.add_argument(
        "--retry-nulls", action="store_true", help="ask again the examples cached with no verdict"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--workers", type=int, default=4, help="parallel requests (openai judge)")


@contextmanager
def _warnings_on_stderr():
    """symnoise's own warnings (retries, the reference's source) on stderr, prefixed, once each, while the command
    runs.

    The handler goes on the ``symnoise`` logger, not the root one: libraries such as ``huggingface_hub`` print
    through their own handler and also pass their records up to the root, so a root handler printed each of their
    lines a second time."""
    logger, handler = logging.getLogger("symnoise"), logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("symnoise judge: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def run(args: argparse.Namespace) -> int:
    with _warnings_on_stderr():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        _check_numbers(args)
        annotator = (
            None
            if args.judge == "alpaca_eval"
            else A.load_annotator(args.annotator, seed=args.seed, max_tokens=args.max_tokens)
        )
        reference = _reference(args)
        load_examples(args.outputs, reference)  # fail on bad input before a model is loaded or a request sent
        judge = _make_judge(args, annotator)
        result = J.judge_outputs(
            args.outputs,
            reference,
            judge,
            _out_dir(args),
            annotator=annotator,
            limit=args.limit,
            retry=J.RetryPolicy(
                max_attempts=args.max_retries + 1,
                base_delay=args.backoff,
                max_total_retries=args.retry_budget,
            ),
            workers=args.workers if args.judge == "openai" else 1,
            max_reasks=args.max_reasks,
            retry_nulls=args.retry_nulls,
            progress=_Progress(),
        )
    except (J.JudgeInputError, A.AnnotatorError, R.ReferenceError) as err:
        print(f"symnoise judge: error: {err}", file=sys.stderr)
        return 2
    except J.JudgeFatalError as err:
        print(f"symnoise judge: stopped: {err}", file=sys.stderr)
        return 1
    stats = result.stats.as_dict()
    print(
        "requests {requests}, retries {retries}, re-asks {reasks}, cached {cached}, identical {identical}, "
        "unparsable {unparsable}, failed {failed}".format(**stats),
        file=sys.stderr,
    )
    if stats["truncated"]:
        print(
            f"{stats['truncated']} judge prompt(s) had outputs shortened to fit the judge's context "
            "(see prompt_truncated in the annotations)",
            file=sys.stderr,
        )
    print(f"{format_metrics(result.metrics)} -> {_out_dir(args)}")
    missing = result.metrics["n_null"]
    if missing:
        print(
            f"symnoise judge: incomplete: {missing} of {len(result.annotations)} examples have no verdict "
            f"(unparsable {stats['unparsable']}, failed {stats['failed']}); the win rate leaves them out. "
            "Re-run to retry failed requests; add --retry-nulls to re-ask unparsable answers.",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return 0


def _reference(args: argparse.Namespace) -> Path | list[dict]:
    if args.reference:
        return args.reference
    folder = sources.data_dir(
        args.data_dir
    )  # a named local folder is used as such; else the package's loader
    rows, source = R.load_reference_outputs(
        R.reference_set_for(args.annotator), folder, offline=True if folder is not None else None
    )
    print(f"reference outputs: {source}", file=sys.stderr)
    return rows


def _make_judge(args: argparse.Namespace, annotator: A.Annotator | None):
    """The judge of ``--judge``, built by the one factory from the flags (after the checks that only flags need)."""
    if args.judge == "hf":
        if not args.model:
            raise J.JudgeInputError("--judge hf needs --model (a local folder or hub name)")
        if annotator.wants_choice:
            raise J.JudgeInputError(
                f"--judge hf cannot serve {annotator.name}: it reads log-probabilities of an "
                "OpenAI-compatible server; use --judge openai (e.g. a local vLLM server)"
            )
    settings = JudgeSettings(
        kind=args.judge,
        model=args.model,
        alpaca_eval_config=args.annotator,
        base_url=args.base_url,
        timeout=args.timeout,
        max_tokens=args.max_tokens,
    )
    return make_judge(settings, annotator)


def _check_numbers(args: argparse.Namespace) -> None:
    for name, low in (
        ("limit", 1),
        ("max_retries", 0),
        ("retry_budget", 0),
        ("workers", 1),
        ("max_reasks", 0),
        ("max_tokens", 1),
    ):
        value = getattr(args, name)
        if value is not None and value < low:
            raise J.JudgeInputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.timeout <= 0 or args.backoff < 0:
        raise J.JudgeInputError("--timeout must be positive and --backoff not negative")


def _out_dir(args: argparse.Namespace) -> Path:
    return args.out or layout.judged_dir(args.outputs)


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line: the win rate with its standard error and the counts."""
    rate, err = metrics["win_rate"], metrics["standard_error"]
    head = (
        "win_rate n/a" if rate is None else f"win_rate {rate:.2f}" + ("" if err is None else f" +- {err:.2f}")
    )
    counts = ", ".join(f"{k} {metrics[k]}" for k in ("n_wins", "n_wins_base", "n_draws", "n_total", "n_null"))
    return f"{head} ({counts})"


class _Progress:
    """Prints ``judged i/n`` to stderr about twenty times per run."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, done: int, total: int, stats: J.RunStats) -> None:
        self.step = self.step or max(1, total // 20)
        if done % self.step == 0 or done == total:
            print(
                f"judged {done}/{total} (requests {stats.requests}, retries {stats.retries}, "
                f"cached {stats.cached})",
                file=sys.stderr,
                flush=True,
            )
