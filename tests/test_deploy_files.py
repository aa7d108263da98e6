"""Checks of the deployment files that need no Docker engine.

The Dockerfile, docker-compose.yml, .env.example and the Grafana provisioning are only exercised
for real on a Docker host; these tests catch what can be caught before that: a compose file that
does not validate or starts with a missing secret, a COPY of a file that is not there (or that
.dockerignore leaves out), floating image tags, and dashboards that point at the wrong datasource
or run unbounded queries, dashboard models that Grafana would load wrongly (duplicate ids and
uids, undefined variables), and the geomap gazetteer and its generator.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
DASHBOARD_PROVIDER_FILE = ROOT / "grafana" / "provisioning" / "dashboards" / "prato.yaml"
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"

DATASOURCE_UID = "prato-influxdb"
COMPOSE_TIMEOUT_S = 60

# `${NAME:?message}` marks a variable compose must refuse to run without.
REQUIRED_VAR = re.compile(r"\$\{(\w+):\?")
# Any interpolated variable: `${NAME}`, `${NAME:-default}`, `${NAME:?message}`, ...
ANY_VAR = re.compile(r"(?<!\$)\$\{(\w+)")
# A pinned tag starts with a full major.minor.patch version (3.11.10-slim-bookworm, 2.0.18).
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+")
GLOB_CHARS = re.compile(r"[*?\[]")


def _compose_source() -> str:
    """docker-compose.yml without its comment lines, which mention variables in prose."""
    lines = COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(_compose_source())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert services, "docker-compose.yml defines no services"
    return services


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def _run_compose_config(env_file: Path, home: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is not installed, so compose cannot validate")
    # Only PATH and a scratch HOME: a variable set in the shell running the tests would
    # override the env-file and hide a missing entry.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMPOSE_TIMEOUT_S,
        check=False,
    )


def _assert_pinned(image: str, where: str) -> None:
    """``image`` names a digest, or a tag that is a full version (never ``latest``)."""
    if "@sha256:" in image:
        return
    repository, _, tag = image.rpartition(":")
    assert repository, f"{where}: image {image!r} has no tag"
    assert "/" not in tag, f"{where}: image {image!r} has no tag"
    assert tag != "latest", f"{where}: image {image!r} uses latest"
    assert PINNED_TAG.match(tag), f"{where}: image {image!r} is not pinned to a full version"


def _required_vars() -> list[str]:
    return sorted(set(REQUIRED_VAR.findall(_compose_source())))


# --- docker-compose.yml and .env.example ---------------------------------------------------


def test_compose_config_is_valid_with_env_example(tmp_path: Path) -> None:
    result = _run_compose_config(ENV_EXAMPLE, tmp_path)
    assert result.returncode == 0, result.stderr


def test_compose_has_required_secrets() -> None:
    required = _required_vars()
    for secret in ("INFLUXDB_ADMIN_TOKEN", "INFLUXDB_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert secret in required, f"{secret} must be written ${{{secret}:?...}}"


@pytest.mark.parametrize("name", _required_vars())
def test_compose_config_fails_naming_a_missing_required_variable(name: str, tmp_path: Path) -> None:
    kept = [
        line
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.partition("=")[0].strip() != name
    ]
    env_file = tmp_path / "missing.env"
    env_file.write_text("\n".join(kept) + "\n", encoding="utf-8")

    result = _run_compose_config(env_file, tmp_path)

    assert result.returncode != 0, f"compose accepted an env without {name}"
    assert name in result.stdout + result.stderr


def test_env_example_defines_every_compose_variable_with_a_comment() -> None:
    used = set(ANY_VAR.findall(_compose_source()))
    defined = _env_example()
    assert sorted(used - defined.keys()) == [], "variables missing from .env.example"
    assert sorted(defined.keys() - used) == [], ".env.example variables compose never reads"

    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert number > 0, f"{line!r} has no comment above it"
            assert lines[number - 1].startswith("#"), f"{line!r} has no comment above it"


def test_every_compose_image_is_pinned() -> None:
    for name, service in _services().items():
        if "image" not in service:
            assert "build" in service, f"service {name} has neither image nor build"
            continue
        image = str(service["image"])
        assert "$" not in image, f"service {name}: image {image!r} is not a literal"
        _assert_pinned(image, f"service {name}")


def test_every_service_restarts_and_has_a_healthcheck() -> None:
    dockerfile_has_healthcheck = any(
        instruction == "HEALTHCHECK" for instruction, _ in _dockerfile_instructions()
    )
    for name, service in _services().items():
        assert service.get("restart") == "unless-stopped", f"service {name}: restart policy"
        if "healthcheck" in service:
            assert service["healthcheck"].get("test"), f"service {name}: empty healthcheck"
        else:
            built_here = "build" in service and "image" not in service
            assert built_here, f"service {name} has no healthcheck"
            assert dockerfile_has_healthcheck, f"service {name}: no HEALTHCHECK in Dockerfile"


def test_depends_on_waits_for_healthy_services() -> None:
    services = _services()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"service {name}: depends_on without conditions"
        for dependency, spec in depends_on.items():
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


# --- Dockerfile and .dockerignore -----------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _copy_sources(arguments: str) -> list[str] | None:
    """The build-context sources of a COPY/ADD, or None when it copies from another stage."""
    if arguments.startswith("["):
        words: list[str] = json.loads(arguments)
    else:
        words = arguments.split()
    if any(word.startswith("--from=") for word in words):
        return None
    paths = [word for word in words if not word.startswith("--")]
    assert len(paths) >= 2, f"COPY {arguments!r} needs a source and a destination"
    return paths[:-1]


def _dockerignore_allows(source: str) -> bool:
    """Whether the allowlist-style .dockerignore keeps ``source`` in the build context.

    Only the form used here is understood: ``*`` first, then one ``!path`` per kept path.
    """
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if "*" not in lines:
        return True
    kept = {line[1:].strip("/") for line in lines if line.startswith("!")}
    top = Path(source.strip("/")).parts[0]
    return any(fnmatch.fnmatchcase(path, top) for path in kept)


def test_dockerfile_copies_only_existing_files_kept_by_dockerignore() -> None:
    copies = [
        sources
        for instruction, arguments in _dockerfile_instructions()
        if instruction in {"COPY", "ADD"}
        if (sources := _copy_sources(arguments)) is not None
    ]
    assert copies, "the Dockerfile copies nothing from the build context"
    for sources in copies:
        for source in sources:
            assert not Path(source).is_absolute(), f"COPY source {source!r} is absolute"
            assert _dockerignore_allows(source), f".dockerignore leaves out {source!r}"
            # A wildcard source is optional by design (Docker skips one that matches nothing
            # when the same COPY has another source); a plain path must be there.
            if not GLOB_CHARS.search(source):
                assert (ROOT / source).exists(), f"COPY source {source!r} does not exist"
        assert any(list(ROOT.glob(source)) for source in sources), f"COPY {sources} copies nothing"


def test_dockerfile_base_images_are_pinned() -> None:
    stages: set[str] = set()
    bases = []
    for instruction, arguments in _dockerfile_instructions():
        if instruction != "FROM":
            continue
        words = [word for word in arguments.split() if not word.startswith("--")]
        image = words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue
        bases.append(image)
        _assert_pinned(image, "Dockerfile FROM")
    assert bases, "the Dockerfile has no FROM"


def test_dockerfile_runs_the_hub_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users, "the Dockerfile never switches away from root"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"the hub runs as {users[-1]!r}"
    commands = [arguments for instruction, arguments in instructions if instruction == "CMD"]
    assert commands, "the Dockerfile has no CMD"
    assert json.loads(commands[-1]) == ["hub", "run"]


# --- Grafana provisioning and dashboards ----------------------------------------------------


def _yaml_file(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _provisioned_datasource() -> dict[str, Any]:
    datasources = _yaml_file(DATASOURCE_FILE)["datasources"]
    assert isinstance(datasources, list)
    assert len(datasources) == 1
    datasource = datasources[0]
    assert isinstance(datasource, dict)
    return datasource


def _dashboards() -> list[Path]:
    paths = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert paths, f"no dashboards in {DASHBOARDS_DIR}"
    return paths


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(_all_panels(panel.get("panels", [])))
    return found


def test_datasource_is_influxql_with_the_fixed_uid_and_a_token_from_the_environment() -> None:
    datasource = _provisioned_datasource()
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "influxdb"
    assert datasource["url"] == "http://influxdb:8086"
    assert datasource["jsonData"]["version"] == "InfluxQL"
    assert datasource["jsonData"]["dbName"] == "prato"
    assert datasource["jsonData"]["httpHeaderName1"] == "Authorization"
    assert datasource["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUX_TOKEN}"
    grafana_env = _services()["grafana"]["environment"]
    assert "INFLUX_TOKEN" in grafana_env, "compose does not pass INFLUX_TOKEN to Grafana"


def test_dashboard_provider_reads_the_mounted_dashboards_folder() -> None:
    providers = _yaml_file(DASHBOARD_PROVIDER_FILE)["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    assert paths == {"/var/lib/grafana/dashboards"}
    mounts = _services()["grafana"]["volumes"]
    assert any(
        str(mount).startswith("./grafana/dashboards:/var/lib/grafana/dashboards")
        for mount in mounts
    )


@pytest.mark.parametrize("path", _dashboards(), ids=lambda path: path.name)
def test_dashboard_panels_use_the_provisioned_datasource_and_bounded_queries(
    path: Path,
) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    assert dashboard.get("uid"), f"{path.name} has no fixed uid"
    provisioned_uid = _provisioned_datasource()["uid"]
    assert provisioned_uid == DATASOURCE_UID

    panels = _all_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}: {ids}"

    queried = [panel for panel in panels if panel.get("type") != "row"]
    assert queried, f"{path.name} has no panels"
    for panel in queried:
        where = f"{path.name} panel {panel['id']} ({panel.get('title')!r})"
        assert panel["datasource"]["uid"] == provisioned_uid, where
        assert panel["targets"], f"{where} has no queries"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == provisioned_uid, f"{where} {target['refId']}"
            query = target["query"]
            assert "$timeFilter" in query, f"{where} {target['refId']}: unbounded query"


def test_overview_dashboard_has_its_fixed_uid() -> None:
    dashboard = json.loads((DASHBOARDS_DIR / "hub-overview.json").read_text(encoding="utf-8"))
    assert dashboard["uid"] == "prato-overview"


# --- every dashboard's JSON model -------------------------------------------------------------

GAZETTEER_DIR = ROOT / "grafana" / "gazetteer"
MAKE_GAZETTEER = ROOT / "grafana" / "make_gazetteer.py"
# Where docker-compose.yml mounts grafana/gazetteer/ in the Grafana container, and the URL path
# under which Grafana serves that folder (its static files live in /usr/share/grafana/public).
GAZETTEER_MOUNT = "./grafana/gazetteer:/usr/share/grafana/public/gazetteer/prato"
GAZETTEER_URL_PREFIX = "public/gazetteer/prato/"
# What Grafana itself fills into an InfluxQL query, beside the dashboard's own variables.
GRAFANA_MACROS = {"timeFilter", "__interval", "__interval_ms"}
PANEL_TYPES = {"stat", "table", "timeseries", "bargauge", "geomap", "state-timeline", "row"}
VARIABLE_USE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")
# A multi-value variable is only safe inside a regular expression: Grafana sends it as
# `(a|b)` (or the allValue), which `= 'value'` would not match.
REGEX_USE = re.compile(r"=~ /\^\$(\w+)\$/")


def _model(path: Path) -> dict[str, Any]:
    model = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(model, dict), f"{path.name} is not a JSON object"
    return model


def _variables(model: dict[str, Any]) -> list[dict[str, Any]]:
    variables = model["templating"]["list"]
    assert isinstance(variables, list)
    return variables


def _annotation_queries(model: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(name, annotation, InfluxQL) of each InfluxDB annotation of a dashboard."""
    found = []
    for annotation in model["annotations"]["list"]:
        if annotation.get("builtIn"):
            continue
        found.append((annotation["name"], annotation, annotation["target"]["query"]))
    return found


