"""Loading device profiles from a folder and decoding messages with them.

``ProfileSet.load(folder)`` reads every ``*.yaml`` and ``*/profile.yaml`` below ``folder``,
validates each into a ``Profile`` and compiles its messages. Any problem stops start-up with
a ``ProfileError`` naming the file, the key and the reason. ``ProfileSet.decode(raw)`` routes
a message by topic and decodes it, returning ``Decoded`` or ``DeadLetter`` (never raising).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from hub.errors import DecodeError, ProfileError
from hub.model import DeadLetter, Decoded, RawMessage
from hub.profiles.decoder import MessageDecoder
from hub.profiles.schema import MessageSpec, Profile
from hub.profiles.topics import Router, TopicMismatch, TopicPattern

UNROUTED = "_unrouted"


@dataclass(frozen=True, slots=True)
class MeasurementSchema:
    """What the stored points of one measurement carry: tags, and fields with their types."""

    name: str
    profile: str
    tags: frozenset[str]
    fields: dict[str, str]  # name -> float | int | bool | string


@dataclass(frozen=True, slots=True)
class LoadedProfile:
    """A validated profile and the file it came from."""

    profile: Profile
    path: Path


def profile_files(folder: Path) -> list[Path]:
    """The profile files in ``folder``: ``NAME.yaml`` files and ``NAME/profile.yaml``."""
    if not folder.is_dir():
        raise ProfileError(str(folder), "", "profiles folder does not exist")
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*/profile.yaml"))
    if not files:
        raise ProfileError(str(folder), "", "no profile files (*.yaml or */profile.yaml)")
    return files


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _message_refs(message: MessageSpec) -> list[str]:
    refs = [*message.device_id]
    for point in message.points:
        for spec in [*point.tags.values(), *point.fields.values()]:
            refs += [r for r in (spec.from_, spec.count, spec.join) if r] + (spec.sum or [])
    return refs


def _check_message(path: Path, key: str, message: MessageSpec) -> None:
    """Cross-checks pydantic cannot do alone: references against topic, frame, selections."""
    try:
        pattern = TopicPattern(message.topic)
    except ValueError as exc:
        raise ProfileError(str(path), f"{key}.topic", str(exc)) from exc
    frame_names = (
        {f.name for layout in message.frame.layouts.values() for f in layout}
        if message.frame is not None
        else set()
    )
    for ref in _message_refs(message):
        prefix, _, rest = ref.partition(":")
        problem = None
        if prefix == "topic" and rest not in pattern.names:
            problem = f"{ref!r} names no level of topic {message.topic!r}"
        elif prefix == "frame" and rest not in frame_names:
            problem = f"{ref!r} is in no frame layout"
        elif prefix == "pick" and rest.split(".")[0] not in message.select:
            problem = f"{ref!r} names no selection in 'select'"
        if problem:
            raise ProfileError(str(path), key, problem)
    for index, point in enumerate(message.points):
        if message.format == "delimited" and point.each is not None:
            raise ProfileError(
                str(path),
                f"{key}.points.{index}.each",
                "delimited payloads already make one point per line",
            )


def _check_alerts(path: Path, profile: Profile) -> None:
    """Rules must name measurements, fields and tags the profile's points carry."""
    keys = profile.measurement_keys()
    for index, rule in enumerate(profile.alerts):
        where = f"alerts.{index}"
        measurement = rule.silence.measurement if rule.silence else rule.measurement
        if measurement not in keys:
            raise ProfileError(
                str(path), where, f"measurement {measurement!r} is not one of {sorted(keys)}"
            )
        used = set(rule.per)
        for condition in (rule.when, rule.clear):
            if condition is not None:
                used |= condition.fields()
        unknown = sorted(used - keys[measurement])
        if unknown:
            raise ProfileError(
                str(path), where, f"{unknown} are not fields or tags of {measurement!r}"
            )


def load_profile(path: Path) -> LoadedProfile:
    """Read and validate one profile file; ``ProfileError`` names file, key and reason."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), "", f"cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(str(path), "", f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(str(path), "", "a profile is a YAML mapping")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProfileError(str(path), _key(first["loc"]), first["msg"]) from exc
    for index, message in enumerate(profile.messages):
        _check_message(path, f"messages.{index}", message)
    _check_alerts(path, profile)
    return LoadedProfile(profile, path)


class ProfileSet:
    """All loaded profiles: the MQTT subscriptions they need and the decode stage."""

    def __init__(self, loaded: list[LoadedProfile]) -> None:
        self.profiles = loaded
        routes: list[tuple[TopicPattern, MessageDecoder]] = []
        seen_names: dict[str, Path] = {}
        seen_subs: dict[str, str] = {}
        for item in loaded:
            name = item.profile.profile
            if name in seen_names:
                raise ProfileError(
                    str(item.path), "profile", f"name {name!r} is also used by {seen_names[name]}"
                )
            seen_names[name] = item.path
            for index, message in enumerate(item.profile.messages):
                pattern = TopicPattern(message.topic)
                owner = seen_subs.get(pattern.subscription)
                if owner is not None:
                    raise ProfileError(
                        str(item.path),
                        f"messages.{index}.topic",
                        f"subscription {pattern.subscription!r} is already used by {owner}",
                    )
                seen_subs[pattern.subscription] = f"{name}.{message.name}"
                routes.append((pattern, MessageDecoder(name, message)))
        self.subscriptions = list(seen_subs)
        self._router: Router[MessageDecoder] = Router(routes)
        self._patterns = routes

    @classmethod
    def load(cls, folder: Path) -> ProfileSet:
        """Load and validate every profile in ``folder``."""
        return cls([load_profile(path) for path in profile_files(folder)])

    def schema(self) -> dict[str, MeasurementSchema]:
        """Every stored measurement of the loaded profiles, with its tags and typed fields."""
        found: dict[str, MeasurementSchema] = {}
        for item in self.profiles:
            for message in item.profile.messages:
                for point in message.points:
                    known = found.get(point.measurement)
                    tags = {"device_id", "zone", *point.tags}
                    fields: dict[str, str] = {n: spec.type for n, spec in point.fields.items()}
                    if known is not None:
                        tags |= known.tags
                        fields = {**known.fields, **fields}
                    found[point.measurement] = MeasurementSchema(
                        point.measurement, item.profile.profile, frozenset(tags), fields
                    )
        return found

    @property
    def names(self) -> list[str]:
        """Profile names, in load order."""
        return [item.profile.profile for item in self.profiles]

    def decode(self, raw: RawMessage) -> Decoded | DeadLetter:
        """Route ``raw`` by topic and decode it; bad input becomes a ``DeadLetter``."""
        try:
            found = self._router.route(raw.topic)
        except TopicMismatch as exc:
            return DeadLetter(self._owner(raw.topic), "bad_topic", str(exc), raw)
        if found is None:
            return DeadLetter(UNROUTED, "bad_topic", "no profile has this topic", raw)
        decoder, captured = found
        try:
            return decoder.decode(raw, captured)
        except DecodeError as exc:
            return DeadLetter(decoder.profile, exc.reason, exc.detail, raw)
        except RecursionError:
            return DeadLetter(decoder.profile, "invalid_json", "payload nests too deep", raw)

    def _owner(self, topic: str) -> str:
        """The profile whose pattern has the shape of ``topic`` (for bad_topic letters)."""
        for pattern, decoder in self._patterns:
            try:
                if pattern.match(topic) is not None:
                    return decoder.profile
            except TopicMismatch:
                return decoder.profile
        return UNROUTED
