"""A spec's text as plain data, with bounds: YAML or JSON from a file, JSON from a request.

A spec is a few dozen fields, so anything far larger is a mistake or an attack: the text is
capped in bytes, its nesting in depth, and its node count with every YAML alias expanded
(the "billion laughs" document is a few hundred bytes that expand to billions of nodes).
The limits are checked on the parser's events, before any Python object is built. A key
given twice is refused rather than resolved silently (YAML and JSON both keep the last).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

MAX_BYTES = 1 << 20
"""Largest spec text read, in bytes."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists; a real spec needs 4."""
MAX_NODES = 20_000
"""Most scalars, mappings and lists, every alias counted as what it stands for."""
QUOTE_CHARS = 120
"""At most this much of a value is quoted back in an error."""


class SpecTextError(ValueError):
    """Text that is not a spec's data; the message says where and why."""


def shorten(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters: errors quote what was given, never
    all of a huge value (a repr of a deep value is itself cut before it is built)."""
    text = _repr(value, limit)
    return text if len(text) <= limit else f"{text[: limit - 12]}... ({len(text)} chars)"


def cut(message: str, limit: int = 400) -> str:
    """A message (not a value: no quotes added) cut to `limit` characters."""
    return message if len(message) <= limit else f"{message[: limit - 3]}..."


def _repr(value: Any, limit: int) -> str:
    if isinstance(value, dict | list | tuple) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        return repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"


def load_yaml(text: str | bytes, source: str) -> Any:
    """YAML (which JSON also is) within the limits above; `source` names it in errors."""
    if len(text) > MAX_BYTES:
        raise SpecTextError(f"{source}: {len(text)} bytes is over the {MAX_BYTES} a spec may have")
    try:
        _check_events(text, source)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as e:
        raise SpecTextError(f"{source}: not valid YAML/JSON: {cut(str(e))}") from None


def load_json(body: bytes, source: str = "the body") -> Any:
    """Strict JSON: no NaN or Infinity, no key twice, within the limits above."""
    if len(body) > MAX_BYTES:
        raise SpecTextError(f"{source}: {len(body)} bytes is over the {MAX_BYTES} a spec may have")
    try:
        data = json.loads(
            body,
            object_pairs_hook=_unique_pairs,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise SpecTextError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError and the hooks' own errors
        raise SpecTextError(f"{source} is not a JSON spec: {cut(str(e))}") from None
    _check_depth(data, source)
    return data


def _check_events(text: str | bytes, source: str) -> None:
    """Depth and expanded size from the parser's event stream (no objects built yet)."""
    nodes = 0
    sizes: dict[str, int] = {}  # anchor -> nodes it expands to
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, node count when it opened)
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            nodes += sizes.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            nodes += 1
            open_nodes.append((event.anchor, nodes))
            if len(open_nodes) > MAX_DEPTH:
                raise SpecTextError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, opened_at = open_nodes.pop()
            if anchor:
                sizes[anchor] = nodes - opened_at + 1
        if nodes > MAX_NODES:
            raise SpecTextError(
                f"{source}: more than {MAX_NODES} values once aliases are expanded; "
                "a spec is a few dozen"
            )


def _check_depth(data: Any, source: str) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise SpecTextError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        if count > MAX_NODES:
            raise SpecTextError(f"{source}: more than {MAX_NODES} values; a spec is a few dozen")
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            stack.extend((child, depth + 1) for child in children)


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader names it below
                break
            if duplicate:
                raise SpecTextError(
                    f"key {shorten(key)} is given twice (line {key_node.start_mark.line + 1}); "
                    "keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads `1e-4` (no dot) as a string, and a spec's types are strict: take YAML 1.2's
# (and JSON's) numbers as floats, as a user who writes `lr: 1e-4` means.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {shorten(key)} is given twice; keep one")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a spec may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{shorten(text)} is too large a number")
    return value
