"""YAML reading that refuses duplicate keys.

PyYAML keeps the last of two equal keys in a mapping without a word, so a config with ``alpha: 5`` in one
``noise:`` section and ``alpha: 50`` in a second one silently trains at 50. `load` walks the document's node
tree first and raises `DuplicateKeyError` naming the key's dotted path and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in the document has the same key twice; the message names the key and both lines."""


def _duplicates(node: yaml.Node, path: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                dotted = ".".join((*path, key))
                if key in first_line:
                    found.append(f"{dotted} at line {line} (first at line {first_line[key]})")
                else:
                    first_line[key] = line
            found += _duplicates(value_node, (*path, key if key is not None else "?"))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicates(item, (*path, str(index)))
    return found


def load(text: str) -> Any:
    """``yaml.safe_load(text)``, but a key given twice in one mapping raises `DuplicateKeyError`."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        duplicates = _duplicates(root)
        if duplicates:
            raise DuplicateKeyError(
                f"duplicate key {'; duplicate key '.join(duplicates)}; each key may appear "
                "only once in a mapping (PyYAML would silently keep the last)"
            )
    return yaml.safe_load(text)
