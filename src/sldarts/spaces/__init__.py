"""Search spaces. :func:`build_supernet` is the one place that maps a config to a supernet."""

from __future__ import annotations

from sldarts.activations import get_activation
from sldarts.config import SearchConfig
from sldarts.spaces.base import Supernet


def build_supernet(cfg: SearchConfig, num_classes: int, in_channels: int) -> Supernet:
    act = get_activation(cfg.activation)
    if cfg.space == "nb201":
        from sldarts.spaces.nb201 import NB201Supernet

        return NB201Supernet(cfg.channels, cfg.num_cells, num_classes, in_channels, act, cfg.alpha_init,
                             cfg.bn_track_stats, impl=cfg.impl)
    from sldarts.spaces.darts import DartsSupernet

    return DartsSupernet(cfg.channels, cfg.num_cells, num_classes, in_channels, act, cfg.alpha_init,
                         cfg.bn_track_stats, imagenet=cfg.dataset == "imagenet", impl=cfg.impl)


__all__ = ["Supernet", "build_supernet"]
