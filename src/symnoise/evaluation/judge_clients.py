"""The judges a judging run can ask, and the one function that builds them from settings.

* :class:`OpenAIChatJudge`: any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama), over
  ``urllib``; its failures are sorted into transient (:class:`TransientJudgeError`, retried by the run: 429, 5xx,
  timeouts, cut or garbled bodies) and fatal (:class:`JudgeFatalError`, the run stops: any other HTTP error such as
  401, 403, 404 or an unknown model, a host name that does not resolve, and a server that refused or reset the
  first few connections before answering any), and no piece of the API key is left in any message it produces.
* :class:`~symnoise.evaluation.judge_hf.HFJudge`: a local Hugging Face causal LM (in its own module).
* :class:`AlpacaEvalJudge`: the ``alpaca_eval`` package end to end, without symnoise's cache.

:func:`make_judge` builds any of them from :class:`JudgeSettings`, which `symnoise judge` fills from its flags and
a grid from its ``evaluation.judge`` section; the key is only ever read from the environment.
"""

from __future__ import annotations

import errno
import http.client
import json
import math
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from symnoise.evaluation.annotators import (
    DEFAULT_ANNOTATOR,
    PAIRWISE_V1,
    Annotator,
    load_annotator,
    request_body,
)
from symnoise.evaluation.judge_inputs import Example, JudgeInputError, shorten

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MODEL_VARIABLE = "SYMNOISE_JUDGE_MODEL"
BASE_URL_VARIABLES = ("SYMNOISE_JUDGE_BASE_URL", "OPENAI_BASE_URL")
KEY_VARIABLES = ("SYMNOISE_JUDGE_API_KEY", "OPENAI_API_KEY")
HF_PAIRWISE_V1_TOKENS = 12  # what a local judge generates for symnoise_pairwise_v1 unless told otherwise


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


