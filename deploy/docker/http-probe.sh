#!/usr/bin/env bash
# http-probe [PORT] [PATH]: exit 0 when `GET PATH` on 127.0.0.1:PORT answers 2xx, 1 otherwise.
#
# The container HEALTHCHECK of the guest-session-worker image. It needs nothing but bash (whose
# /dev/tcp opens the connection), so the runtime image carries no curl or wget. PORT defaults to
# the port of HEALTH_ADDR (0.0.0.0:8080), PATH to /healthz. Kubernetes does not use this: its
# probes are httpGet probes in deploy/base/deployment.yaml.
set -euo pipefail

health_addr="${HEALTH_ADDR:-0.0.0.0:8080}"
port="${1:-${health_addr##*:}}"
path="${2:-/healthz}"

exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "${path}" >&3
# Status line: HTTP/1.x CODE REASON
IFS=' ' read -r -t 5 _version status _reason <&3
exec 3<&-
[[ "${status}" =~ ^2[0-9][0-9]$ ]]
