#!/usr/bin/env bash
# What the test suite needs from the machine, set up if missing (`make test` and `.ci/run` call it):
#   - PostgreSQL on 127.0.0.1:5432 (catalog tests): the machine's cluster, started if it is down;
#   - prometheus + promtool (observability tests): Debian's `prometheus` package, installed if missing;
#   - chromium + chromedriver (the report's browser test): Debian's `chromium` and `chromium-driver`;
#   - stunnel (the Kafka TLS tests' terminator in front of tansu): Debian's `stunnel4`.
# Packages come from apt-get (run as root, or with sudo available); nothing is installed if already there.
# The Kafka-protocol broker and the S3 server are not here: the tests start their own from wheels.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
updated=""

apt_install() {  # apt_install PACKAGE... : one `apt-get update` per run, then a quiet install
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    echo "installing $* needs root (apt-get); run this script as root or install them by hand" >&2
    exit 1
  fi
  if [ -z "$updated" ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "== starting PostgreSQL"
  if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql ]; then
    echo "PostgreSQL is not installed: install a cluster listening on 127.0.0.1:5432 with a database" \
         "'test' and trust auth, or set AVMINER_TEST_POSTGRES=postgresql://..." >&2
    exit 1
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "== installing prometheus (Debian package: prometheus server and promtool)"
  apt_install prometheus
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "== installing chromium and chromium-driver (Debian packages, for the report's browser test)"
  apt_install chromium chromium-driver
fi

if ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; then
  echo "== installing stunnel4 (Debian package, the TLS terminator of the Kafka TLS tests)"
  apt_install stunnel4
fi
