#!/usr/bin/env bash
# The hub's main job on a fresh Debian machine: installs what is missing, starts a local
# Mosquitto and InfluxDB (free loopback ports, data under .state/demo), the hub, and a
# simulated city fleet (the last 6 hours replayed fast, then live), and prints every few
# seconds how many points each measurement holds. Ctrl-C stops everything it started.
#
#   DEMO_SECONDS=N   stop by itself after N seconds (default: run until Ctrl-C)
#   DEMO_STATE=DIR   where services, logs and the inventory live (default: .state/demo)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

STATE="${DEMO_STATE:-.state/demo}"
mkdir -p "$STATE"
HUB=.venv/bin/hub

echo "== starting Mosquitto and InfluxDB"
"$HUB" services up --state-dir "$STATE/services" > "$STATE/env.sh"
# shellcheck disable=SC1091  # generated just above
source "$STATE/env.sh"
export HUB_INFLUX_DB=prato
export HUB_INVENTORY="$STATE/devices.csv"
export HUB_DATA_DIR="$STATE/data"
export HUB_MQTT_CLIENT_ID=prato-hub-demo
# the API on a free port, with one operator key made for this demo
HUB_API_PORT=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export HUB_API_PORT
DEMO_KEY=$("$HUB" apikey new --id demo --org comune --role operator | sed -n 's/^key (.*): //p')
# a second organisation's key: Gida owns no device here and sees only what others share
GIDA_KEY=$("$HUB" apikey new --id gida-wall --org gida --role operator | sed -n 's/^key (.*): //p')
HUB_API_KEYS=$(.venv/bin/python -c "import sys; from hub.api.security import digest; print('demo:comune:operator:' + digest(sys.argv[1]) + ',gida-wall:gida:operator:' + digest(sys.argv[2]))" "$DEMO_KEY" "$GIDA_KEY")
export HUB_API_KEYS
# who sees what: the example policy (README, "The Situation Room exchange")
export HUB_SHARING_FILE=sharing.example.yaml
# local InfluxDB 1.x only: production databases/buckets are created at deployment
.venv/bin/python -c "import sys; from hub import devservices; devservices.create_database(sys.argv[1], 'prato')" "$HUB_INFLUX_URL"

"$HUB" simulate --write-inventory "$HUB_INVENTORY" --inventory-only

pids=()
cleanup() {
    trap - EXIT INT TERM
    echo "== stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$HUB" services down --state-dir "$STATE/services" || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "== starting the hub (log: $STATE/hub.log)"
"$HUB" run > "$STATE/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
    grep -q "hub running" "$STATE/hub.log" && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$STATE/hub.log"; exit 1; }
    sleep 0.1
done
grep -q "hub running" "$STATE/hub.log" || { echo "hub did not start"; cat "$STATE/hub.log"; exit 1; }

echo "== starting the simulated fleet (log: $STATE/simulate.log)"
"$HUB" simulate --hours 6 --speed 0 --follow > "$STATE/simulate.log" 2>&1 &
pids+=($!)

cat <<INFO

Data is arriving. In another shell:
  source $STATE/env.sh; export HUB_INFLUX_DB=prato
  $HUB show                                         # points per measurement
  mosquitto_sub -p ${HUB_MQTT_URL##*:} -t 'hub/deadletter/#' -v   # dead letters (bad frames)
  mosquitto_sub -p ${HUB_MQTT_URL##*:} -t 'hub/alerts/#' -v       # alert notifications
The API (key for this demo: $DEMO_KEY):
  http://127.0.0.1:$HUB_API_PORT/api/v1/docs
  curl -H "Authorization: Bearer $DEMO_KEY" http://127.0.0.1:$HUB_API_PORT/api/v1/views/parking/occupancy
  curl -N -H "Authorization: Bearer $DEMO_KEY" http://127.0.0.1:$HUB_API_PORT/api/v1/live   # live feed
As Gida (key $GIDA_KEY), only what the others share:
  curl -H "Authorization: Bearer $GIDA_KEY" http://127.0.0.1:$HUB_API_PORT/api/v1/devices
  curl -H "Authorization: Bearer $GIDA_KEY" -H 'Content-Type: application/json' \
    -d '{"id": "gida:demo-1", "kind": "water_main_repair", "title": "Rottura condotta", "zone": "centro-storico", "status": "active", "planned_start": "$(date -u +%Y-%m-%dT%H:00:00Z)", "planned_end": "$(date -u -d '+4 hours' +%Y-%m-%dT%H:00:00Z)"}' \
    http://127.0.0.1:$HUB_API_PORT/api/v1/interventions
Ctrl-C stops everything.

INFO

started=$SECONDS
while :; do
    sleep 5
    echo "---- $(date +%T)"
    "$HUB" show --hours 24 || true
    curl -fsS -H "Authorization: Bearer $DEMO_KEY" \
        "http://127.0.0.1:$HUB_API_PORT/api/v1/alerts" \
        | .venv/bin/python -c "import json,sys; b=json.load(sys.stdin); print(f'open alerts: {b[\"total\"]}')" || true
    if [[ -n "${DEMO_SECONDS:-}" ]] && (( SECONDS - started >= DEMO_SECONDS )); then
        break
    fi
done
