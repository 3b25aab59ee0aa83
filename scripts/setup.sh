#!/usr/bin/env bash
# Sourced by scripts/test and scripts/demo: install what a fresh Debian 12 machine lacks (MariaDB 10.11, Java for
# Artemis, openssl) and this package with its test extras; exports PYTHON (a venv when the system Python refuses pip).
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
have openssl || missing+=(openssl)                # dev CA and broker certificate
have python3 || missing+=(python3)
have chromium || missing+=(chromium)              # the console's browser tests (selenium drives it)
have chromedriver || missing+=(chromium-driver)
if ! python3 -m venv --help >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/test: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates "${missing[@]}"
fi

# --- Python environment: the active one, or a venv when the system Python refuses pip (PEP 668) ------
PYTHON="${PYTHON:-python3}"
if "$PYTHON" - <<'PY'
import pathlib, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
managed = (pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()
sys.exit(0 if managed and not in_venv else 1)
PY
then
  venv="${DBSYNC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dbsync/venv}"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  PYTHON="$venv/bin/python"
fi
export PYTHON
"$PYTHON" -m pip --version >/dev/null 2>&1 || "$PYTHON" -m ensurepip --upgrade
"$PYTHON" -m pip install -q -e '.[test]'

