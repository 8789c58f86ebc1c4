"""Pairwise LLM judging of model outputs against reference outputs: AlpacaEval's annotators, resumable.

Each model output (``output_2``) is shown to a judge next to the reference output (``output_1``) for the same
instruction. The prompt, the order of the two outputs, the parsing of the answer and the un-switching of a verdict
given on switched outputs come from an annotator (:mod:`symnoise.evaluation.annotators`): by default
``alpaca_eval_gpt4``, taken from the installed ``alpaca_eval`` package. As in ``alpaca_eval``, an output identical
to the reference is a draw (preference 1.5) without a request.

This module is the loop around the annotator, the part ``alpaca_eval`` lacks: verdicts go to a crash-safe cache as
they arrive (:mod:`symnoise.evaluation.judge_cache`), so a killed run resumes without paying any example twice;
transient failures are retried with exponential backoff (or the server's ``Retry-After``) within a bounded budget;
an answer the annotator cannot parse is asked again a bounded number of times, then recorded as null with its raw
text (``retry_nulls`` asks recorded nulls again); the API key is redacted from everything written; a judge that
knows its context (``fit_messages``) gets prompts that fit it. The result is written as AlpacaEval annotations
(``preference``: 1 = reference wins, 2 = model wins, 1.5 = draw, fractional for weighted annotators, null = no
verdict) plus the win rate (:func:`symnoise.evaluation.winrate.head_to_head`).

Inputs are read by :mod:`symnoise.evaluation.judge_inputs`; the judges themselves (an OpenAI-compatible server, a
local model, the ``alpaca_eval`` package end to end) and the one function that builds them are in
:mod:`symnoise.evaluation.judge_clients`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from symnoise import layout
from symnoise.evaluation.annotators import DEFAULT_ANNOTATOR, Annotator, load_annotator
from symnoise.evaluation.judge_cache import JudgmentCache, cache_key
from symnoise.evaluation.judge_clients import (
    AlpacaEvalJudge,
    Judge,
    JudgeFatalError,
    TransientJudgeError,
    redact,
)
from symnoise.evaluation.judge_inputs import Example, JudgeInputError, load_examples
from symnoise.evaluation.winrate import head_to_head
from symnoise.files import write_json_atomic

__all__ = [  # the judging API; the errors are those a caller of judge_outputs catches
    "DRAW",
    "JudgeFatalError",
    "JudgeInputError",
    "JudgeResult",
    "RetryPolicy",
    "RunStats",
    "judge_examples",
    "judge_outputs",
    "judge_metrics",
]

log = logging.getLogger(__name__)

DRAW = 1.5  # alpaca_eval's preference for an output identical to the reference


@dataclass
class RetryPolicy:
    """Exponential backoff for transient failures, bounded per example and over the whole run.

    Attempt k (1-based) that fails waits ``min(max_delay, base_delay * 2**(k-1))`` seconds, or the server's
    Retry-After when given (capped the same way). An example gives up after ``max_attempts`` attempts; once
    ``max_total_retries`` retries have been spent in the run, failing examples give up after one attempt.
    ``sleep``: how to wait (tests pass their own); by default the wait ends early when the run is stopped, so a
    stopped run does not sit out its backoffs.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_total_retries: int = 200
    sleep: Callable[[float], None] | None = None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wanted = retry_after if retry_after is not None else self.base_delay * 2 ** (attempt - 1)
        return max(0.0, min(self.max_delay, wanted))


@dataclass
class RunStats:
    """Counts of one judging run: requests sent (retries and re-asks included), retries after transient failures,
    re-asks after unparsable answers, verdicts taken from the cache, draws given without a request (output
    identical to the reference), and the examples that ended judged, null for an unparsable answer, or null because
    every attempt failed; ``truncated``: examples whose verdict was given on a prompt with shortened outputs."""

    requests: int = 0
    retries: int = 0
    reasks: int = 0
    cached: int = 0
    identical: int = 0
    judged: int = 0
    unparsable: int = 0
    failed: int = 0
    truncated: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass
class JudgeResult:
    """What :func:`judge_outputs` wrote (annotations in input order, metrics) and the run's counts."""

    annotations: list[dict[str, Any]]
    metrics: dict[str, Any]
    stats: RunStats


class _RetryBudget:
    def __init__(self, total: int):
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def _call_with_retries(
    judge: Judge,
    messages: list[dict[str, str]],
    policy: RetryPolicy,
    budget: _RetryBudget,
    stats: RunStats,
    stop: threading.Event,
) -> tuple[str | None, str | None]:
    """(completion, None) on success, or (None, why it gave up) once the retry budget is spent."""
    for attempt in range(1, policy.max_attempts + 1):
        stats.add(requests=1)
        try:
            return judge.complete(messages), None
        except TransientJudgeError as err:
            reason = redact(str(err), judge.secrets)
            if attempt == policy.max_attempts:
                return None, f"{reason}; gave up after {attempt} attempts"
            if stop.is_set():
                return None, f"{reason}; run stopped"
            if not budget.take():
                return None, f"{reason}; the run's retry budget ({policy.max_total_retries}) is spent"
            wait = policy.delay(attempt, err.retry_after)
            log.warning(
                "judge: %s (attempt %d/%d), retrying in %.1f s", reason, attempt, policy.max_attempts, wait
            )
            stats.add(retries=1)
            if policy.sleep is not None:
                policy.sleep(wait)
            else:
                stop.wait(wait)
            if stop.is_set():  # a fatal error elsewhere while this example waited: send nothing more
                return None, f"{reason}; run stopped"
    raise AssertionError("unreachable")  # the loop always returns on its last attempt


