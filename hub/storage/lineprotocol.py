"""InfluxDB line protocol: encoding points (hot path) and parsing lines (golden vectors, tests).

Measurement names, tag keys and field keys are identifiers (checked when a profile loads),
so only tag values and string field values need escaping:

- tag values: ``,`` ``=`` and space are backslash-escaped; line breaks are refused at decode
  time because no escape exists for them in a tag;
- string fields: ``\\`` and ``"`` are backslash-escaped inside double quotes.
"""

from __future__ import annotations

from hub.model import FieldValue, Point

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def escape_tag(value: str) -> str:
    """Escape a tag value for line protocol."""
    return value.translate(_TAG_ESCAPES)


def escape_string_field(value: str) -> str:
    """A string field value, quoted and escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_field(value: FieldValue) -> str:
    """One field value in line protocol syntax (``i`` suffix for integers)."""
    kind = type(value)
    if kind is float:
        return repr(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return f"{value}i"
    if isinstance(value, str):
        return escape_string_field(value)
    # subclasses of the four types (never built by the decoder) take the long way
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    return repr(float(value))


def encode(point: Point) -> str:
    """One point as a line (no trailing newline), tags sorted, timestamp in milliseconds."""
    # plain loops: this runs for every point, and generator expressions cost more here
    parts = [point.measurement]
    for key, value in sorted(point.tags.items()):
        if value:
            # three scans in C cost a tenth of translate()'s per-character table lookups
            plain = " " not in value and "," not in value and "=" not in value
            parts.append(f",{key}={value if plain else value.translate(_TAG_ESCAPES)}")
    separator = " "
    for key, field in point.fields.items():
        kind = type(field)  # format_field's common cases, inline: this runs for every field
        if kind is float:
            parts.append(f"{separator}{key}={field!r}")
        elif kind is int:
            parts.append(f"{separator}{key}={field}i")
        else:
            parts.append(f"{separator}{key}={format_field(field)}")
        separator = ","
    parts.append(f" {point.time_ms}")
    return "".join(parts)


class LineSyntaxError(ValueError):
    """A line protocol line could not be parsed."""


def _split(text: str, separator: str, quotes: bool) -> list[str]:
    """Split on an unescaped ``separator``, honouring backslash escapes (and quotes)."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if quotes and char == '"':
            in_quotes = not in_quotes
        if char == separator and not in_quotes:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text) and text[index + 1] in ',= "\\':
            out.append(text[index + 1])
            index += 2
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def _parse_field(text: str) -> FieldValue:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return _unescape(text[1:-1])
    if text in ("true", "t", "T", "True", "TRUE"):
        return True
    if text in ("false", "f", "F", "False", "FALSE"):
        return False
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def parse(line: str) -> Point:
    """Parse one line; a missing timestamp parses as ``-1``. Timestamps are read as ms."""
    # quotes are literal in the measurement and tags, and delimit strings in the fields
    first, *others = _split(line.strip(), " ", quotes=False)
    sections = [first, *_split(" ".join(others), " ", quotes=True)]
    if not others or len(sections) not in (2, 3):
        raise LineSyntaxError(f"expected 'measurement,tags fields [time]': {line!r}")
    head = _split(sections[0], ",", quotes=False)
    tags: dict[str, str] = {}
    for pair in head[1:]:
        key, sep, value = pair.partition("=")
        if not sep:
            raise LineSyntaxError(f"tag {pair!r} has no '=' in {line!r}")
        tags[_unescape(key)] = _unescape(value)
    fields: dict[str, FieldValue] = {}
    for pair in _split(sections[1], ",", quotes=True):
        key, sep, value = pair.partition("=")
        if not sep:
            raise LineSyntaxError(f"field {pair!r} has no '=' in {line!r}")
        try:
            fields[_unescape(key)] = _parse_field(value)
        except ValueError as exc:
            raise LineSyntaxError(f"field {pair!r}: {exc}") from exc
    time_ms = int(sections[2]) if len(sections) == 3 else -1
    return Point(_unescape(head[0]), tags, fields, time_ms)
