"""Multi-turn conversations: one type for every conversational row, and the parser of their turn lists.

ShareGPT rows (``conversations``, turns ``{"from", "value"}`` or ``{"role", "content"}``), chat ``messages`` rows
(TRL, axolotl, LLaMA-Factory, OpenAssistant-style) and conversational ``prompt``/``completion`` rows all become a
`Conversation`: an optional system message, then exchanges of one user message and the assistant reply to it.

The turn rules follow FastChat's ShareGPT preprocessing, which the papers' ShareGPT runs used: turns before the
first user turn that are assistant turns (left over from splitting a long conversation) are skipped, and user and
assistant turns must alternate. A leading system turn is kept. A final user turn without a reply has nothing to
train on and is dropped. Both are counted as warnings in the load report, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

HUMAN_ROLES = frozenset({"human", "user", "prompter"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "model"})
SYSTEM_ROLES = frozenset({"system"})
KNOWN_ROLES = HUMAN_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES
TURN_MODES = ("all", "first")


class BadRow(Exception):
    """A row-level problem: `reason` is short and countable ("empty output"), `detail` explains it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Exchange:
    """One user message and the assistant's reply; `train` is False for replies that are context only
    (the assistant turns inside a conversational ``prompt``, as TRL trains on the completion only)."""

    user: str
    assistant: str
    train: bool = True


