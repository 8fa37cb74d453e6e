"""The launch path stays light: the thin client, the shim and the init load no module that costs
milliseconds at every launch (typing, dataclasses, json and re, enum behind socket and signal,
contextlib, the libraries that set sandboxes up). Measured by what a fresh interpreter holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAUNCH_PATH = [
    "nsrun.cli.entry",
    "nsrun.helper.client",
    "nsrun.cli.drive",
    "nsrun.process.shim",
    "nsrun.process.shim_main",
    "nsrun.process.readiness",
    "nsrun.cni.entry",  # what engines exec once per CNI call
]
HEAVY = {
    "typing",
    "dataclasses",
    "json",
    "re",
    "enum",
    "socket",
    "signal",
    "contextlib",
    "collections",
    "functools",
    "subprocess",
    "pathlib",
    "typer",
    "pyroute2",
    "nftables",
    "iptc",
    "psutil",
    "asyncio",
}


def test_the_launch_path_loads_nothing_heavy() -> None:
    imports = "; ".join(f"import {module}" for module in LAUNCH_PATH)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); {imports}; print(sorted(sys.modules))"
    # -I -S: as the installed launcher starts
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    loaded = {module.split(".")[0] for module in ast.literal_eval(result.stdout)}
    assert not HEAVY & loaded
