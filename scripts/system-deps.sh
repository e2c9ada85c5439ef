#!/usr/bin/env bash
# Install the Debian packages VV Edge needs, when missing. Idempotent; as root it uses apt-get,
# otherwise it prints the one command to run and fails.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' || need+=(libgl1)
ldconfig -p 2>/dev/null | grep -q 'libglib-2.0.so.0' || need+=(libglib2.0-0)
if [ "${VV_WITH_ALERTMANAGER:-1}" = 1 ]; then
  command -v prometheus-alertmanager >/dev/null 2>&1 || [ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
fi
# the console's page tests drive Debian's chromium with Playwright (its own browser download is not used)
if [ "${VV_WITH_CHROMIUM:-1}" = 1 ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# the console's PostgreSQL tests start a throwaway server from Debian's binaries
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing system packages: ${need[*]}. Run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "Installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged brokers as services; VV runs its own, configured for VV_HOME.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now mosquitto prometheus-alertmanager >/dev/null 2>&1 || true
fi
