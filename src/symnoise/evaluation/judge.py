"""Pairwise LLM judging of model outputs against reference outputs: AlpacaEval's annotators, resumable.

Each model output (``output_2``) is shown to a judge next to the reference output (``output_1``) for the same
instruction. The prompt, the order of the two outputs and the parsing of the answer come from an annotator
(:mod:`symnoise.evaluation.annotators`): by default ``alpaca_eval_gpt4``, taken from the installed ``alpaca_eval``
package. As in ``alpaca_eval``, an output identical to the reference is a draw (preference 1.5) without a request.

What this module adds around the annotator: verdicts go to a crash-safe cache as they arrive
(:mod:`symnoise.evaluation.judge_cache`), so a killed run resumes without paying any example twice; transient
failures are retried with exponential backoff (or the server's ``Retry-After``) within a bounded budget; an answer
the annotator cannot parse is asked again a bounded number of times, then recorded as null with its raw text
(``retry_nulls`` asks recorded nulls again); the API key is redacted from everything written. The result is
written as AlpacaEval annotations (``preference``: 1 = reference wins, 2 = model wins, 1.5 = draw, fractional for
weighted annotators, null = no verdict) plus the win rate.

Judges: any OpenAI-compatible chat-completions server (:class:`OpenAIChatJudge`), a local Hugging Face causal LM
(:class:`HFJudge`), or the ``alpaca_eval`` package end to end (:class:`AlpacaEvalJudge`, without our cache).

A judge with a known context (the local model) gets a prompt that fits it: when the prompt plus the tokens to
generate would not fit, the two outputs (never the instruction or the template) are cut from their ends to the same
token allowance (:meth:`HFJudge.fit_messages`), and the annotation's ``prompt_truncated`` records by how much
(``null`` when the prompt was shown whole); an instruction that does not fit even without the outputs is an error.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from symnoise.evaluation.annotators import (  # noqa: F401
    DEFAULT_ANNOTATOR,
    Annotator,
    build_messages,
    load_annotator,
    model_shown_first,
    parse_verdict,
    request_body,
)

# pairwise-v1's helpers lived here before symnoise.evaluation.annotators; kept importable from here
from symnoise.evaluation.annotators import PAIRWISE_V1_SYSTEM as SYSTEM_PROMPT  # noqa: F401
from symnoise.evaluation.annotators import PAIRWISE_V1_USER as USER_TEMPLATE  # noqa: F401
from symnoise.evaluation.judge_cache import JudgmentCache, cache_key

log = logging.getLogger(__name__)

REFERENCE_FILENAME = "alpaca_eval_ae1_reference_text_davinci_003.jsonl"
CACHE_FILENAME = "judge_cache.jsonl"
ANNOTATIONS_FILENAME = "annotations.json"
METRICS_FILENAME = "metrics.json"
PROMPT_VERSION = "pairwise-v1"  # cache id of symnoise_pairwise_v1 (each annotator's cache id is in every key)
DRAW = 1.5  # alpaca_eval's preference for an output identical to the reference (older files wrote 0)


class JudgeInputError(ValueError):
    """The outputs or reference file is unusable; raised before any judge request is sent. Also an example whose
    instruction does not fit the local judge's context (raised when that example's turn comes)."""


class JudgeFatalError(RuntimeError):
    """The judge cannot work at all (bad key, unknown model, missing package): the run stops at once."""


class TransientJudgeError(Exception):
    """A failure worth retrying (timeout, HTTP 429 or 5xx, dropped connection, garbled body)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Judge(Protocol):
    """What the runner needs from a judge. ``secrets`` are strings to redact from everything written.

    ``complete`` returns the answer's text, or the whole response choice (a dict, with log-probs) when the judge
    was built for an annotator that parses choices."""

    judge_id: str
    secrets: tuple[str, ...]

    def complete(self, messages: list[dict[str, str]]) -> str | dict[str, Any]: ...


@dataclass(frozen=True)
class Example:
    """One instruction with the reference output (``output_1``) and the model output (``output_2``) to compare."""

    instruction: str
    reference: str
    output: str
    generator_reference: str
    generator_model: str
    dataset: str


