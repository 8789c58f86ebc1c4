"""Pairwise LLM judging of model outputs against reference outputs, AlpacaEval style.

Each model output is shown to a judge next to the reference output for the same instruction; the judge answers
"Output (a)" or "Output (b)". Which of the two is shown first is drawn per example from a seeded RNG, to cancel
the judges' position bias, and mapped back afterwards. Verdicts go to a crash-safe cache as they arrive
(:mod:`symnoise.evaluation.judge_cache`), transient failures are retried with exponential backoff within a
bounded budget, and the result is written as AlpacaEval annotations (``preference``: 1 = reference wins,
2 = model wins, 0 = tie, null = no usable verdict) plus the win rate.

Judges: any OpenAI-compatible chat-completions server (:class:`OpenAIChatJudge`), a local Hugging Face causal LM
(:class:`HFJudge`), or the ``alpaca_eval`` package's annotators (:class:`AlpacaEvalJudge`).

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
import random
import re
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

from symnoise.evaluation.judge_cache import JudgmentCache, cache_key

log = logging.getLogger(__name__)

REFERENCE_FILENAME = "alpaca_eval_ae1_reference_text_davinci_003.jsonl"
CACHE_FILENAME = "judge_cache.jsonl"
ANNOTATIONS_FILENAME = "annotations.json"
METRICS_FILENAME = "metrics.json"
PROMPT_VERSION = "pairwise-v1"  # part of every cache key: rewording the prompt must not reuse old verdicts

SYSTEM_PROMPT = (
    "You are a careful, impartial evaluator of AI assistants. You compare two responses to the same "
    "instruction and decide which one follows the instruction better: more helpful, accurate, relevant and "
    "complete. Neither the order in which the responses appear nor their length should sway you."
)
USER_TEMPLATE = (
    "Which response follows the instruction better?\n\n"
    "## Instruction\n{instruction}\n\n"
    "## Output (a)\n{output_a}\n\n"
    "## Output (b)\n{output_b}\n\n"
    'Reply with exactly "Output (a)" or "Output (b)" and nothing else.'
)


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
    """What the runner needs from a judge. ``secrets`` are strings to redact from everything written."""

    judge_id: str
    secrets: tuple[str, ...]

    def complete(self, messages: list[dict[str, str]]) -> str: ...


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


def load_records(path: str | os.PathLike[str], required: Sequence[str] = ("instruction", "output")) -> list[dict]:
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
                    f"{path}: row {index} field {name!r} is {type(row[name]).__name__}, expected a string")
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


def pair_with_references(outputs: list[dict], references: list[dict], outputs_path: str | os.PathLike[str],
                         default_generator: str = "model") -> list[Example]:
    """Match each model output to the reference with the same instruction; a missing reference is an error."""
    by_instruction = {row["instruction"]: row for row in references}
    examples = []
    for index, row in enumerate(outputs):
        ref = by_instruction.get(row["instruction"])
        if ref is None:
            raise JudgeInputError(
                f"{outputs_path}: row {index} has an instruction with no reference output: "
                f"{_shorten(row['instruction'])!r}")
        examples.append(Example(
            instruction=row["instruction"], reference=ref["output"], output=row["output"],
            generator_reference=str(ref.get("generator", "reference")),
            generator_model=str(row.get("generator", default_generator)),
            dataset=str(row.get("dataset", ref.get("dataset", ""))),
        ))
    return examples


def load_examples(outputs_path: str | os.PathLike[str], reference_path: str | os.PathLike[str]) -> list[Example]:
    """Load and validate both files and pair them; everything that can be wrong is found here, before judging."""
    outputs = load_records(outputs_path)
    references = load_records(reference_path)
    return pair_with_references(outputs, references, outputs_path, default_generator=Path(outputs_path).stem)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------ prompt and verdicts


def build_messages(instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
    """The chat messages asking which of two outputs better follows the instruction."""
    user = USER_TEMPLATE.format(instruction=instruction, output_a=output_a, output_b=output_b)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def model_shown_first(seed: int, instruction: str) -> bool:
    """Whether the model output is shown as Output (a); a coin flip seeded by (seed, instruction).

    Seeding per instruction (not by position) keeps the order of an example fixed under ``--limit``,
    reordering and restarts, so cached verdicts stay valid.
    """
    return random.Random(f"{seed}\x00{instruction}").random() < 0.5


_LABEL = re.compile(r"\boutput\s*[\(\[]?\s*([ab])\s*[\)\]]?(?![a-z0-9])")
_BARE = re.compile(r"^\(?([ab])\)?[.!]?$")


def parse_verdict(text: str | None) -> str | None:
    """``"a"`` or ``"b"`` from a judge's answer, or None when it names neither or both.

    Tolerates case, markdown emphasis, quotes and text around the answer ("**Output (B)** is better.").
    When both labels appear, an answer that starts with one label counts as that label; otherwise it is ambiguous.
    """
    if not text:
        return None
    clean = re.sub(r"[*_`#\"']", " ", text.lower()).strip()
    labels = _LABEL.findall(clean)
    if len(set(labels)) == 1:
        return labels[0]
    if labels:
        lead = _LABEL.match(clean)
        return lead.group(1) if lead else None
    bare = _BARE.match(clean)
    return bare.group(1) if bare else None


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return text


# -------------------------------------------------------------------------------------------------- judges


class OpenAIChatJudge:
    """Any OpenAI-compatible ``POST {base_url}/chat/completions`` server: OpenAI, vLLM, llama.cpp, Ollama.

    Greedy (temperature 0), a few tokens. The API key is sent only in the Authorization header and is redacted
    from every message this class produces.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_tokens: int = 16):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self._api_key = api_key or ""
        self.secrets = (self._api_key,) if self._api_key else ()
        self.judge_id = f"openai:{model}"

    def __repr__(self) -> str:
        return f"OpenAIChatJudge(url={self.url!r}, model={self.model!r})"

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode("utf-8")
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
            raise TransientJudgeError(self._clean(f"connection failed: {type(err).__name__}: {reason}")) from None
        return self._content(raw)

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        detail = self._clean(_read_error_body(err))
        if err.code in (408, 429) or err.code >= 500:
            return TransientJudgeError(f"HTTP {err.code}", retry_after=_retry_after(err))
        hint = {401: " Check the API key (SYMNOISE_JUDGE_API_KEY or OPENAI_API_KEY).",
                403: " The key is not allowed to use this model or endpoint.",
                404: " Check --base-url (most servers want it to end in /v1) and --model."}.get(err.code, "")
        return JudgeFatalError(self._clean(
            f"judge endpoint {self.url} refused the request with HTTP {err.code} {err.reason}.{hint} "
            f"Server said: {detail}"))

    def _content(self, raw: bytes) -> str:
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TransientJudgeError(
                self._clean(f"malformed response body: {_shorten(raw.decode('utf-8', 'replace'), 120)!r}")) from None
        return content if isinstance(content, str) else ""

    def _clean(self, text: str) -> str:
        return _redact(text, self.secrets)


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

    def __init__(self, model_name_or_path: str, model: Any = None, tokenizer: Any = None,
                 max_new_tokens: int = 12, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.judge_id = f"hf:{model_name_or_path}"
        self.secrets: tuple[str, ...] = ()
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = model or AutoModelForCausalLM.from_pretrained(model_name_or_path)
        if device:
            self.model.to(device)
        self.model.eval()
        self.context_length = context_length(self.tokenizer, self.model)
        self._lock = threading.Lock()

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Length in tokens of the prompt :meth:`complete` gives the model for ``messages``."""
        return len(self.tokenizer(self._prompt(messages))["input_ids"])

    def fit_messages(self, instruction: str, output_a: str, output_b: str,
                     index: int | None = None) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
        """The judge messages, with the two outputs shortened when the prompt would not fit the context.

        Returns ``(messages, None)`` with exactly :func:`build_messages`'s messages when the prompt and
        ``max_new_tokens`` fit (or the context is unknown). Otherwise each output is cut from its end to at most
        the same number of tokens ``k`` (an output shorter than ``k`` is kept whole, and the other gets the rest),
        with ``k`` as large as fits; the instruction and the template's text are never changed. The second value
        then says ``context_tokens``, ``max_new_tokens`` and, as ``[before, after]``, ``prompt_tokens``,
        ``output_a_tokens`` and ``output_b_tokens``. An instruction that does not fit even with both outputs empty
        is a :class:`JudgeInputError` naming ``index`` and the lengths.
        """
        messages = build_messages(instruction, output_a, output_b)
        if self.context_length is None:
            return messages, None
        budget = self.context_length - self.max_new_tokens
        before = self.prompt_tokens(messages)
        if before <= budget:
            return messages, None
        fixed = self.prompt_tokens(build_messages(instruction, "", ""))
        if fixed > budget:
            where = "an example" if index is None else f"example {index} (row {index} of the outputs)"
            n_instruction = len(self.tokenizer(instruction, add_special_tokens=False)["input_ids"])
            raise JudgeInputError(
                f"{where}: the judge prompt is {fixed} tokens without the two outputs (the instruction alone "
                f"{n_instruction}) and {self.max_new_tokens} tokens must be generated, but the judge "
                f"{self.judge_id} has a context of {self.context_length} tokens; the instruction is never "
                f"shortened, so use a judge with a longer context")
        ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in (output_a, output_b)]
        allowance = _even_allowance([len(i) for i in ids], budget - fixed)
        while True:
            texts = [text if len(i) <= allowance else self._decode_prefix(i, allowance)
                     for text, i in zip((output_a, output_b), ids, strict=True)]
            messages = build_messages(instruction, *texts)
            after = self.prompt_tokens(messages)
            if after <= budget or allowance == 0:
                break
            # Re-tokenising the cut text inside the template can merge differently; cut a little more and retry.
            allowance -= max(1, (after - budget + 1) // 2)
            allowance = max(0, allowance)
        kept = [min(len(i), allowance) for i in ids]
        return messages, {"context_tokens": self.context_length, "max_new_tokens": self.max_new_tokens,
                          "prompt_tokens": [before, after], "output_a_tokens": [len(ids[0]), kept[0]],
                          "output_b_tokens": [len(ids[1]), kept[1]]}

    def _decode_prefix(self, ids: Sequence[int], n: int) -> str:
        text = self.tokenizer.decode(list(ids[:n]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text.rstrip("\ufffd")  # a byte-level token cut inside a character decodes to U+FFFD

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        inputs = self.tokenizer(self._prompt(messages), return_tensors="pt").to(self.model.device)
        n_prompt = inputs["input_ids"].shape[1]
        if self.context_length is not None and n_prompt + self.max_new_tokens > self.context_length:
            raise JudgeInputError(
                f"judge prompt of {n_prompt} tokens plus {self.max_new_tokens} to generate exceeds the context of "
                f"{self.judge_id} ({self.context_length} tokens); fit_messages() shortens the outputs to fit")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                            pad_token_id=pad_id)
        new_tokens = generated[0, inputs["input_ids"].shape[1]:]
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
                "run `pip install alpaca-eval`, or use --judge openai / --judge hf") from None
        self.judge_id = f"alpaca_eval:{annotators_config}"
        self.secrets: tuple[str, ...] = ()
        self._annotator = PairwiseAnnotator(annotators_config=annotators_config)

    def annotate(self, examples: list[Example]) -> list[dict[str, Any]]:
        outputs_1 = [{"instruction": ex.instruction, "output": ex.reference, "generator": ex.generator_reference,
                      "dataset": ex.dataset} for ex in examples]
        outputs_2 = [{"instruction": ex.instruction, "output": ex.output, "generator": ex.generator_model,
                      "dataset": ex.dataset} for ex in examples]
        rows = self._annotator.annotate_head2head(outputs_1=outputs_1, outputs_2=outputs_2)
        return [_annotation(ex, self.judge_id, _float_or_none(row.get("preference")), None,
                            row.get("raw_completion"), None) for ex, row in zip(examples, rows, strict=True)]


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
    """Counts of one judging run: requests sent (retries included), retries, verdicts taken from the cache, and
    the examples that ended judged, null for an unparsable answer, or null because every attempt failed;
    ``truncated``: examples whose verdict was given on a prompt with shortened outputs (cached ones included)."""

    requests: int = 0
    retries: int = 0
    cached: int = 0
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
        return {name: getattr(self, name) for name in ("requests", "retries", "cached", "judged", "unparsable",
                                                       "failed", "truncated")}


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


def _call_with_retries(judge: Judge, messages: list[dict[str, str]], policy: RetryPolicy, budget: _RetryBudget,
                       stats: RunStats, stop: threading.Event) -> tuple[str | None, str | None]:
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
            log.warning("judge: %s (attempt %d/%d), retrying in %.1f s", reason, attempt, policy.max_attempts, wait)
            stats.add(retries=1)
            policy.sleep(wait)
    raise AssertionError("unreachable")  # the loop always returns on its last attempt


def _judge_messages(judge: Judge, index: int, instruction: str, output_a: str,
                    output_b: str) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """The messages for ``judge``: fitted to its context when it can say how (``fit_messages``), else as built."""
    fit = getattr(judge, "fit_messages", None)
    if fit is None:
        return build_messages(instruction, output_a, output_b), None
    return fit(instruction, output_a, output_b, index=index)


def _truncation_record(truncation: dict[str, Any] | None, model_first: bool) -> dict[str, Any] | None:
    """``fit_messages``'s shown-order (a, b) lengths as output_1 (reference) and output_2 (model) lengths."""
    if truncation is None:
        return None
    model, reference = ("output_a_tokens", "output_b_tokens") if model_first else ("output_b_tokens",
                                                                                   "output_a_tokens")
    return {"context_tokens": truncation["context_tokens"], "max_new_tokens": truncation["max_new_tokens"],
            "prompt_tokens": truncation["prompt_tokens"], "output_1_tokens": truncation[reference],
            "output_2_tokens": truncation[model]}


def _judge_one(index: int, example: Example, judge: Judge, cache: JudgmentCache, seed: int, policy: RetryPolicy,
               budget: _RetryBudget, stats: RunStats, stop: threading.Event) -> dict[str, Any]:
    first = model_shown_first(seed, example.instruction)
    output_a, output_b = (example.output, example.reference) if first else (example.reference, example.output)
    key = cache_key(f"{judge.judge_id}/{PROMPT_VERSION}", example.instruction, output_a, output_b)
    record = cache.get(key)
    if record is not None:
        stats.add(cached=1)
        truncated = record.get("prompt_truncated")
    else:
        messages, truncation = _judge_messages(judge, index, example.instruction, output_a, output_b)
        truncated = _truncation_record(truncation, first)
        completion, failure = _call_with_retries(judge, messages, policy, budget, stats, stop)
        if completion is None:
            stats.add(failed=1)
            return _annotation(example, judge.judge_id, None, first, None, failure, truncated)
        completion = _redact(completion, judge.secrets)
        record = {"key": key, "judge": judge.judge_id, "verdict": parse_verdict(completion),
                  "raw_completion": completion}
        if truncated is not None:
            record["prompt_truncated"] = truncated
        cache.put(record)
    if truncated is not None:
        stats.add(truncated=1)
    verdict = record["verdict"]
    if verdict:
        stats.add(judged=1)
    else:
        stats.add(unparsable=1)
    preference = None if verdict is None else (2 if (verdict == "a") == first else 1)
    return _annotation(example, judge.judge_id, preference, first, record["raw_completion"],
                       None if verdict else "unparsable verdict", truncated)


def _annotation(example: Example, annotator: str, preference: float | None, model_first: bool | None,
                raw_completion: str | None, null_reason: str | None,
                prompt_truncated: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AlpacaEval annotation; ``prompt_truncated``: null, or how the outputs were cut to fit the judge's context
    (``[before, after]`` token counts of the prompt, ``output_1`` (reference) and ``output_2`` (model))."""
    return {
        "instruction": example.instruction, "output_1": example.reference, "generator_1": example.generator_reference,
        "dataset": example.dataset, "output_2": example.output, "generator_2": example.generator_model,
        "annotator": annotator, "preference": preference, "model_shown_first": model_first,
        "raw_completion": raw_completion, "null_reason": null_reason, "prompt_truncated": prompt_truncated,
    }


def judge_examples(examples: Sequence[Example], judge: Judge, cache: JudgmentCache, *, seed: int = 0,
                   retry: RetryPolicy | None = None, workers: int = 1,
                   progress: Callable[[int, int, RunStats], None] | None = None) -> tuple[list[dict], RunStats]:
    """Judge every example (cached verdicts are reused), returning annotations in input order and run counts.

    Every example ends with a preference or with null and a ``null_reason``. A :class:`JudgeFatalError` stops
    the run: no new requests start, those in flight finish (and are cached), and the error propagates.
    """
    policy = retry or RetryPolicy()
    budget, stats, stop = _RetryBudget(policy.max_total_retries), RunStats(), threading.Event()
    results: list[dict[str, Any] | None] = [None] * len(examples)

    def work(index: int) -> tuple[int, dict[str, Any] | None]:
        if stop.is_set():
            return index, None
        try:
            return index, _judge_one(index, examples[index], judge, cache, seed, policy, budget, stats, stop)
        except BaseException:
            stop.set()  # here, not in the caller, so that this worker starts no further request
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(work, i) for i in range(len(examples))]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                index, annotation = future.result()
                results[index] = annotation
                if progress:
                    progress(done, len(examples), stats)
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return [r for r in results if r is not None], stats


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
    head = "win_rate n/a" if rate is None else f"win_rate {rate:.2f}" + ("" if err is None else f" +- {err:.2f}")
    counts = ", ".join(f"{k} {metrics[k]}" for k in ("n_wins", "n_wins_base", "n_draws", "n_total", "n_null"))
    return f"{head} ({counts})"


# ---------------------------------------------------------------------------------------------- top level


def judge_outputs(outputs_path: str | os.PathLike[str], reference_path: str | os.PathLike[str],
                  judge: Judge | AlpacaEvalJudge, out_dir: str | os.PathLike[str], *, seed: int = 0,
                  limit: int | None = None, retry: RetryPolicy | None = None, workers: int = 1,
                  progress: Callable[[int, int, RunStats], None] | None = None) -> JudgeResult:
    """Judge a model-outputs file against a reference file; write annotations, metrics and the verdict cache.

    Both files are validated before the first request. ``out_dir`` receives ``annotations.json``,
    ``metrics.json`` and ``judge_cache.jsonl``; re-running into the same folder reuses every cached verdict.
    """
    examples = load_examples(outputs_path, reference_path)
    if limit is not None:
        examples = examples[:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(judge, AlpacaEvalJudge):
        annotations, stats = judge.annotate(examples), RunStats()
    else:
        cache = JudgmentCache(out / CACHE_FILENAME)
        annotations, stats = judge_examples(examples, judge, cache, seed=seed, retry=retry, workers=workers,
                                            progress=progress)
    metrics = {"annotator": judge.judge_id, "generator": examples[0].generator_model if examples else None,
               **_win_rate_metrics([a["preference"] for a in annotations])}
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
