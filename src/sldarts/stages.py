"""P-DARTS's stages (Chen et al., ICCV 2019) as searches of their own, in ``OUT/stage1``, ``OUT/stage2``, ...:
a run driver beside :mod:`sldarts.search_run` (which passes its run class in), so that the method part
(:mod:`sldarts.methods.pdarts`) stays below the loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sldarts.errors import SldartsError
from sldarts.methods.pdarts import PdartsOptions, Progressive, prune, skip_cap, stage_plan


def _stage_weights(run_dir: Path) -> dict[str, Tensor]:
    """The activated α of a finished stage (its last metrics row)."""
    from sldarts.rundir import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "weights" in r]
    return {k: torch.tensor(v) for k, v in rows[-1]["weights"].items()}


def _stage_run(base: type) -> type:
    """A search run whose P-DARTS part knows its stage and kept ops before the supernet is built."""

    class StageRun(base):
        def __init__(self, cfg: Any, *, stage: int, keep: dict[str, list[list[int]]], **objects: Any) -> None:
            self._stage = (stage, keep)
            super().__init__(cfg, **objects)

        def build(self) -> None:
            part = self.method.get("pdarts")
            if not isinstance(part, Progressive):
                raise SldartsError("pdarts: the stage's method has no P-DARTS part; keep pdarts=true")
            part.stage, part.keep = self._stage
            super().build()

    return StageRun


def pdarts_search(cfg: Any, run_class: type, **objects: Any) -> dict[str, Any]:
    """The stages as searches in ``OUT/stage1``, ``OUT/stage2``, ...; the final genotype (the last stage's,
    with the skip cap) in ``OUT/result.json``. ``OUT`` is a run directory like any other (locked while the
    stages run, refused if it holds another run; overwrite=true removes its own files and, in each stage
    folder, what that stage wrote). A resumed search reads finished stages back from their directories and resumes the
    running one from its checkpoint."""
    from sldarts import checkpoint as ckpt
    from sldarts.distributed import barrier, setup
    from sldarts.rundir import prepare_run_dir, unlock_run_dir
    from sldarts.spaces.darts import OPS, DartsSpace

    space = cfg.search_space()
    if not isinstance(space, DartsSpace) or objects.get("model") is not None:
        raise SldartsError("pdarts: P-DARTS defines the DARTS space only; use space=darts or another method=")
    if cfg.auto_lr:
        raise SldartsError("pdarts: auto_lr=true would repeat every stage; drop auto_lr or method=pdarts")
    opts = PdartsOptions(**{k: getattr(cfg, k) for k in Progressive.option_names()})
    cells, keep_counts, _ = stage_plan(opts)
    main = setup(cfg.device)[0].main
    base, resuming = prepare_run_dir(cfg, Path("runs") / cfg.run_name, main)
    try:
        barrier()
        if resuming and (base / "result.json").exists():
            return json.loads((base / "result.json").read_text())
        result, stages = _stages(cfg, run_class, base, main, cells, keep_counts, objects)
        w = _stage_weights(base / f"stage{len(cells)}")
        genotype, changed = skip_cap(w, opts.pdarts_max_skip, lambda ws: space.rederive(ws, cfg.derive)[0],
                                     OPS.index("skip_connect"))
        if changed:
            result["uncapped"] = result["genotype"]
            result.pop("complexity", None)  # of the uncapped cell
        result.update(genotype=genotype, param_free_ratio=space.param_free_ratio(genotype), run_dir=str(base),
                      pdarts={"stages": stages, "max_skip": opts.pdarts_max_skip,
                              "skip_capped_edges": changed})
        if main:
            ckpt.atomic_write_text(base / "result.json", json.dumps(result, indent=1) + "\n")
        return result
    finally:
        if main:
            unlock_run_dir(base)


def _stages(cfg: Any, run_class: type, base: Path, main: bool, cells: list[int], keep_counts: list[int],
            objects: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run (or resume, or read back) every stage in ``base/stageN``, pruning the ops between stages: (a copy
    of the last stage's result, one entry per stage)."""
    import yaml

    from sldarts import checkpoint as ckpt
    from sldarts.rundir import claim, owned
    from sldarts.spaces.darts import OPS

    if main:  # the search as asked (a sweep sees a started P-DARTS point as partial and resumes it)
        claim(base, ["config.yaml", "result.json"])  # (a run of an older sldarts, resumed, had no marker)
        ckpt.atomic_write_text(base / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    keep = {k: [list(range(len(OPS))) for _ in range(14)] for k in ("normal", "reduce")}
    stages: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for s, depth in enumerate(cells):
        stage_dir = base / f"stage{s + 1}"
        # every key explicit: cfg.replace would fill the preset's keys in again over the user's (optim=single)
        sub = cfg.replace(**{**cfg.to_dict(), "out": str(stage_dir), "cells": depth})
        run = _stage_run(run_class)(sub, stage=s, keep=keep, **objects)
        try:
            if main:
                marked = owned(stage_dir) is not None  # the stage's run checked and marked it: OUT owns it now
                ckpt.atomic_write_text(stage_dir / "keep.json", json.dumps(keep) + "\n")
                claim(stage_dir, ["keep.json"])
                if marked:
                    claim(base, [stage_dir.name])
        except BaseException:
            run._release()
            raise
        result = run.run()
        stages.append({"stage": s + 1, "cells": depth, "ops_per_edge": len(keep["normal"][0]),
                       "run_dir": str(stage_dir)})
        if s < len(keep_counts):
            w = _stage_weights(stage_dir)
            keep = {k: prune(w[k], keep[k], keep_counts[s]) for k in keep}
    return dict(result), stages