@dataclass(frozen=True)
class Conversation:
    """A conversation as the model sees it: optional system message, then one or more exchanges."""

    system: str | None
    exchanges: tuple[Exchange, ...]
    source: str
    n_unused: int = 0  # assistant turns after the first exchange, not read with ``turns: first``

    @property
    def n_trained(self) -> int:
        return sum(exchange.train for exchange in self.exchanges)

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages (``role``/``content``), as `apply_chat_template` takes them."""
        out = [{"role": "system", "content": self.system}] if self.system is not None else []
        for exchange in self.exchanges:
            out += [
                {"role": "user", "content": exchange.user},
                {"role": "assistant", "content": exchange.assistant},
            ]
        return out

    def first(self) -> Conversation:
        """The system message and the first trained exchange with the context before it (``data.turns: first``)."""
        for position, exchange in enumerate(self.exchanges):
            if exchange.train:
                later = sum(e.train for e in self.exchanges[position + 1 :])
                return Conversation(
                    self.system, self.exchanges[: position + 1], self.source, self.n_unused + later
                )
        return self


def check_text(value: str, where: str) -> None:
    """Rejects text that cannot be encoded as UTF-8 (undecodable bytes in the file, lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRow(
            "invalid UTF-8",
            f"field '{where}' is not valid UTF-8 text (bad character at position {error.start})",
        ) from None


def _turn_keys(turn: dict, style: str) -> tuple[str, str]:
    """The (role key, content key) a turn uses: ``from``/``value`` (ShareGPT) or ``role``/``content`` (chat)."""
    if style == "sharegpt":
        return (
            "role" if "from" not in turn and "role" in turn else "from",
            "content" if "value" not in turn and "content" in turn else "value",
        )
    return (
        "from" if "role" not in turn and "from" in turn else "role",
        "value" if "content" not in turn and "value" in turn else "content",
    )


def _turn(turns: list, position: int, field: str, style: str) -> tuple[str, dict, str]:
    """The normalised role ("user", "assistant" or "system"), the turn, and its content key, validated."""
    where = f"{field}[{position}]"
    turn = turns[position]
    role_key = "from" if style == "sharegpt" else "role"
    if not isinstance(turn, dict):
        content_key = "value" if style == "sharegpt" else "content"
        raise BadRow("bad turn", f"field '{where}' must be an object with '{role_key}' and '{content_key}'")
    role_key, content_key = _turn_keys(turn, style)
    role = turn.get(role_key)
    if role is None:
        raise BadRow("missing turn role", f"field '{where}.{role_key}' is missing")
    if not isinstance(role, str):
        raise BadRow(
            f"non-string {role_key}",
            f"field '{where}.{role_key}' must be a string, got {type(role).__name__}",
        )
    check_text(role, f"{where}.{role_key}")
    name = role.strip().lower()
    if name not in KNOWN_ROLES:
        raise BadRow(
            "unknown turn role",
            f"field '{where}.{role_key}' is '{name}', expected one of {sorted(KNOWN_ROLES)}",
        )
    kind = "user" if name in HUMAN_ROLES else "assistant" if name in ASSISTANT_ROLES else "system"
    return kind, turn, content_key


def _content(turn: dict, key: str, where: str) -> str:
    value = turn.get(key)
    if value is None:
        raise BadRow(f"missing {key}", f"field '{where}.{key}' is missing")
    if not isinstance(value, str):
        raise BadRow(
            f"non-string {key}", f"field '{where}.{key}' must be a string, got {type(value).__name__}"
        )
    check_text(value, f"{where}.{key}")
    if not value.strip():
        raise BadRow(f"empty {key}", f"field '{where}.{key}' is empty or whitespace only")
    return value


def _later_replies(turns: list) -> int:
    """How many of these (unchecked) turns look like assistant turns: what ``turns: first`` leaves unused."""
    return sum(
        1
        for turn in turns
        if isinstance(turn, dict)
        and str(turn.get("from", turn.get("role", ""))).strip().lower() in ASSISTANT_ROLES
    )


def parse_turns(
    turns, field: str, style: str, turns_mode: str, source: str, warnings: Counter, trained_from: int = 0
) -> Conversation:
    """A `Conversation` from a list of turns in row field `field`.

    `style` is "sharegpt" (``from``/``value`` first) or "messages" (``role``/``content`` first); either accepts
    the other's keys per turn. With `turns_mode` "first" only the turns up to the first reply are read and
    checked (the papers' single-turn protocol, whose later turns are never used). Replies at positions before
    `trained_from` are context only. Problems raise `BadRow` naming the field; tolerated oddities are counted
    in `warnings`.
    """
    if turns is None:
        raise BadRow(f"missing {field}", f"field '{field}' is missing")
    if not isinstance(turns, list):
        raise BadRow(f"non-list {field}", f"field '{field}' must be a list, got {type(turns).__name__}")
    system: str | None = None
    exchanges: list[Exchange] = []
    pending: tuple[int, str] | None = None  # the user turn waiting for its reply
    started = False
    for position in range(len(turns)):
        kind, turn, content_key = _turn(turns, position, field, style)
        where = f"{field}[{position}]"
        if pending is not None and kind != "assistant":
            raise BadRow(
                "no reply",
                f"field '{where}.{_turn_keys(turn, style)[0]}' is '{kind}', expected an assistant turn",
            )
        if kind == "system":
            if started:
                raise BadRow(
                    "misplaced system turn",
                    f"field '{where}' is a system turn after the conversation started; only leading "
                    "system turns are supported",
                )
            content = turn.get(content_key)
            if system is None and isinstance(content, str) and content.strip():
                check_text(content, f"{where}.{content_key}")
                system = content
            else:
                warnings["unusable or extra system turn ignored"] += 1
            continue
        if not started and kind == "assistant":
            warnings["leading assistant turn skipped"] += 1
            continue
        started = True
        if kind == "user":
            pending = (position, _content(turn, content_key, where))
            continue
        reply = _content(turn, content_key, where)  # an empty turn is named as such, whatever its position
        if pending is None:
            raise BadRow(
                "turns do not alternate",
                f"field '{where}' is a second assistant turn in a row; user and assistant turns must alternate",
            )
        exchanges.append(Exchange(pending[1], reply, train=position >= trained_from))
        pending = None
        if turns_mode == "first" and exchanges[-1].train:
            return Conversation(system, tuple(exchanges), source, _later_replies(turns[position + 1 :]))
    if pending is not None:
        if not exchanges:
            raise BadRow("no reply", f"field '{field}' has no turn after the user turn {pending[0]}")
        warnings["final user turn without reply dropped"] += 1
    if not exchanges and not started:
        raise BadRow("no human turn", f"field '{field}' has no human turn")
    if not any(exchange.train for exchange in exchanges):
        raise BadRow("no reply", f"field '{field}' has no assistant reply to train on")
    return Conversation(system, tuple(exchanges), source)
