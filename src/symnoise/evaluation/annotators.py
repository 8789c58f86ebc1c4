"""Judge prompts and verdict parsers: the ``alpaca_eval`` package's own annotators, or symnoise's ``pairwise-v1``.

An annotator turns one example (instruction, ``output_1`` = reference, ``output_2`` = model) into chat messages
for a judge, says which of the two outputs it shows first, and parses the judge's answer into an AlpacaEval
preference (1 = ``output_1`` wins, 2 = ``output_2`` wins, fractional for log-prob weighted annotators).

:class:`PackageAnnotator` takes everything from the installed ``alpaca_eval`` package at run time, never from a
copy: the annotator's ``configs.yaml`` and prompt template, the order randomisation (its
``RandomSwitchTwoColumnsProcessor``, seeded by the instruction and the seed, 0 by default as in
``alpaca_eval evaluate``), the prompt formatting (``utils.make_prompts``, ``prompt_to_chatml``), the completion
parser (``ranking_parser``, ``regex_parser``, ``logprob_parser``, ...) and the decoding settings. Only the HTTP
call is ours (see :mod:`symnoise.evaluation.judge`), so it can be cached, retried and resumed.

Why the pieces and not the package's annotator with a symnoise completion function (``fn_completions`` accepts a
callable): the annotator hands that function a batch of already formatted prompts and parses the answers after it
returns. Asking again after an unparsable answer needs the parser inside the loop; fitting a long pair of outputs
to the judge's context needs the outputs before they are formatted; the cache keyed per example and a verdict
written as soon as it arrives need one example at a time. So the loop calls the package's pieces one by one, and
the package end to end stays available as ``--judge alpaca_eval`` (`judge_clients.AlpacaEvalJudge`).

:class:`PairwiseV1Annotator` is symnoise's own earlier prompt, kept as a named alternative
(``symnoise_pairwise_v1``); it is never the default and its numbers are not AlpacaEval numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import warnings
from typing import Any, Protocol

DEFAULT_ANNOTATOR = (
    "alpaca_eval_gpt4"  # AlpacaEval 1: GPT-4 judge against text-davinci-003 (the papers' Table 1)
)
AE2_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2: against gpt4_1106_preview
PAIRWISE_V1 = "symnoise_pairwise_v1"

# Keys of an alpaca_eval ``completions_kwargs`` that configure its client, not the request body.
_CLIENT_ONLY_KEYS = frozenset(
    {
        "model_name",
        "tokens_to_favor",
        "tokens_to_avoid",
        "is_skip_multi_tokens_to_avoid",
        "is_strip",
        "num_procs",
        "batch_size",
        "price_per_token",
        "requires_chatml",
        "is_chat",
        "sleep_time",
        "client_config_path",
        "openai_organization_ids",
        "openai_api_keys",
        "openai_api_base",
        "client_kwargs",
        "n_retries",
    }
)
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)(?:[-.\w]*)$")


class AnnotatorError(ValueError):
    """An annotator that does not exist or that this runner cannot serve; the message says what is allowed."""


class Annotator(Protocol):
    """What the judging loop needs from an annotator: whether it shows ``output_2`` first, the messages in shown
    order, the parser of an answer into a verdict in shown order, and ``unswitch``, that verdict as a preference of
    ``output_1``/``output_2`` (1 becomes 2 and 2 becomes 1 when the outputs were shown switched)."""

    name: str
    model: str | None  # the judge model the annotator was configured for (None: the user must name one)
    request_params: dict[str, Any]  # the chat-completions body without ``messages``
    wants_choice: bool  # the parser reads the whole response choice (log-probs), not only its text
    cache_id: str  # changes whenever the prompt or the settings change, so old verdicts are not reused

    def is_switched(self, instruction: str, output_1: str, output_2: str) -> bool: ...

    def messages(self, instruction: str, shown_1: str, shown_2: str) -> list[dict[str, str]]: ...

    def parse(self, completion: Any) -> float | None: ...

    def unswitch(self, verdict: float, switched: bool) -> float: ...


def is_reasoning_model(model: str) -> bool:
    """OpenAI o-series and gpt-5 models, which take ``max_completion_tokens`` instead of ``max_tokens``."""
    return bool(_REASONING_MODEL.match(model))


def request_body(params: dict[str, Any], model: str) -> dict[str, Any]:
    """``params`` for ``model``: reasoning models get ``max_completion_tokens`` and no sampling settings.

    They reject ``max_tokens`` and any ``temperature``/``top_p`` other than the default (their reasoning tokens
    also count against ``max_completion_tokens``, so raise it with ``--max-tokens`` for them).
    """
    body = {**params, "model": model}
    if is_reasoning_model(model):
        if "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        for name in ("temperature", "top_p"):
            body.pop(name, None)
    return body


def _import_alpaca_eval():
    """Import the package's pieces, keeping the root log level (``alpaca_eval`` sets it to INFO on import)."""
    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings():  # its `import pkg_resources` warns about setuptools' deprecation
            warnings.simplefilter("ignore", UserWarning)
            from alpaca_eval import completion_parsers, constants, utils
            from alpaca_eval.annotators.pairwise_evaluator import SinglePairwiseAnnotator
    except ImportError as err:
        raise AnnotatorError(
            f"the alpaca_eval annotators need the alpaca_eval package ({err}): pip install 'symnoise[eval]' "
            f"or pip install alpaca-eval; or use --annotator {PAIRWISE_V1}"
        ) from None
    finally:
        root.setLevel(level)
    return SinglePairwiseAnnotator, constants, utils, completion_parsers


