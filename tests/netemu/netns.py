"""The network namespaces that exist now: what the namespace backends' tests check cleanup against."""

from __future__ import annotations

import subprocess


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}
