"""sldarts: single-level differentiable architecture search (Hou & Jin) and the DARTS baselines."""

from sldarts.config import SearchConfig
from sldarts.errors import SldartsError

__all__ = ["SearchConfig", "SldartsError", "search"]
__version__ = "0.1.0"


def search(config: SearchConfig | None = None, **overrides):
    """Run a search and return its result dict (see :func:`sldarts.search_run.search`)."""
    from sldarts.search_run import search as _search

    return _search(config, **overrides)