def _queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, InfluxQL) of every panel target, annotation and variable of a dashboard."""
    found = [
        (f"panel {panel['id']} {target['refId']}", target["query"])
        for panel in _all_panels(model["panels"])
        for target in panel.get("targets", [])
    ]
    found += [(f"annotation {name}", query) for name, _, query in _annotation_queries(model)]
    found += [
        (f"variable {v['name']}", v["query"]) for v in _variables(model) if v["type"] == "query"
    ]
    return found


def test_dashboards_have_unique_uids_and_titles_and_one_schema_version() -> None:
    models = {path.name: _model(path) for path in _dashboards()}
    uids = [model["uid"] for model in models.values()]
    assert len(uids) == len(set(uids)), f"duplicate dashboard uids: {uids}"
    titles = [model["title"] for model in models.values()]
    assert len(titles) == len(set(titles)), f"duplicate dashboard titles: {titles}"
    versions = {name: model["schemaVersion"] for name, model in models.items()}
    assert len(set(versions.values())) == 1, f"schemaVersion differs: {versions}"
    for name, model in models.items():
        assert model["editable"] is False, f"{name}: provisioned dashboards are read-only"
        assert "id" not in model or model["id"] is None, f"{name}: a fixed id clashes on import"
        assert model["time"]["from"].startswith("now-"), name
        assert "prato" in model["tags"], f"{name}: the dashboards link each other by tag prato"


@pytest.mark.parametrize("path", _dashboards(), ids=lambda path: path.name)
def test_dashboard_model_is_well_formed(path: Path) -> None:
    model = _model(path)
    panels = _all_panels(model["panels"])
    for panel in panels:
        where = f"{path.name} panel {panel['id']} ({panel.get('title')!r})"
        assert isinstance(panel["id"], int), where
        assert panel["type"] in PANEL_TYPES, f"{where}: unexpected type {panel['type']}"
        assert panel.get("title"), where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), where
        assert grid["w"] > 0, where
        assert grid["h"] > 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the dashboard"
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds {refs}"
        for target in panel.get("targets", []):
            assert target.get("rawQuery") is True, f"{where} {target['refId']}: not raw InfluxQL"
            assert target.get("resultFormat") in {"time_series", "table"}, where
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), f"{path.name}: duplicate panel titles"


@pytest.mark.parametrize("path", _dashboards(), ids=lambda path: path.name)
def test_dashboard_variables_and_annotations_use_the_datasource_and_are_defined(
    path: Path,
) -> None:
    model = _model(path)
    variables = {v["name"]: v for v in _variables(model)}
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DATASOURCE_UID, f"{path.name} ${name}"
            assert variable["query"].upper().startswith("SHOW TAG VALUES"), f"{path.name} ${name}"
        if variable.get("multi") or variable.get("includeAll"):
            # without it, "All" expands to every value as one huge regular expression
            assert variable.get("allValue") == ".*", f"{path.name} ${name}: allValue"
    for name, annotation, query in _annotation_queries(model):
        where = f"{path.name} annotation {name!r}"
        assert annotation["datasource"]["uid"] == DATASOURCE_UID, where
        assert "$timeFilter" in query, f"{where}: unbounded query"
        assert annotation["target"]["textColumn"], where
    for panel in _all_panels(model["panels"]):
        if "repeat" in panel:
            assert panel["repeat"] in variables, f"{path.name} panel {panel['id']}: repeat"
    for where, query in _queries(model):
        used = {next(g for g in m.groups() if g) for m in VARIABLE_USE.finditer(query)}
        unknown = used - variables.keys() - GRAFANA_MACROS
        assert not unknown, f"{path.name} {where}: undefined variables {sorted(unknown)}"
        in_regex = REGEX_USE.findall(query)
        for name in used & variables.keys():
            uses = len(re.findall(rf"\${name}\b", query))
            assert in_regex.count(name) == uses, f"{path.name} {where}: ${name} outside =~ /^$/"


def test_alert_annotations_are_on_every_domain_dashboard() -> None:
    for name in ("parking.json", "lighting.json", "traffic.json", "alerts.json"):
        queries = [q for _, _, q in _annotation_queries(_model(DASHBOARDS_DIR / name))]
        assert any('FROM "alert_event"' in q for q in queries), f"{name}: no alert annotation"


def test_geomap_gazetteer_is_mounted_and_valid() -> None:
    mounts = [str(mount) for mount in _services()["grafana"]["volumes"]]
    assert any(m.startswith(GAZETTEER_MOUNT) for m in mounts), mounts
    geomaps = [
        (path.name, layer)
        for path in _dashboards()
        for panel in _all_panels(_model(path)["panels"])
        if panel["type"] == "geomap"
        for layer in panel["options"]["layers"]
    ]
    assert geomaps, "no geomap panel"
    for name, layer in geomaps:
        location = layer["location"]
        assert location["mode"] == "lookup", name
        assert location["lookup"] == "device_id", name
        gazetteer = location["gazetteer"]
        assert gazetteer.startswith(GAZETTEER_URL_PREFIX), f"{name}: {gazetteer} is not mounted"
        served = GAZETTEER_DIR / gazetteer.removeprefix(GAZETTEER_URL_PREFIX)
        data = json.loads(served.read_text(encoding="utf-8"))
        assert data["type"] == "FeatureCollection"
        assert isinstance(data["features"], list)


def _make_gazetteer(
    tmp_path: Path, rows: list[str]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    inventory = tmp_path / "devices.csv"
    header = "device_id,profile,zone,lat,lon,owner,installed_at"
    inventory.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    output = tmp_path / "out" / "gazetteer.json"
    result = subprocess.run(
        [sys.executable, str(MAKE_GAZETTEER), str(inventory), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=COMPOSE_TIMEOUT_S,
        check=False,
    )
    return result, output


def test_make_gazetteer_places_every_device_with_coordinates(tmp_path: Path) -> None:
    result, output = _make_gazetteer(
        tmp_path,
        [
            "PO-PB-00412,parking_bay,centro-storico,43.8805,11.0966,comune,2025-01-01",
            "PO-LP-118-07,citelum_lighting,macrolotto,43.8655,11.0795,citelum,",
            "PO-TC-017,traffic_counter,san-paolo,,,comune,",
        ],
    )
    assert result.returncode == 0, result.stderr
    assert "PO-TC-017" in result.stderr  # told which device is not on the map
    features = json.loads(output.read_text(encoding="utf-8"))["features"]
    assert [(f["id"], f["geometry"]["coordinates"]) for f in features] == [
        ("PO-LP-118-07", [11.0795, 43.8655]),
        ("PO-PB-00412", [11.0966, 43.8805]),
    ]
    assert features[1]["geometry"]["type"] == "Point"
    assert features[1]["properties"] == {
        "device_id": "PO-PB-00412",
        "profile": "parking_bay",
        "zone": "centro-storico",
    }


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("PO-PB-1,parking_bay,centro,91,11,comune,", "outside"),
        ("PO-PB-1,parking_bay,centro,north,11,comune,", "not a number"),
        (",parking_bay,centro,43.8,11,comune,", "empty device_id"),
    ],
)
def test_make_gazetteer_refuses_a_bad_row_naming_its_line(
    tmp_path: Path, row: str, reason: str
) -> None:
    result, output = _make_gazetteer(tmp_path, [row])
    assert result.returncode == 1
    assert reason in result.stderr
    assert "devices.csv:2" in result.stderr
    assert not output.exists()


def test_make_gazetteer_refuses_a_device_listed_twice(tmp_path: Path) -> None:
    row = "PO-PB-1,parking_bay,centro,43.8,11.1,comune,"
    result, _ = _make_gazetteer(tmp_path, [row, row])
    assert result.returncode == 1
    assert "listed twice" in result.stderr
