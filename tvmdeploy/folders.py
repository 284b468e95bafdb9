"""Where tvmdeploy keeps its state outside the repository: one root, two tenants.

<cache root>/ (default ~/.cache/tvmdeploy, or $XDG_CACHE_HOME/tvmdeploy; $TVMDEPLOY_CACHE_DIR
overrides) holds the per-target tuning caches and the emulated board
(<cache root>/board; $TVMDEPLOY_BOARD_DIR overrides that folder alone).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TVMDEPLOY_CACHE_DIR"
BOARD_DIR_ENV = "TVMDEPLOY_BOARD_DIR"


def default_cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tvmdeploy"


def default_board_dir() -> Path:
    if os.environ.get(BOARD_DIR_ENV):
        return Path(os.environ[BOARD_DIR_ENV])
    return default_cache_root() / "board"
