# The Prato telemetry hub: `hub run`, configured only by HUB_* environment variables
# (see docker-compose.yml and the README's configuration table).
#
# Two stages: the first builds the package into a virtualenv, the second copies that
# virtualenv into a clean image, so no build tools or pip caches end up in production.
# The base image is pinned to a full Python patch version and Debian release; bump it on purpose.

FROM python:3.11.10-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
WORKDIR /src
# pyproject.toml names README.md as the package's long description.
COPY pyproject.toml README.md ./
COPY hub/ hub/
RUN /opt/venv/bin/pip install . && /opt/venv/bin/hub --version


FROM python:3.11.10-slim-bookworm

# A fixed, unprivileged uid/gid so a host directory bind-mounted on /data can be chowned to it.
RUN groupadd --system --gid 10001 hub \
    && useradd --system --uid 10001 --gid hub --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin hub \
    && mkdir -p /data \
    && chown hub:hub /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Profiles stay owned by root: the hub only reads them.
COPY device_profiles/ /app/device_profiles/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HUB_PROFILES_DIR=/app/device_profiles \
    HUB_DATA_DIR=/data \
    HUB_API_HOST=0.0.0.0 \
    HUB_API_PORT=8080

# Hub state (HUB_DATA_DIR) lives here; a named volume keeps it across container upgrades.
VOLUME /data
USER hub

EXPOSE 8080
# Healthy while the API answers /healthz (it runs in the hub's process, so the process is up);
# /readyz additionally reports the broker and InfluxDB and is for the orchestrator's eyes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# The hub drains its queues on SIGTERM; compose gives it a stop_grace_period to do so.
STOPSIGNAL SIGTERM
CMD ["hub", "run"]
