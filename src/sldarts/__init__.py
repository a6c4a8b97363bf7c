"""sldarts: single-level differentiable architecture search (Hou & Jin) and the DARTS baselines.

Python API (each mirrors a CLI subcommand)::

    import sldarts
    res = sldarts.search(space="nb201", dataset="digits", epochs=5, out="runs/demo")
    sldarts.retrain(genotype="DARTS_V2", recipe="darts-cifar", data_root="data")

Your own network and data (see docs/custom.md)::

    from sldarts.nn import Choice
    res = sldarts.search(model=net, train_data=train, valid_data=valid, epochs=10)
    plain = sldarts.fix(net, res["choices"])
"""

from __future__ import annotations

from typing import Any

from sldarts.config import RetrainConfig, SearchConfig
from sldarts.errors import SldartsError
from sldarts.nn import Choice, InputChoice, fix

__all__ = ["Choice", "InputChoice", "RetrainConfig", "SearchConfig", "SldartsError", "fix", "load", "retrain",
           "search"]
__version__ = "0.2.0"


def search(config: SearchConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run a search and return its result dict (see :func:`sldarts.search_run.search`): config keys as
    keywords, plus ``model=``, ``train_data=``, ``valid_data=`` for your own network and data sets."""
    from sldarts.search_run import search as _search

    return _search(config, **kwargs)


def retrain(config: RetrainConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Retrain a cell from scratch with a recipe and return top-1, params and MACs. Keywords are retrain
    keys (``source_run=RUN_DIR``, ``genotype=``, ``arch=``, ``recipe=``, ``epochs=``...)."""
    from sldarts.config import load_config, load_retrain_config
    from sldarts.evaluate.retrain import retrain as _retrain

    if config is None:
        config = load_retrain_config(None, overrides)
    elif overrides:
        config = load_config(None, overrides, base=config.to_dict(), schema=RetrainConfig)
    return _retrain(config)


def load(run_dir: str) -> Any:
    """The trained network of a retrain run (or a searched user model fixed with its choices), in eval
    mode, with its preprocessing: ``.model``, ``.shape``, ``.mean``, ``.std``, ``.classes``, ``.preprocess``."""
    from sldarts.export import load as _load

    return _load(run_dir)