def available_annotators() -> list[str]:
    """Names of the ``alpaca_eval`` annotator configurations installed, plus ``symnoise_pairwise_v1``."""
    _, constants, _, _ = _import_alpaca_eval()
    names = sorted(p.parent.name for p in constants.EVALUATORS_CONFIG_DIR.glob("*/configs.yaml"))
    return names + [PAIRWISE_V1]


class PackageAnnotator:
    """One of the ``alpaca_eval`` package's pairwise annotators, e.g. ``alpaca_eval_gpt4``, ``chatgpt_fn``,
    ``weighted_alpaca_eval_gpt4_turbo``, built by the package itself from its installed configuration.

    Served: configurations with one annotator, ``fn_completions: openai_completions``, one example per prompt
    and a ChatML template (which covers the AlpacaEval 1 and 2 leaderboard annotators).
    """

    def __init__(self, name: str, seed: int = 0, max_tokens: int | None = None):
        SinglePairwiseAnnotator, constants, utils, parsers = _import_alpaca_eval()
        self._utils, self._np_nan = utils, float("nan")
        path = constants.EVALUATORS_CONFIG_DIR / name / "configs.yaml"
        if not path.is_file():
            raise AnnotatorError(
                f"unknown annotator {name!r}: no {path}; allowed: {', '.join(available_annotators())}"
            )
        configs = utils.load_configs(path)
        if len(configs) != 1:
            raise AnnotatorError(
                f"annotator {name!r} is a pool of {len(configs)} annotators; only single ones are served"
            )
        config = dict(next(iter(configs.values())))
        self._check_servable(name, config)
        root = logging.getLogger()
        level = root.level
        try:
            self._single = SinglePairwiseAnnotator(
                seed=seed,
                base_dir=constants.EVALUATORS_CONFIG_DIR,
                annotation_column="preference",
                completion_column="raw_completion",
                **config,
            )
        finally:
            root.setLevel(level)
        kwargs = dict(self._single.completions_kwargs)
        self.name = name
        self.seed = seed
        self.model = kwargs["model_name"]
        self.is_strip = kwargs.get("is_strip", True)
        self.request_params = self._request_params(kwargs, max_tokens)
        self.wants_choice = self._single.completion_key != "completions"
        self.template = self._single.prompt_template
        fingerprint = json.dumps(
            [
                self.template,
                self.request_params,
                self.wants_choice,
                seed,
                self._single.is_randomize_output_order,
            ],
            sort_keys=True,
            default=str,
        )
        self.cache_id = f"{name}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"

    @staticmethod
    def _check_servable(name: str, config: dict[str, Any]) -> None:
        problems = []
        if config.get("fn_completions", "openai_completions") != "openai_completions":
            problems.append(f"fn_completions is {config['fn_completions']!r}, not 'openai_completions'")
        if int(config.get("batch_size", 1)) != 1:
            problems.append(f"batch_size is {config['batch_size']}, not 1")
        kwargs = config.get("completions_kwargs", {})
        if kwargs.get("tokens_to_avoid") or kwargs.get("tokens_to_favor"):
            problems.append("it biases tokens (tokens_to_avoid/tokens_to_favor)")
        if problems:
            raise AnnotatorError(
                f"annotator {name!r} cannot be served by symnoise judge: {'; '.join(problems)}; "
                f"use --judge alpaca_eval to run it through the alpaca_eval package itself"
            )

    @staticmethod
    def _request_params(kwargs: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
        """The body alpaca_eval's ``openai_completions`` sends: the decoding settings with its defaults
        (``max_tokens`` 2048, ``temperature`` 0.7, ``top_p`` 1.0 when the configuration does not set them)."""
        params = {k: v for k, v in kwargs.items() if k not in _CLIENT_ONLY_KEYS}
        params.setdefault("max_tokens", 2048)
        params.setdefault("temperature", 0.7)
        params.setdefault("top_p", 1.0)
        params = {k: v for k, v in params.items() if v is not None}
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        return params

    def is_switched(self, instruction: str, output_1: str, output_2: str) -> bool:
        """Whether the package's processors show ``output_2`` first for this example (seeded, per instruction)."""
        import pandas as pd

        frame = pd.DataFrame([{"instruction": instruction, "output_1": output_1, "output_2": output_2}])
        for processor in self._single.processors:
            frame = processor.preprocess(frame)
        return frame.iloc[0]["output_1"] != output_1

    def unswitch(self, verdict: float, switched: bool) -> float:
        """``verdict``, given on the shown order, as a preference of ``output_1``/``output_2``: for a switched
        example, the package's own rule, the one its switching processor applies to switched rows after annotating
        (``fn_replace_if_unswitch``: 3 - preference)."""
        if not switched:
            return verdict
        import pandas as pd

        frame = pd.DataFrame({"preference": [float(verdict)]})
        for processor in self._single.processors:
            unswitch = getattr(processor, "fn_replace_if_unswitch", None)
            if unswitch is not None:
                frame = unswitch(frame)
        return float(frame.iloc[0]["preference"])

    def messages(self, instruction: str, shown_1: str, shown_2: str) -> list[dict[str, str]]:
        """The chat messages, exactly as ``alpaca_eval`` builds them for an OpenAI chat model."""
        import pandas as pd

        frame = pd.DataFrame([{"instruction": instruction, "output_1": shown_1, "output_2": shown_2}])
        prompts, _ = self._utils.make_prompts(frame, template=self.template, batch_size=1)
        prompt = prompts[0].strip() if self.is_strip else prompts[0]
        return self._utils.prompt_to_chatml(prompt)

    def parse(self, completion: Any) -> float | None:
        """The package's parser on one completion; None when it fails or gives no valid preference."""
        try:
            values = list(self._single.fn_completion_parser(completion))
        except Exception as err:  # the package's own loop treats any parser error as "no annotation"
            logging.getLogger(__name__).debug("annotator %s: unparsable completion (%s)", self.name, err)
            return None
        if len(values) != 1:
            return None
        return _preference_or_none(values[0])


def _preference_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number) or not (number == 0 or 1 <= number <= 2):
        return None
    return number