# ---------------------------------------------------------------------------------------------- input files


def load_records(
    path: str | os.PathLike[str], required: Sequence[str] = ("instruction", "output")
) -> list[dict]:
    """Read a JSON list or a JSONL file of objects, checking that every row has string ``required`` fields."""
    path = Path(path)
    if not path.is_file():
        raise JudgeInputError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    rows = _parse_jsonl(path, text) if path.suffix == ".jsonl" else _parse_json_list(path, text)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise JudgeInputError(f"{path}: row {index} is {type(row).__name__}, expected an object")
        for name in required:
            if name not in row:
                raise JudgeInputError(f"{path}: row {index} has no field {name!r}")
            if not isinstance(row[name], str):
                raise JudgeInputError(
                    f"{path}: row {index} field {name!r} is {type(row[name]).__name__}, expected a string"
                )
    return rows


def _parse_json_list(path: Path, text: str) -> list:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise JudgeInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(rows, list):
        raise JudgeInputError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    return rows


def _parse_jsonl(path: Path, text: str) -> list:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise JudgeInputError(f"{path}: line {number} is not valid JSON ({err})") from None
    return rows


def pair_with_references(
    outputs: list[dict],
    references: list[dict],
    outputs_path: str | os.PathLike[str],
    default_generator: str = "model",
) -> list[Example]:
    """Match each model output to the reference with the same instruction; a missing reference is an error."""
    by_instruction = {row["instruction"]: row for row in references}
    examples = []
    for index, row in enumerate(outputs):
        ref = by_instruction.get(row["instruction"])
        if ref is None:
            raise JudgeInputError(
                f"{outputs_path}: row {index} has an instruction with no reference output: "
                f"{_shorten(row['instruction'])!r}"
            )
        examples.append(
            Example(
                instruction=row["instruction"],
                reference=ref["output"],
                output=row["output"],
                generator_reference=str(ref.get("generator", "reference")),
                generator_model=str(row.get("generator", default_generator)),
                dataset=str(row.get("dataset", ref.get("dataset", ""))),
            )
        )
    return examples


def load_examples(
    outputs_path: str | os.PathLike[str], reference: str | os.PathLike[str] | list[dict]
) -> list[Example]:
    """Load and validate the outputs and the references (a file, or rows already loaded) and pair them; everything
    that can be wrong is found here, before judging."""
    outputs = load_records(outputs_path)
    references = reference if isinstance(reference, list) else load_records(reference)
    return pair_with_references(outputs, references, outputs_path, default_generator=Path(outputs_path).stem)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------ prompt and verdicts


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text


# -------------------------------------------------------------------------------------------------- judges


