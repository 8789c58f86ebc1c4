"""``symnoise judge``: AlpacaEval-style win rate of model outputs against reference outputs with an LLM judge.

The OpenAI-compatible judge reads its settings from flags or the environment: ``SYMNOISE_JUDGE_BASE_URL``,
``SYMNOISE_JUDGE_MODEL``, and the key from ``SYMNOISE_JUDGE_API_KEY`` or ``OPENAI_API_KEY`` (the key is never
taken from the command line, where other users could read it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from symnoise.evaluation import judge as J
from symnoise.evaluation import sources

DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEY_VARIABLES = ("SYMNOISE_JUDGE_API_KEY", "OPENAI_API_KEY")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"The API key is read from {' or '.join(KEY_VARIABLES)}, never from a flag. Writes "
                     f"{J.ANNOTATIONS_FILENAME}, {J.METRICS_FILENAME} and {J.CACHE_FILENAME} (re-runs reuse it) to --out.")
    parser.add_argument("outputs", type=Path, help="AlpacaEval model_outputs.json (list of instruction/output)")
    parser.add_argument("--reference", type=Path, help="reference outputs (JSON list or JSONL); default: the "
                        "AlpacaEval 1 text-davinci-003 outputs, from --data-dir or the hub")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"local data folder for the default reference, DIR/alpaca_eval/{J.REFERENCE_FILENAME} "
                        f"(default: ${sources.DATA_DIR_ENV}, else the tatsu-lab/alpaca_eval hub dataset)")
    parser.add_argument("--judge", choices=["openai", "hf", "alpaca_eval"], default="openai",
                        help="openai: any OpenAI-compatible server; hf: local causal LM; alpaca_eval: its annotators")
    parser.add_argument("--model", help="judge model: served model name (openai; env SYMNOISE_JUDGE_MODEL), "
                        "path or hub name (hf), annotators config (alpaca_eval; default alpaca_eval_gpt4)")
    parser.add_argument("--base-url", help=f"chat-completions base URL (env SYMNOISE_JUDGE_BASE_URL; "
                        f"default {DEFAULT_BASE_URL})")
    parser.add_argument("--out", type=Path, help="output folder (default: OUTPUTS_STEM_judged next to OUTPUTS)")
    parser.add_argument("--limit", type=int, help="judge only the first N outputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-example order of the two outputs")
    parser.add_argument("--max-retries", type=int, default=4, help="retries per example after a transient failure")
    parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry; doubles each time")
    parser.add_argument("--retry-budget", type=int, default=200, help="retries allowed over the whole run")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--workers", type=int, default=4, help="parallel requests (openai judge)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="symnoise judge: %(message)s", level=logging.WARNING)
    try:
        _check_numbers(args)
        reference = _reference_path(args)
        J.load_examples(args.outputs, reference)  # fail on bad input before a model is loaded or a request sent
        judge = _make_judge(args)
        result = J.judge_outputs(
            args.outputs, reference, judge, _out_dir(args), seed=args.seed, limit=args.limit,
            retry=J.RetryPolicy(max_attempts=args.max_retries + 1, base_delay=args.backoff,
                                max_total_retries=args.retry_budget),
            workers=args.workers if args.judge == "openai" else 1, progress=_Progress())
    except J.JudgeInputError as err:
        print(f"symnoise judge: error: {err}", file=sys.stderr)
        return 2
    except J.JudgeFatalError as err:
        print(f"symnoise judge: stopped: {err}", file=sys.stderr)
        return 1
    stats = result.stats.as_dict()
    print("requests {requests}, retries {retries}, cached {cached}, unparsable {unparsable}, "
          "failed {failed}".format(**stats), file=sys.stderr)
    if stats["truncated"]:
        print(f"{stats['truncated']} judge prompt(s) had outputs shortened to fit the judge's context "
              "(see prompt_truncated in the annotations)", file=sys.stderr)
    print(f"{J.format_metrics(result.metrics)} -> {_out_dir(args)}")
    return 0


def _make_judge(args: argparse.Namespace):
    if args.judge == "hf":
        if not args.model:
            raise J.JudgeInputError("--judge hf needs --model (a local folder or hub name)")
        return J.HFJudge(args.model)
    if args.judge == "alpaca_eval":
        return J.AlpacaEvalJudge(args.model or "alpaca_eval_gpt4")
    model = args.model or os.environ.get("SYMNOISE_JUDGE_MODEL")
    if not model:
        raise J.JudgeInputError("--judge openai needs --model or SYMNOISE_JUDGE_MODEL (e.g. gpt-4o-mini)")
    base_url = args.base_url or os.environ.get("SYMNOISE_JUDGE_BASE_URL") or DEFAULT_BASE_URL
    api_key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
    if api_key is None and base_url == DEFAULT_BASE_URL:
        raise J.JudgeInputError(f"the OpenAI API needs a key: set {' or '.join(KEY_VARIABLES)}")
    return J.OpenAIChatJudge(base_url, model, api_key=api_key, timeout=args.timeout)


def _check_numbers(args: argparse.Namespace) -> None:
    for name, low in (("limit", 1), ("max_retries", 0), ("retry_budget", 0), ("workers", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise J.JudgeInputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.timeout <= 0 or args.backoff < 0:
        raise J.JudgeInputError("--timeout must be positive and --backoff not negative")


def _reference_path(args: argparse.Namespace) -> Path:
    if args.reference:
        return args.reference
    try:
        return sources.alpaca_eval_file("alpaca_eval", sources.data_dir(args.data_dir))
    except sources.SourceError as error:
        raise J.JudgeInputError(f"no default reference ({error}); pass --reference FILE") from None


def _out_dir(args: argparse.Namespace) -> Path:
    return args.out or args.outputs.with_name(f"{args.outputs.stem}_judged")


class _Progress:
    """Prints ``judged i/n`` to stderr about twenty times per run."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, done: int, total: int, stats: J.RunStats) -> None:
        self.step = self.step or max(1, total // 20)
        if done % self.step == 0 or done == total:
            print(f"judged {done}/{total} (requests {stats.requests}, retries {stats.retries}, "
                  f"cached {stats.cached})", file=sys.stderr, flush=True)
