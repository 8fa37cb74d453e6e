#!/usr/bin/env bash
# The whole test suite, as root: lint, types, unit tests, and the integration tests, which build
# their own "host" in fresh network and mount namespaces (tests/world.sh) and never touch this
# machine's network, firewall or nsrun state. Extra arguments go to pytest.
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
"$venv/bin/python" -m pytest "$@"
