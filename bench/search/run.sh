#!/usr/bin/env bash
# Installs what the search benchmark needs, then runs it: bash bench/search/run.sh [run.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v notmuch >/dev/null || ! /usr/bin/python3 -c 'import notmuch2' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq notmuch python3-notmuch2 >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e .
exec python3 bench/search/run.py "$@"