def _judge_messages(
    judge: Judge, annotator: Annotator, index: int, instruction: str, output_a: str, output_b: str
) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """The annotator's messages: fitted to the judge's context when it can say how (``fit_messages``)."""
    fit = getattr(judge, "fit_messages", None)
    if fit is None:
        return annotator.messages(instruction, output_a, output_b), None
    return fit(instruction, output_a, output_b, index=index, build=annotator.messages)


def _truncation_record(truncation: dict[str, Any] | None, model_first: bool) -> dict[str, Any] | None:
    """``fit_messages``'s shown-order (a, b) lengths as output_1 (reference) and output_2 (model) lengths."""
    if truncation is None:
        return None
    model, reference = (
        ("output_a_tokens", "output_b_tokens") if model_first else ("output_b_tokens", "output_a_tokens")
    )
    return {
        "context_tokens": truncation["context_tokens"],
        "max_new_tokens": truncation["max_new_tokens"],
        "prompt_tokens": truncation["prompt_tokens"],
        "output_1_tokens": truncation[reference],
        "output_2_tokens": truncation[model],
    }


def _redact_completion(completion: str | dict[str, Any], secrets: Sequence[str]) -> str | dict[str, Any]:
    if isinstance(completion, str):
        return redact(completion, secrets)
    return json.loads(redact(json.dumps(completion, ensure_ascii=False), secrets))


@dataclass
class _Run:
    """Everything one judging run shares between its examples."""

    judge: Judge
    annotator: Annotator
    cache: JudgmentCache
    policy: RetryPolicy
    budget: _RetryBudget
    stats: RunStats
    stop: threading.Event
    max_reasks: int
    retry_nulls: bool


def _ask(
    run: _Run, index: int, example: Example, shown: tuple[str, str], key: str, switched: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """Ask the judge (re-asking unparsable answers up to ``max_reasks`` times) and cache the outcome.

    Returns ``(record, None)``, the record holding the verdict in shown order or null with the last raw answer, or
    ``(None, why)`` when every attempt failed (nothing is cached then, so a re-run asks again)."""
    messages, truncation = _judge_messages(run.judge, run.annotator, index, example.instruction, *shown)
    truncated = _truncation_record(truncation, switched)
    for ask in range(1 + run.max_reasks):
        if ask:
            run.stats.add(reasks=1)
        completion, failure = _call_with_retries(
            run.judge, messages, run.policy, run.budget, run.stats, run.stop
        )
        if completion is None:
            return None, failure
        completion = _redact_completion(completion, run.judge.secrets)
        verdict = run.annotator.parse(completion)
        if verdict is not None:
            break
    record = {
        "key": key,
        "judge": run.judge.judge_id,
        "annotator": run.annotator.name,
        "verdict": verdict,
        "raw_completion": completion,
        "asks": ask + 1,
    }
    if truncated is not None:
        record["prompt_truncated"] = truncated
    run.cache.put(record, replace=True)
    return record, None


def _judge_one(index: int, example: Example, run: _Run) -> dict[str, Any]:
    annotator, judge_id = run.annotator, run.judge.judge_id
    if example.output == example.reference:  # alpaca_eval: a draw, and no request
        run.stats.add(identical=1)
        return example.annotation(judge_id, annotator.name, DRAW, None, None, None)
    switched = annotator.is_switched(example.instruction, example.reference, example.output)
    shown = (example.output, example.reference) if switched else (example.reference, example.output)
    key = cache_key(f"{judge_id}/{annotator.cache_id}", example.instruction, *shown)
    record = run.cache.get(key)
    if record is not None and (record["verdict"] is not None or not run.retry_nulls):
        run.stats.add(cached=1)
    else:
        record, failure = _ask(run, index, example, shown, key, switched)
        if record is None:
            run.stats.add(failed=1)
            return example.annotation(judge_id, annotator.name, None, switched, None, failure)
    truncated = record.get("prompt_truncated")
    if truncated is not None:
        run.stats.add(truncated=1)
    verdict, raw = record["verdict"], record["raw_completion"]
    if verdict is None:
        run.stats.add(unparsable=1)
        return example.annotation(
            judge_id, annotator.name, None, switched, raw, "unparsable verdict", truncated
        )
    run.stats.add(judged=1)
    if verdict == 0:  # a draw in alpaca_eval's older encoding, which its parsers may still give
        verdict = DRAW
    preference = annotator.unswitch(verdict, switched)
    return example.annotation(judge_id, annotator.name, preference, switched, raw, None, truncated)


def judge_examples(
    examples: Sequence[Example],
    judge: Judge,
    cache: JudgmentCache,
    *,
    annotator: Annotator | None = None,
    seed: int = 0,
    retry: RetryPolicy | None = None,
    workers: int = 1,
    max_reasks: int = 2,
    retry_nulls: bool = False,
    progress: Callable[[int, int, RunStats], None] | None = None,
) -> tuple[list[dict], RunStats]:
    """Judge every example (cached verdicts are reused), returning annotations in input order and run counts.

    ``annotator`` defaults to ``alpaca_eval_gpt4`` with ``seed``. Every example ends with a preference or with null
    and a ``null_reason``. ``retry_nulls``: ask again the examples whose cached verdict is null. A
    :class:`JudgeFatalError` stops the run: no new requests start, those in flight finish (and are cached), and the
    error propagates.
    """
    policy = retry or RetryPolicy()
    annotator = annotator or load_annotator(DEFAULT_ANNOTATOR, seed=seed)
    adopt = getattr(judge, "adopt_annotator", None)
    if adopt is not None:
        adopt(annotator)
    run = _Run(
        judge=judge,
        annotator=annotator,
        cache=cache,
        policy=policy,
        budget=_RetryBudget(policy.max_total_retries),
        stats=RunStats(),
        stop=threading.Event(),
        max_reasks=max_reasks,
        retry_nulls=retry_nulls,
    )
    results: list[dict[str, Any] | None] = [None] * len(examples)

    def work(index: int) -> tuple[int, dict[str, Any] | None]:
        if run.stop.is_set():
            return index, None
        try:
            return index, _judge_one(index, examples[index], run)
        except BaseException:
            run.stop.set()  # here, not in the caller, so that this worker starts no further request
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(work, i) for i in range(len(examples))]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                index, annotation = future.result()
                results[index] = annotation
                if progress:
                    progress(done, len(examples), run.stats)
        except BaseException:
            run.stop.set()
            for future in futures:
                future.cancel()
            raise
    return [r for r in results if r is not None], run.stats


