"""Topic patterns with named levels, and the router that maps a topic to its message decoder.

A pattern is an MQTT topic whose levels are literals, ``{name}`` (any one level, captured),
``{name:regex}`` (one level that must match the regex, captured) or ``+`` / a final ``#``
(not captured). The MQTT subscription of a pattern replaces every captured level with ``+``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

_LEVEL = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?::(.+))?\}$")

T = TypeVar("T")


class TopicMismatch(ValueError):
    """The topic has the pattern's shape but a captured level fails its regex."""


@dataclass(frozen=True, slots=True)
class _Level:
    literal: str | None  # None for captured / wildcard levels
    name: str | None
    regex: re.Pattern[str] | None


class TopicPattern:
    """A compiled topic pattern."""

    def __init__(self, pattern: str) -> None:
        if not pattern or pattern.startswith("/") or "//" in pattern:
            raise ValueError(f"topic pattern {pattern!r} has an empty level")
        levels: list[_Level] = []
        raw_levels = pattern.split("/")
        names: set[str] = set()
        for index, raw in enumerate(raw_levels):
            match = _LEVEL.match(raw)
            if match:
                name, regex = match.group(1), match.group(2)
                if name in names:
                    raise ValueError(f"topic pattern {pattern!r} names level {name!r} twice")
                names.add(name)
                try:
                    compiled = re.compile(regex) if regex else None
                except re.error as exc:
                    raise ValueError(f"level {name!r}: bad regex {regex!r}: {exc}") from exc
                levels.append(_Level(None, name, compiled))
            elif raw == "+":
                levels.append(_Level(None, None, None))
            elif raw == "#":
                if index != len(raw_levels) - 1:
                    raise ValueError(f"topic pattern {pattern!r}: '#' must be the last level")
                levels.append(_Level("#", None, None))
            elif any(c in raw for c in "{}+#"):
                raise ValueError(f"topic pattern {pattern!r}: bad level {raw!r}")
            else:
                levels.append(_Level(raw, None, None))
        self.pattern = pattern
        self.names = frozenset(names)
        self._levels = tuple(levels)
        self._multi = bool(levels) and levels[-1].literal == "#"
        self.subscription = "/".join(
            lvl.literal if lvl.literal is not None else "+" for lvl in self._levels
        )

    def match(self, topic: str) -> dict[str, str] | None:
        """Captured levels if ``topic`` matches the pattern's shape, else ``None``.

        Raises ``TopicMismatch`` when the shape matches but a level fails its regex.
        """
        parts = topic.split("/")
        levels = self._levels
        if self._multi:
            if len(parts) < len(levels) - 1:
                return None
            levels = levels[:-1]
        elif len(parts) != len(levels):
            return None
        captured: dict[str, str] = {}
        for level, part in zip(levels, parts, strict=False):
            if level.literal is not None:
                if part != level.literal:
                    return None
            elif level.name is not None:
                if level.regex is not None and not level.regex.fullmatch(part):
                    raise TopicMismatch(
                        f"level {level.name!r}={part!r} does not match {level.regex.pattern!r}"
                    )
                if not part:
                    raise TopicMismatch(f"level {level.name!r} is empty")
                captured[level.name] = part
        return captured


class Router(Generic[T]):
    """Finds the target of a topic: exact topics in a dict, patterns in a list, cached per topic.

    Patterns are tried in the order given; the first whose shape matches wins.
    """

    def __init__(self, routes: Sequence[tuple[TopicPattern, T]], cache_size: int = 200_000):
        self._exact: dict[str, T] = {}
        self._patterns: list[tuple[TopicPattern, T]] = []
        for pattern, target in routes:
            if not pattern.names and "+" not in pattern.pattern and "#" not in pattern.pattern:
                self._exact.setdefault(pattern.pattern, target)
            else:
                self._patterns.append((pattern, target))
        self._cache: dict[str, tuple[T, dict[str, str]] | None] = {}
        self._cache_size = cache_size

    def route(self, topic: str) -> tuple[T, dict[str, str]] | None:
        """The target and captured levels for ``topic``; ``None`` if nothing matches.

        Raises ``TopicMismatch`` (not cached) when a pattern's shape matches but a level
        fails its regex.
        """
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found: tuple[T, dict[str, str]] | None = None
        exact = self._exact.get(topic)
        if exact is not None:
            found = (exact, {})
        else:
            for pattern, target in self._patterns:
                captured = pattern.match(topic)
                if captured is not None:
                    found = (target, captured)
                    break
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[topic] = found
        return found
