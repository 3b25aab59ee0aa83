#!/usr/bin/env bash
# Sourced by scripts/test and scripts/demo: install what a fresh Debian 12 machine lacks (MariaDB 10.11, Java for
# Artemis, openssl) and this package with its test extras at the versions of requirements.lock, in a venv;
# exports PYTHON (that venv's interpreter).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "scripts/test: need root or sudo to install: $*" >&2; return 1
  fi
}

# --- system packages, only those missing -----------------------------------------------------------
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mariadbd || missing+=(mariadb-server-core)
have mariadb || missing+=(mariadb-client)
have java || missing+=(openjdk-17-jre-headless)   # Artemis
have javac || missing+=(openjdk-17-jdk-headless)  # the embedded ActiveMQ Classic's launcher (devtools/services)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)  # tests/service/test_brokers.py
have openssl || missing+=(openssl)                # dev CA and broker certificate
have python3 || missing+=(python3)
have chromium || missing+=(chromium)              # the console's browser tests (selenium drives it)
have chromedriver || missing+=(chromium-driver)
have faketime || missing+=(faketime)              # the field bed's MariaDB with a skewed clock
# The distribution's interpreter when it is new enough: Debian builds it with PGO and LTO, which makes every dbsync
# process about a fifth cheaper in CPU than an unoptimised build (pyenv's default) that may come first on PATH.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] \
   && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  PYTHON=/usr/bin/python3
fi
if ! "${PYTHON:-python3}" -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/test: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates "${missing[@]}"
  case " ${missing[*]} " in
    *" rabbitmq-server "*)  # the tests run a node of their own on other ports: the package's service stays off
      if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now rabbitmq-server epmd.socket epmd.service >/dev/null 2>&1 || true
      fi ;;
  esac
fi

# --- Python environment: a venv of the project's own, with the pinned versions of requirements.lock -------
# Always a venv (not the machine's Python), so that what the machine happens to have installed cannot change what
# the tests run against; the lock is the one place versions are chosen, for developers, the demo and CI alike.
PYTHON="${PYTHON:-python3}"
venv="${DBSYNC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dbsync/venv}"
if [ "$("$PYTHON" -c 'import sys; print(sys.prefix != sys.base_prefix)')" = True ] && [ -z "${DBSYNC_VENV:-}" ]; then
  venv="$("$PYTHON" -c 'import sys; print(sys.prefix)')"   # already in a venv: use it
fi
# a venv this script made earlier from another interpreter is made again from the chosen one
base="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys._base_executable))')"
if [ -z "${DBSYNC_VENV:-}" ] && [ -x "$venv/bin/python" ] && [ "$venv" != "$("$PYTHON" -c 'import sys; print(sys.prefix)')" ] \
   && [ "$("$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))')" != "$base" ]; then
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
PYTHON="$venv/bin/python"
export PYTHON
"$PYTHON" -m pip --version >/dev/null 2>&1 || "$PYTHON" -m ensurepip --upgrade
lock="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements.lock"
# PIP_CONSTRAINT reaches the isolated build environment too (setuptools is pinned as well)
PIP_CONSTRAINT="$lock" "$PYTHON" -m pip install -q --disable-pip-version-check -c "$lock" -e '.[test]'
