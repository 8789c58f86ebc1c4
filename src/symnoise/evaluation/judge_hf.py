"""A local Hugging Face causal LM as judge, with prompts fitted to its context.

When the prompt plus the tokens to generate would not fit the model's context, the two outputs (never the
instruction or the template) are cut from their ends to the same token allowance (:meth:`HFJudge.fit_messages`),
and the judging run records by how much in the annotation's ``prompt_truncated``; an instruction that does not fit
even without the outputs is a :class:`~symnoise.evaluation.judge_inputs.JudgeInputError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from symnoise.evaluation.annotators import Annotator, build_messages
from symnoise.evaluation.judge_inputs import JudgeInputError


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
        self.model = model or AutoModelForCausalLM.from_pretrained(model_name_or_path, use_kernels=False)
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