# ------------------------------------------------------------------------------------------ symnoise pairwise-v1

PAIRWISE_V1_SYSTEM = (
    "You are a careful, impartial evaluator of AI assistants. You compare two responses to the same "
    "instruction and decide which one follows the instruction better: more helpful, accurate, relevant and "
    "complete. Neither the order in which the responses appear nor their length should sway you."
)
PAIRWISE_V1_USER = (
    "Which response follows the instruction better?\n\n"
    "## Instruction\n{instruction}\n\n"
    "## Output (a)\n{output_a}\n\n"
    "## Output (b)\n{output_b}\n\n"
    'Reply with exactly "Output (a)" or "Output (b)" and nothing else.'
)
_LABEL = re.compile(r"\boutput\s*[\(\[]?\s*([ab])\s*[\)\]]?(?![a-z0-9])")
_BARE = re.compile(r"^\(?([ab])\)?[.!]?$")


def build_messages(instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
    """pairwise-v1's chat messages asking which of two outputs better follows the instruction."""
    user = PAIRWISE_V1_USER.format(instruction=instruction, output_a=output_a, output_b=output_b)
    return [{"role": "system", "content": PAIRWISE_V1_SYSTEM}, {"role": "user", "content": user}]


def model_shown_first(seed: int, instruction: str) -> bool:
    """pairwise-v1's order: whether the model output is Output (a), a coin flip seeded by (seed, instruction)."""
    return random.Random(f"{seed}\x00{instruction}").random() < 0.5


def parse_verdict(text: str | None) -> str | None:
    """``"a"`` or ``"b"`` from a pairwise-v1 answer, or None when it names neither or both.

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


class PairwiseV1Annotator:
    """symnoise's own prompt (greedy, 16 tokens, "Output (a)"/"Output (b)"); not AlpacaEval's, never the default."""

    name = PAIRWISE_V1
    model = None
    wants_choice = False
    cache_id = "pairwise-v1"  # as in earlier symnoise versions, so their caches stay valid

    def __init__(self, seed: int = 0, max_tokens: int | None = None):
        self.seed = seed
        self.request_params = {"temperature": 0, "max_tokens": 16 if max_tokens is None else max_tokens}

    def is_switched(self, instruction: str, output_1: str, output_2: str) -> bool:
        return model_shown_first(self.seed, instruction)

    def messages(self, instruction: str, shown_1: str, shown_2: str) -> list[dict[str, str]]:
        return build_messages(instruction, shown_1, shown_2)

    def parse(self, completion: Any) -> float | None:
        verdict = parse_verdict(completion if isinstance(completion, str) else None)
        return None if verdict is None else (1.0 if verdict == "a" else 2.0)

    def unswitch(self, verdict: float, switched: bool) -> float:
        """AlpacaEval's rule for a switched example: preference ``3 - verdict`` (1 and 2 swap, 1.5 stays)."""
        return 3.0 - verdict if switched else verdict


def load_annotator(name: str = DEFAULT_ANNOTATOR, seed: int = 0, max_tokens: int | None = None) -> Annotator:
    """The annotator called ``name``: ``symnoise_pairwise_v1`` or an ``alpaca_eval`` configuration name."""
    if name == PAIRWISE_V1:
        return PairwiseV1Annotator(seed=seed, max_tokens=max_tokens)
    return PackageAnnotator(name, seed=seed, max_tokens=max_tokens)
