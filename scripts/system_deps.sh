#!/usr/bin/env bash
# System packages the tests and the service's Redis mode need: Debian's redis-server (the tests start their
# own server on a free port; nothing is left running). Installs only what is missing.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing redis-server (Debian package) for the live-store tests"
$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q redis-server >/dev/null; }
command -v redis-server >/dev/null
