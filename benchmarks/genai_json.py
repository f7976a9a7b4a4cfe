"""One `genai` command run as a user's shell would run it, in this Python, and its --json answer
(stderr passes through for the log). Benchmarks run as scripts, so they import this by its name."""

from __future__ import annotations

import json
import subprocess
import sys


def genai(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "genai_cli", *args, "--json", "-q"], stdout=subprocess.PIPE, check=True)
    return json.loads(proc.stdout)