REDACTED = "[REDACTED]"
SECRET_PIECE = (
    8  # any run of this many characters of a secret is hidden: a cut or masked key leaks nothing long
)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret, and every piece of one that is ``SECRET_PIECE`` characters or longer (a key cut
    by a server or a proxy, or shown half masked), replaced by ``[REDACTED]``.

    Redact before shortening a text, never after: a cut can leave a long piece that no longer matches the whole.
    A secret shorter than ``SECRET_PIECE`` is hidden where it appears whole."""
    hidden = [False] * len(text)
    for secret in secrets:
        if not secret:
            continue
        size = min(SECRET_PIECE, len(secret))
        pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
        for start in range(len(text) - size + 1):
            if text[start : start + size] in pieces:
                hidden[start : start + size] = [True] * size
    if not any(hidden):
        return text
    parts, start = [], 0
    for match in re.finditer(r"1+", "".join("1" if h else "0" for h in hidden)):
        parts += [text[start : match.start()], REDACTED]
        start = match.end()
    return "".join(parts) + text[start:]


# ------------------------------------------------------------------------------- OpenAI-compatible servers


UNREACHABLE_LIMIT = 3  # connections refused or reset, before any answer, that stop a run
NO_SUCH_HOST = frozenset(  # name resolution failures that retrying cannot mend
    code
    for code in (
        getattr(socket, name, None) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL", "EAI_SERVICE")
    )
    if code is not None
)
UNKNOWN_MODEL = re.compile(
    r"model_not_found|unknown model|model\b[^\n]{0,120}?\b(does not exist|not found|is not served|not available)",
    re.IGNORECASE,
)
_UNREACHABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH})
BASE_URL_HELP = f"or {' / '.join(BASE_URL_VARIABLES)}; most servers want it to end in /v1"


class OpenAIChatJudge:
    """Any OpenAI-compatible ``POST {base_url}/chat/completions`` server: OpenAI, vLLM, llama.cpp, Ollama.

    ``params`` is the request body without ``messages`` (an annotator's ``request_params``: ``max_tokens``,
    ``temperature``, tools, log-probs, ...); by default pairwise-v1's greedy 16 tokens. Reasoning models get
    ``max_completion_tokens`` instead of ``max_tokens`` (:func:`~symnoise.evaluation.annotators.request_body`).
    ``return_choice``: return the whole response choice (for log-prob parsers) instead of its text. The API key is
    sent only in the Authorization header and is redacted from every message this class produces.

    A server that cannot work stops the run at once (:class:`JudgeFatalError`) rather than after every example's
    retries: an HTTP error other than 408, 429 and 5xx, a host name that does not resolve, and, until the server
    has answered once, ``UNREACHABLE_LIMIT`` connections refused or reset (afterwards these are transient: a
    server that restarts mid-run is waited for). Safe to share between threads.
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
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
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
        self._lock = threading.Lock()
        self._answered = False  # the server has answered a request (with anything, an HTTP error included)
        self._unreachable = 0  # connections refused or reset before any answer
        self._gave_up: JudgeFatalError | None = None

    def __repr__(self) -> str:
        return f"OpenAIChatJudge(url={shown_url(self.url)!r}, model={self.model!r})"

    def adopt_annotator(self, annotator: Annotator) -> None:
        """Take the annotator's decoding settings (and choice parsing) unless they were given explicitly."""
        if not self._explicit:
            self.params = request_body(annotator.request_params, self.model)
        if not self._explicit_choice:
            self.return_choice = annotator.wants_choice

    def complete(self, messages: list[dict[str, str]]) -> str | dict[str, Any]:
        if self._gave_up is not None:  # no further request to a server already found unreachable
            raise self._gave_up
        body = json.dumps({"messages": messages, **self.params}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self._answered = True
                raw = response.read()
        except urllib.error.HTTPError as err:
            self._answered = True
            raise self._http_error(err) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise self._connection_error(err) from None
        return self._content(raw)

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        body = self._clean(_read_error_body(err))  # whole, then shortened: a cut key would escape redaction
        if err.code in (408, 429) or err.code >= 500:
            return TransientJudgeError(f"HTTP {err.code}", retry_after=_retry_after(err))
        hint = {
            401: " Check the API key (SYMNOISE_JUDGE_API_KEY or OPENAI_API_KEY).",
            403: " The key is not allowed to use this model or endpoint.",
            404: " Check --base-url (most servers want it to end in /v1) and --model.",
        }.get(err.code, "")
        if err.code in (400, 404) and UNKNOWN_MODEL.search(body):
            hint = (
                f" The server does not serve the model {self.model!r}: check --model (or {MODEL_VARIABLE}) "
                "against the models it lists."
            )
        return JudgeFatalError(
            self._clean(
                f"judge endpoint {shown_url(self.url)} refused the request with HTTP {err.code} {err.reason}."
                f"{hint} Server said: {shorten(body, 300)}"
            )
        )

    def _connection_error(self, err: Exception) -> Exception:
        """A failure before any HTTP answer: fatal for a host that does not resolve, and for a server that refused
        or reset the first ``UNREACHABLE_LIMIT`` connections without answering any; else transient."""
        reason = getattr(err, "reason", None) or err
        url = shown_url(self.base_url)
        if isinstance(reason, socket.gaierror) and reason.errno in NO_SUCH_HOST:
            host = urllib.parse.urlsplit(self.base_url).hostname
            return JudgeFatalError(
                self._clean(
                    f"the judge's host name {host!r} does not resolve ({reason}), so {url} cannot be reached: "
                    f"check --base-url ({BASE_URL_HELP})"
                )
            )
        message = self._clean(f"connection failed: {type(err).__name__}: {reason}")
        if not _refused(reason):
            return TransientJudgeError(message)
        with self._lock:
            if not self._answered:
                self._unreachable += 1
                if self._unreachable >= UNREACHABLE_LIMIT and self._gave_up is None:
                    self._gave_up = JudgeFatalError(
                        self._clean(
                            f"cannot reach the judge at {url}: the first {self._unreachable} requests all failed "
                            f"({reason}) and none was answered. Check that the server is running and listening "
                            f"there, and --base-url ({BASE_URL_HELP})"
                        )
                    )
            if self._gave_up is not None:
                return self._gave_up
        return TransientJudgeError(message)

    def _content(self, raw: bytes) -> str | dict[str, Any]:
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice_text(choice)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            body = self._clean(raw.decode("utf-8", "replace"))  # whole, then shortened
            raise TransientJudgeError(f"malformed response body: {shorten(body, 120)!r}") from None
        return {**choice, "text": text} if self.return_choice else text

    def _clean(self, text: str) -> str:
        return redact(text, self.secrets)


def _refused(reason: object) -> bool:
    """A connection refused or reset by the peer (not one closed after the request was read), a temporary name
    resolution failure or an unreachable network: signs that nothing is listening there, when they keep coming."""
    if isinstance(reason, http.client.RemoteDisconnected):
        return False
    if isinstance(reason, socket.gaierror):
        return reason.errno == getattr(socket, "EAI_AGAIN", None)
    if isinstance(reason, (ConnectionRefusedError, ConnectionResetError)):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS


def shown_url(url: str) -> str:
    """``url`` without the user name and password it may hold (``https://user:secret@host/v1``)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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
    """The whole body of an error response (redact it before shortening it)."""
    try:
        return err.read().decode("utf-8", "replace").strip()
    except Exception:  # the body of an error response is best effort only
        return ""


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return float(err.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------ the alpaca_eval package


class AlpacaEvalJudge:
    """The ``alpaca_eval`` package's pairwise annotators (e.g. ``alpaca_eval_gpt4``, ``chatgpt_fn``).

    That package does its own prompting, order randomisation, caching and retries, so this judge bypasses
    the runner here and annotates all examples in one call. The package reads the API key from the environment;
    its raw completions are kept with any piece of that key redacted.
    """

    def __init__(self, annotators_config: str = DEFAULT_ANNOTATOR):
        try:
            from alpaca_eval.annotators import PairwiseAnnotator
        except ImportError:
            raise JudgeFatalError(
                "the alpaca_eval judge needs the alpaca_eval package, which is not installed: "
                "run `pip install alpaca-eval`, or use --judge openai / --judge hf"
            ) from None
        self.judge_id = f"alpaca_eval:{annotators_config}"
        self.annotators_config = annotators_config
        self.secrets = tuple(os.environ[name] for name in KEY_VARIABLES if os.environ.get(name))
        self._annotator = PairwiseAnnotator(annotators_config=annotators_config)

    def annotate(self, examples: list[Example]) -> list[dict[str, Any]]:
        """The package's annotations of ``examples`` (reference as ``output_1``), as symnoise annotations."""
        outputs_1 = [_package_row(ex, ex.reference, ex.generator_reference) for ex in examples]
        outputs_2 = [_package_row(ex, ex.output, ex.generator_model) for ex in examples]
        rows = self._annotator.annotate_head2head(outputs_1=outputs_1, outputs_2=outputs_2)
        return [
            ex.annotation(
                self.judge_id,
                self.annotators_config,
                _float_or_none(row.get("preference")),
                None,
                _redacted(row.get("raw_completion"), self.secrets),
                None,
            )
            for ex, row in zip(examples, rows, strict=True)
        ]


def _redacted(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` (text, or anything JSON can hold) with every long piece of a secret redacted."""
    if value is None or not secrets:
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    return json.loads(redact(json.dumps(value, ensure_ascii=False, default=str), secrets))


def _package_row(example: Example, output: str, generator: str) -> dict[str, str]:
    return {
        "instruction": example.instruction,
        "output": output,
        "generator": generator,
        "dataset": example.dataset,
    }


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# ------------------------------------------------------------------------------------------------ the factory


# The judges `make_judge` builds (`JudgeSettings.kind`): what `symnoise judge --judge` and a grid's judge accept.
JUDGE_KINDS = ("openai", "hf", "alpaca_eval")


@dataclass(frozen=True)
class JudgeSettings:
    """What a judge is built from. ``kind``: ``openai``, ``hf`` or ``alpaca_eval``.

    The OpenAI-compatible judge's model is ``model``, else ``$model_env``, else the annotator's; its base URL is
    ``base_url``, else the first of ``base_url_env`` that is set, else ``default_base_url``; its key is the first
    of ``api_key_env`` that is set (required for ``default_base_url``). ``no_model`` and ``no_key`` are the
    messages when either is missing, in the words of the caller (fields: ``annotator``, ``model_env``,
    ``base_url``, ``keys``: the variables joined by " or ", ``dollar_keys``: the same with ``$``).
    ``max_tokens``: what a local (``hf``) judge generates (default: the annotator's ``max_tokens``, 12 for
    symnoise_pairwise_v1). ``alpaca_eval_config``: the package's annotators configuration (kind ``alpaca_eval``,
    default ``alpaca_eval_gpt4``).
    """

    kind: str = "openai"
    model: str | None = None
    alpaca_eval_config: str | None = None
    base_url: str | None = None
    base_url_env: tuple[str, ...] = BASE_URL_VARIABLES
    default_base_url: str = DEFAULT_BASE_URL
    model_env: str = MODEL_VARIABLE
    api_key_env: tuple[str, ...] = KEY_VARIABLES
    timeout: float = 60.0
    max_tokens: int | None = None
    no_model: str = "--annotator {annotator} needs --model or {model_env} (e.g. gpt-4o-mini)"
    no_key: str = "the OpenAI API needs a key: set {keys}"


def make_judge(settings: JudgeSettings, annotator: Annotator | None = None):
    """The judge ``settings`` describe; the OpenAI-compatible one sends ``annotator``'s request (its decoding
    settings and, for log-prob parsers, asks for whole choices). Missing settings are a :class:`JudgeInputError`
    raised before any model is loaded or request sent."""
    if settings.kind == "alpaca_eval":
        return AlpacaEvalJudge(settings.alpaca_eval_config or DEFAULT_ANNOTATOR)
    if settings.kind == "hf":
        from symnoise.evaluation.judge_hf import HFJudge

        pairwise = annotator is not None and annotator.name == PAIRWISE_V1
        default = HF_PAIRWISE_V1_TOKENS if pairwise else None  # else the annotator's max_tokens
        return HFJudge(settings.model, max_new_tokens=settings.max_tokens or default)
    return _openai_judge(settings, annotator or load_annotator(DEFAULT_ANNOTATOR))


def _openai_judge(settings: JudgeSettings, annotator: Annotator) -> OpenAIChatJudge:
    words = {
        "annotator": annotator.name,
        "model_env": settings.model_env,
        "keys": " or ".join(settings.api_key_env),
        "dollar_keys": " or ".join(f"${name}" for name in settings.api_key_env),
    }
    model = settings.model or os.environ.get(settings.model_env) or annotator.model
    if not model:
        raise JudgeInputError(settings.no_model.format(**words, base_url=None))
    base_url = settings.base_url or _first_set(settings.base_url_env) or settings.default_base_url
    api_key = _first_set(settings.api_key_env)
    if api_key is None and base_url == settings.default_base_url:
        raise JudgeInputError(settings.no_key.format(**words, base_url=base_url))
    return OpenAIChatJudge(
        base_url,
        model,
        api_key=api_key,
        timeout=settings.timeout,
        params=annotator.request_params,
        return_choice=annotator.wants_choice,
    )


def _first_set(variables: Sequence[str]) -> str | None:
    """The value of the first environment variable of ``variables`` that is set and not empty."""
    return next((os.environ[name] for name in variables if os.environ.get(name)), None)
