#!/usr/bin/env bash
# The whole test suite, as root: lint, types, unit tests, and the integration tests, which build
# their own "host" in fresh network and mount namespaces (tests/world.sh) and never touch this
# machine's network, firewall or nsrun state. Extra arguments go to pytest (and then only that
# one pass runs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

"$here/scripts/setup.sh" --system

venv="$here/.venv"
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -e $stamp ]]; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check wheel
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]"
  "$here/scripts/setup.sh" --link "$venv"
  touch "$stamp"
fi

"$venv/bin/ruff" check nsrun tests scripts
"$venv/bin/ruff" format --check nsrun tests scripts
"$venv/bin/mypy"
# two workers: each integration test builds its own world, so they run side by side
"$venv/bin/python" -m pytest -n 2 "$@"
if [[ $# -eq 0 ]]; then
  # every integration test once more without the warm helper: the in-process path nsrun falls
  # back to (helper absent, broken, of another version) must stay as good
  NSRUN_HELPER=off "$venv/bin/python" -m pytest -n 2 -q tests/integration --ignore tests/integration/test_helper.py
fi