# ---------------------------------------------------------------------------------------------- top level

_METRIC_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total")


def judge_metrics(preferences: Sequence[float | None]) -> dict[str, Any]:
    """The win rate a judging run reports (``metrics.json``): :func:`~symnoise.evaluation.winrate.head_to_head`'s
    metrics, without its ``discrete_win_rate``, and ``n_null``, the examples that have no verdict."""
    metrics = head_to_head(preferences)
    return {
        **{key: metrics[key] for key in _METRIC_KEYS},
        "n_null": len(preferences) - metrics["n_total"],
    }


def judge_outputs(
    outputs_path: str | os.PathLike[str],
    reference: str | os.PathLike[str] | list[dict],
    judge: Judge | AlpacaEvalJudge,
    out_dir: str | os.PathLike[str],
    *,
    annotator: Annotator | None = None,
    seed: int = 0,
    limit: int | None = None,
    retry: RetryPolicy | None = None,
    workers: int = 1,
    max_reasks: int = 2,
    retry_nulls: bool = False,
    progress: Callable[[int, int, RunStats], None] | None = None,
) -> JudgeResult:
    """Judge a model-outputs file against reference outputs (a file, or rows already loaded); write annotations,
    metrics and the verdict cache.

    Both inputs are validated before the first request. ``out_dir`` receives ``annotations.json``,
    ``metrics.json`` and ``judge_cache.jsonl`` (`symnoise.layout`); re-running into the same folder reuses every
    cached verdict. ``annotator`` defaults to ``alpaca_eval_gpt4`` (with ``seed``).
    """
    examples = load_examples(outputs_path, reference)
    if limit is not None:
        examples = examples[:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(judge, AlpacaEvalJudge):
        annotations, stats, name = judge.annotate(examples), RunStats(), judge.annotators_config
    else:
        annotator = annotator or load_annotator(DEFAULT_ANNOTATOR, seed=seed)
        annotations, stats = judge_examples(
            examples,
            judge,
            JudgmentCache(out / layout.JUDGE_CACHE),
            annotator=annotator,
            retry=retry,
            workers=workers,
            max_reasks=max_reasks,
            retry_nulls=retry_nulls,
            progress=progress,
        )
        name = annotator.name
    metrics = {
        "annotator": name,
        "judge": judge.judge_id,
        "generator": examples[0].generator_model if examples else None,
        **judge_metrics([a["preference"] for a in annotations]),
    }
    write_json_atomic(out / layout.ANNOTATIONS, annotations)
    write_json_atomic(out / layout.JUDGE_METRICS, metrics)
    return JudgeResult(annotations=annotations, metrics=metrics, stats=stats)
