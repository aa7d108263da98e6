#!/usr/bin/env bash
# Prepare this machine for development and tests; safe to run again at any time.
#
#   1. Debian packages: mosquitto + mosquitto-clients + influxdb (the local services that
#      hub/devservices.py starts), docker-compose (the tests validate docker-compose.yml with
#      it), python3-venv if `python3 -m venv` cannot work;
#   2. the virtualenv .venv;
#   3. the project and its dev tools in .venv, only when pyproject.toml changed since the
#      last successful install.
#
# Installing Debian's mosquitto/influxdb may also start their system services (on 1883 and
# 8086). We never use or stop those: devservices runs its own on free loopback ports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian puts mosquitto in /usr/sbin, which is not on every user's PATH.
have_binary() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

# Debian's python3 ships venv without ensurepip unless python3-venv is installed, and
# `python3 -m venv` then fails half-way; importing both tells in advance.
venv_works() {
    command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1
}

# --- 1. Debian packages ----------------------------------------------------------------
missing=()
if ! have_binary mosquitto || ! have_binary influxd; then
    missing+=(mosquitto mosquitto-clients influxdb)
fi
if ! venv_works; then
    missing+=(python3-venv)
fi
# docker-compose (v1, from Debian) only validates docker-compose.yml in the tests: no Docker
# engine is needed or started
if ! have_binary docker-compose; then
    missing+=(docker-compose)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    step "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        fail "not root and no sudo: install ${missing[*]} as root, then run me again"
    fi
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    have_binary mosquitto && have_binary influxd \
        || fail "mosquitto/influxd still missing after apt-get install"
else
    step "Debian packages: mosquitto, influxd, docker-compose and python3 venv already present"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "python3 is $(python3 -V 2>&1); this project needs Python >= 3.11"

# --- 2. virtualenv ----------------------------------------------------------------------
if [ -x .venv/bin/python ]; then
    step ".venv: already present"
else
    step ".venv: creating with $(python3 -V 2>&1)"
    python3 -m venv .venv
fi

# --- 3. project + dev tools -------------------------------------------------------------
stamp=.venv/.installed-pyproject.sha256
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    step "pip install -e '.[dev]': pyproject.toml unchanged, skipped"
else
    step "pip install -e '.[dev]': pyproject.toml new or changed, installing"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    # Written only after a successful install, so a failed one is retried next time.
    printf '%s\n' "$wanted" >"$stamp"
fi

step "done; start local services with: .venv/bin/python -m hub.devservices up"
