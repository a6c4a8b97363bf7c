"""sldarts: single-level differentiable architecture search (Hou & Jin) and the DARTS baselines.

Python API (each mirrors a CLI subcommand)::

    import sldarts
    res = sldarts.search(space="nb201", dataset="digits", epochs=5, out="runs/demo")
    sldarts.retrain(sldarts.RetrainConfig(genotype="DARTS_V2", recipe="darts-cifar", data_root="data"))
"""

from __future__ import annotations

from typing import Any

from sldarts.config import RetrainConfig, SearchConfig
from sldarts.errors import SldartsError

__all__ = ["RetrainConfig", "SearchConfig", "SldartsError", "search", "retrain"]
__version__ = "0.1.0"


def search(config: SearchConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run a search and return its result dict (see :func:`sldarts.search_run.search`)."""
    from sldarts.search_run import search as _search

    return _search(config, **overrides)


def retrain(config: RetrainConfig) -> dict[str, Any]:
    """Retrain a cell from scratch with a recipe and return top-1, params and MACs."""
    from sldarts.evaluate.retrain import retrain as _retrain

    return _retrain(config)