class OpenAIChatJudge:
    """Any OpenAI-compatible ``POST {base_url}/chat/completions`` server: OpenAI, vLLM, llama.cpp, Ollama.

    ``params`` is the request body without ``messages`` (an annotator's ``request_params``: ``max_tokens``,
    ``temperature``, tools, log-probs, ...); by default pairwise-v1's greedy 16 tokens. Reasoning models get
    ``max_completion_tokens`` instead of ``max_tokens`` (:func:`~symnoise.evaluation.annotators.request_body`).
    ``return_choice``: return the whole response choice (for log-prob parsers) instead of its text. The API key is
    sent only in the Authorization header and is redacted from every message this class produces.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int | None = None,
        params: dict[str, Any] | None = None,
        return_choice: bool | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        if params is None and max_tokens is not None:
            params = {"temperature": 0, "max_tokens": max_tokens}
        self._explicit = params is not None
        self.params = request_body(
            params if params is not None else {"temperature": 0, "max_tokens": 16}, model
        )
        self.return_choice = bool(return_choice)
        self._explicit_choice = return_choice is not None
        self._api_key = api_key or ""
        self.secrets = (self._api_key,) if self._api_key else ()
        self.judge_id = f"openai:{model}"

    def __repr__(self) -> str:
        return f"OpenAIChatJudge(url={self.url!r}, model={self.model!r})"

    def adopt_annotator(self, annotator: Annotator) -> None:
        """Take the annotator's decoding settings (and choice parsing) unless they were given explicitly."""
        if not self._explicit:
            self.params = request_body(annotator.request_params, self.model)
        if not self._explicit_choice:
            self.return_choice = annotator.wants_choice

    def complete(self, messages: list[dict[str, str]]) -> str | dict[str, Any]:
        body = json.dumps({"messages": messages, **self.params}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            raise TransientJudgeError(
                self._clean(f"connection failed: {type(err).__name__}: {reason}")
            ) from None
        return self._content(raw)

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        detail = self._clean(_read_error_body(err))
        if err.code in (408, 429) or err.code >= 500:
            return TransientJudgeError(f"HTTP {err.code}", retry_after=_retry_after(err))
        hint = {
            401: " Check the API key (SYMNOISE_JUDGE_API_KEY or OPENAI_API_KEY).",
            403: " The key is not allowed to use this model or endpoint.",
            404: " Check --base-url (most servers want it to end in /v1) and --model.",
        }.get(err.code, "")
        return JudgeFatalError(
            self._clean(
                f"judge endpoint {self.url} refused the request with HTTP {err.code} {err.reason}.{hint} "
                f"Server said: {detail}"
            )
        )

    def _content(self, raw: bytes) -> str | dict[str, Any]:
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice_text(choice)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise TransientJudgeError(
                self._clean(f"malformed response body: {_shorten(raw.decode('utf-8', 'replace'), 120)!r}")
            ) from None
        return {**choice, "text": text} if self.return_choice else text

    def _clean(self, text: str) -> str:
        return _redact(text, self.secrets)


def choice_text(choice: dict[str, Any]) -> str:
    """The text of a chat-completions choice as ``alpaca_eval``'s OpenAI decoder reads it: the content (``" "``
    for an empty one), or the arguments of the first tool call or of the function call when there is one."""
    message = choice["message"]
    text = message.get("content")
    if text == "":
        text = " "
    if message.get("function_call"):
        text = message["function_call"]["arguments"]
    if message.get("tool_calls"):
        text = message["tool_calls"][0]["function"]["arguments"]
    return text if isinstance(text, str) else ""


def _read_error_body(err: urllib.error.HTTPError) -> str:
    try:
        return _shorten(err.read().decode("utf-8", "replace").strip(), 300)
    except Exception:  # the body of an error response is best effort only
        return ""


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return float(err.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


class HFJudge:
    """A local Hugging Face causal LM as judge: the verdict is decoded greedily from the chat prompt.

    Pass ``model`` and ``tokenizer`` to reuse loaded objects; otherwise both are loaded from
    ``model_name_or_path`` (a local folder or a hub name). Calls are serialised: one model, one forward at a time.

    ``context_length``: the most tokens the model may see, prompt and generated tokens together; the smaller of the
    tokenizer's ``model_max_length`` (when below 1e9: tokenizers without a limit report ~1e30) and the config's
    ``max_position_embeddings``; None when neither is known (then prompts are never shortened).
    """

    def __init__(
        self,
        model_name_or_path: str,
        model: Any = None,
        tokenizer: Any = None,
        max_new_tokens: int | None = None,
        device: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.judge_id = f"hf:{model_name_or_path}"
        self.secrets: tuple[str, ...] = ()
        self._explicit = max_new_tokens is not None
        self.max_new_tokens = 12 if max_new_tokens is None else max_new_tokens
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = model or AutoModelForCausalLM.from_pretrained(model_name_or_path)
        if device:
            self.model.to(device)
        self.model.eval()
        self.context_length = context_length(self.tokenizer, self.model)
        self._lock = threading.Lock()

    def adopt_annotator(self, annotator: Annotator) -> None:
        """Generate the annotator's ``max_tokens`` unless ``max_new_tokens`` was given; log-prob annotators, which
        read an OpenAI response's log-probabilities, are refused."""
        if annotator.wants_choice:
            raise JudgeInputError(
                f"a local HF judge cannot serve {annotator.name}: it parses log-probabilities of "
                "an OpenAI-compatible server; use one (e.g. a local vLLM server)"
            )
        if not self._explicit:
            self.max_new_tokens = int(annotator.request_params.get("max_tokens", self.max_new_tokens))

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Length in tokens of the prompt :meth:`complete` gives the model for ``messages``."""
        return len(self.tokenizer(self._prompt(messages))["input_ids"])

    def fit_messages(
        self,
        instruction: str,
        output_a: str,
        output_b: str,
        index: int | None = None,
        build: Callable[[str, str, str], list[dict[str, str]]] = build_messages,
    ) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
        """The judge messages made by ``build`` (an annotator's ``messages``), with the two outputs shortened when
        the prompt would not fit the context.

        Returns ``(messages, None)`` with exactly ``build``'s messages when the prompt and
        ``max_new_tokens`` fit (or the context is unknown). Otherwise each output is cut from its end to at most
        the same number of tokens ``k`` (an output shorter than ``k`` is kept whole, and the other gets the rest),
        with ``k`` as large as fits; the instruction and the template's text are never changed. The second value
        then says ``context_tokens``, ``max_new_tokens`` and, as ``[before, after]``, ``prompt_tokens``,
        ``output_a_tokens`` and ``output_b_tokens``. An instruction that does not fit even with both outputs empty
        is a :class:`JudgeInputError` naming ``index`` and the lengths.
        """
        messages = build(instruction, output_a, output_b)
        if self.context_length is None:
            return messages, None
        budget = self.context_length - self.max_new_tokens
        before = self.prompt_tokens(messages)
        if before <= budget:
            return messages, None
        fixed = self.prompt_tokens(build(instruction, "", ""))
        if fixed > budget:
            where = "an example" if index is None else f"example {index} (row {index} of the outputs)"
            n_instruction = len(self.tokenizer(instruction, add_special_tokens=False)["input_ids"])
            raise JudgeInputError(
                f"{where}: the judge prompt is {fixed} tokens without the two outputs (the instruction alone "
                f"{n_instruction}) and {self.max_new_tokens} tokens must be generated, but the judge "
                f"{self.judge_id} has a context of {self.context_length} tokens; the instruction is never "
                f"shortened, so use a judge with a longer context"
            )
        ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in (output_a, output_b)]
        allowance = _even_allowance([len(i) for i in ids], budget - fixed)
        while True:
            texts = [
                text if len(i) <= allowance else self._decode_prefix(i, allowance)
                for text, i in zip((output_a, output_b), ids, strict=True)
            ]
            messages = build(instruction, *texts)
            after = self.prompt_tokens(messages)
            if after <= budget or allowance == 0:
                break
            # Re-tokenising the cut text inside the template can merge differently; cut a little more and retry.
            allowance -= max(1, (after - budget + 1) // 2)
            allowance = max(0, allowance)
        kept = [min(len(i), allowance) for i in ids]
        return messages, {
            "context_tokens": self.context_length,
            "max_new_tokens": self.max_new_tokens,
            "prompt_tokens": [before, after],
            "output_a_tokens": [len(ids[0]), kept[0]],
            "output_b_tokens": [len(ids[1]), kept[1]],
        }

    def _decode_prefix(self, ids: Sequence[int], n: int) -> str:
        text = self.tokenizer.decode(
            list(ids[:n]), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return text.rstrip("\ufffd")  # a byte-level token cut inside a character decodes to U+FFFD

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        inputs = self.tokenizer(self._prompt(messages), return_tensors="pt").to(self.model.device)
        n_prompt = inputs["input_ids"].shape[1]
        if self.context_length is not None and n_prompt + self.max_new_tokens > self.context_length:
            raise JudgeInputError(
                f"judge prompt of {n_prompt} tokens plus {self.max_new_tokens} to generate exceeds the context of "
                f"{self.judge_id} ({self.context_length} tokens); fit_messages() shortens the outputs to fit"
            )
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id
            )
        new_tokens = generated[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


def context_length(tokenizer: Any, model: Any) -> int | None:
    """The smaller of the tokenizer's ``model_max_length`` (if below 1e9) and ``config.max_position_embeddings``."""
    limits = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, (int, float)) and 0 < tokenizer_limit < 1e9:
        limits.append(int(tokenizer_limit))
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else None


def _even_allowance(lengths: Sequence[int], room: int) -> int:
    """The largest ``k`` with ``sum(min(length, k)) <= room``: every output keeps up to the same ``k`` tokens."""
    low, high = 0, max(lengths, default=0)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(length, middle) for length in lengths) <= room:
            low = middle
        else:
            high = middle - 1
    return low


class AlpacaEvalJudge:
    """The ``alpaca_eval`` package's pairwise annotators (e.g. ``alpaca_eval_gpt4``, ``chatgpt_fn``).

    That package does its own prompting, order randomisation, caching and retries, so this judge bypasses
    the runner here and annotates all examples in one call.
    """

    def __init__(self, annotators_config: str = "alpaca_eval_gpt4"):
        try:
            from alpaca_eval.annotators import PairwiseAnnotator
        except ImportError:
            raise JudgeFatalError(
                "the alpaca_eval judge needs the alpaca_eval package, which is not installed: "
                "run `pip install alpaca-eval`, or use --judge openai / --judge hf"
            ) from None
        self.judge_id = f"alpaca_eval:{annotators_config}"
        self.annotators_config = annotators_config
        self.secrets: tuple[str, ...] = ()
        self._annotator = PairwiseAnnotator(annotators_config=annotators_config)

    def annotate(self, examples: list[Example]) -> list[dict[str, Any]]:
        outputs_1 = [
            {
                "instruction": ex.instruction,
                "output": ex.reference,
                "generator": ex.generator_reference,
                "dataset": ex.dataset,
            }
            for ex in examples
        ]
        outputs_2 = [
            {
                "instruction": ex.instruction,
                "output": ex.output,
                "generator": ex.generator_model,
                "dataset": ex.dataset,
            }
            for ex in examples
        ]
        rows = self._annotator.annotate_head2head(outputs_1=outputs_1, outputs_2=outputs_2)
        return [
            _annotation(
                ex,
                self.judge_id,
                self.annotators_config,
                _float_or_none(row.get("preference")),
                None,
                row.get("raw_completion"),
                None,
            )
            for ex, row in zip(examples, rows, strict=True)
        ]


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# ------------------------------------------------------------------------------------------------- running


@dataclass
class RetryPolicy:
    """Exponential backoff for transient failures, bounded per example and over the whole run.

    Attempt k (1-based) that fails waits ``min(max_delay, base_delay * 2**(k-1))`` seconds, or the server's
    Retry-After when given (capped the same way). An example gives up after ``max_attempts`` attempts; once
    ``max_total_retries`` retries have been spent in the run, failing examples give up after one attempt.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_total_retries: int = 200
    sleep: Callable[[float], None] = time.sleep

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
        return {
            name: getattr(self, name)
            for name in (
                "requests",
                "retries",
                "reasks",
                "cached",
                "identical",
                "judged",
                "unparsable",
                "failed",
                "truncated",
            )
        }


@dataclass
class JudgeResult:
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
            reason = _redact(str(err), judge.secrets)
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
            policy.sleep(wait)
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
        return _redact(completion, secrets)
    return json.loads(_redact(json.dumps(completion, ensure_ascii=False), secrets))


def _shown_verdict(value: Any) -> float | None:
    """A cached verdict in shown order; symnoise before 0.2 stored pairwise-v1's ``"a"``/``"b"``."""
    return {"a": 1.0, "b": 2.0}.get(value, value) if isinstance(value, str) else value


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
        return _annotation(example, judge_id, annotator.name, DRAW, None, None, None)
    switched = annotator.is_switched(example.instruction, example.reference, example.output)
    shown = (example.output, example.reference) if switched else (example.reference, example.output)
    key = cache_key(f"{judge_id}/{annotator.cache_id}", example.instruction, *shown)
    record = run.cache.get(key)
    if record is not None and (_shown_verdict(record["verdict"]) is not None or not run.retry_nulls):
        run.stats.add(cached=1)
    else:
        record, failure = _ask(run, index, example, shown, key, switched)
        if record is None:
            run.stats.add(failed=1)
            return _annotation(example, judge_id, annotator.name, None, switched, None, failure)
    truncated = record.get("prompt_truncated")
    if truncated is not None:
        run.stats.add(truncated=1)
    verdict = _shown_verdict(record["verdict"])
    if verdict is None:
        run.stats.add(unparsable=1)
        return _annotation(
            example,
            judge_id,
            annotator.name,
            None,
            switched,
            record["raw_completion"],
            "unparsable verdict",
            truncated,
        )
    run.stats.add(judged=1)
    if verdict == 0:  # an old-style tie
        verdict = DRAW
    preference = 3.0 - verdict if switched else verdict  # alpaca_eval's un-switching rule
    return _annotation(
        example, judge_id, annotator.name, preference, switched, record["raw_completion"], None, truncated
    )


def _annotation(
    example: Example,
    judge_id: str,
    annotator: str,
    preference: float | None,
    model_first: bool | None,
    raw_completion: str | dict | None,
    null_reason: str | None,
    prompt_truncated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An AlpacaEval annotation; ``model_shown_first``: the model output was shown first (null: no request);
    ``prompt_truncated``: null, or how the outputs were cut to fit the judge's context (``[before, after]`` token
    counts of the prompt, ``output_1`` (reference) and ``output_2`` (model))."""
    return {
        "instruction": example.instruction,
        "output_1": example.reference,
        "generator_1": example.generator_reference,
        "dataset": example.dataset,
        "output_2": example.output,
        "generator_2": example.generator_model,
        "annotator": annotator,
        "judge": judge_id,
        "preference": preference,
        "model_shown_first": model_first,
        "raw_completion": raw_completion,
        "null_reason": null_reason,
        "prompt_truncated": prompt_truncated,
    }


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


# ------------------------------------------------------------------------------------------------- metrics


def _win_rate_metrics(preferences: Sequence[float | None]) -> dict[str, Any]:
    """Win rate of the model over the reference, as AlpacaEval 1 reports it; nulls are counted and excluded.

    Each non-null preference scores ``p - 1`` (1 -> 0, 2 -> 1, fractional preferences in between) and a tie
    (0) scores 0.5; ``win_rate`` is 100 x the mean and ``standard_error`` 100 x its standard error (n - 1).
    """
    valid = [float(p) for p in preferences if p is not None]
    scores = [0.5 if p == 0 else p - 1.0 for p in valid]
    n = len(scores)
    return {
        "win_rate": 100 * statistics.fmean(scores) if n else None,
        "standard_error": 100 * statistics.stdev(scores) / math.sqrt(n) if n > 1 else None,
        "n_wins": sum(p > 1.5 for p in valid),
        "n_wins_base": sum(0 < p < 1.5 for p in valid),
        "n_draws": sum(p in (0.0, 1.5) for p in valid),
        "n_total": n,
        "n_null": len(preferences) - n,
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line: the win rate with its standard error and the counts."""
    rate, err = metrics["win_rate"], metrics["standard_error"]
    head = (
        "win_rate n/a" if rate is None else f"win_rate {rate:.2f}" + ("" if err is None else f" +- {err:.2f}")
    )
    counts = ", ".join(f"{k} {metrics[k]}" for k in ("n_wins", "n_wins_base", "n_draws", "n_total", "n_null"))
    return f"{head} ({counts})"


# ---------------------------------------------------------------------------------------------- top level


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
    ``metrics.json`` and ``judge_cache.jsonl``; re-running into the same folder reuses every cached verdict.
    ``annotator`` defaults to ``alpaca_eval_gpt4`` (with ``seed``).
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
        cache = JudgmentCache(out / CACHE_FILENAME)
        annotations, stats = judge_examples(
            examples,
            judge,
            cache,
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
        **_win_rate_metrics([a["preference"] for a in annotations]),
    }
    _write_json(out / ANNOTATIONS_FILENAME, annotations)
    _write_json(out / METRICS_FILENAME, metrics)
    return JudgeResult(annotations=annotations, metrics=metrics, stats=stats)


def _write_json(path: Path, data: Any) -> None:
    """Write atomically (temporary file, fsync, rename) so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
