"""Optimisation strategies: how one training step updates w and α.

A strategy sees only ``model.weights()``, ``model.alphas()``, the two optimisers, a loss and batches;
it knows nothing of a space's internals. ``net`` is the model as called (possibly DDP-wrapped). The
method (:mod:`sldarts.methods`) adds its loss terms on α and, for SDARTS, the weight step's op weights.

- :class:`SingleLevel` (the paper): one batch, one forward, one backward, then both optimisers step.
- :class:`FirstOrder` (DARTS 1st order): α step on an α-batch, then a w step on the training batch.
- :class:`SecondOrder` (DARTS 2nd order): α step with the unrolled hypergradient, where the
  Hessian-vector product is the finite difference of DARTS, then the w step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call

from sldarts.errors import SldartsError
from sldarts.registry import Registry
from sldarts.spaces.base import Supernet
from sldarts.steps import StepOutput, all_finite, skipped_step

if TYPE_CHECKING:
    from sldarts.methods import Method

Batch = tuple[Tensor, Tensor]


class Strategy:
    """One training step. ``optim``/``order`` are the config values that select it (see :data:`STRATEGIES`)."""

    name = "base"
    optim = ""
    order = 1
    needs_arch_batch = False  # α steps on batches of its own (the data layer then holds an α split)

    def __init__(self, model: Supernet, net: nn.Module, w_opt: torch.optim.Optimizer,
                 a_opt: torch.optim.Optimizer, *, grad_clip: float = 5.0,
                 autocast: Callable[[], AbstractContextManager] = nullcontext, skip_nonfinite: bool = False,
                 method: Method | None = None) -> None:
        self.model, self.net = model, net
        self.skip_nonfinite = skip_nonfinite
        self.method = method
        self.w_opt, self.a_opt = w_opt, a_opt
        self.grad_clip = grad_clip
        self.autocast = autocast
        self.loss_fn = nn.CrossEntropyLoss()

    @classmethod
    def options(cls, cfg) -> dict:
        """Constructor keywords this strategy reads from the config."""
        return {}

    def arch_regularizer(self) -> Tensor | None:
        """The method's loss terms on α (DrNAS's KL, FairDARTS's zero-one loss, β-DARTS's ...), or None."""
        return self.method.loss(self.model) if self.method is not None else None

    def updates_alpha(self) -> bool:
        """False while the method holds α still (an α warm-up): only the weights step."""
        return self.method is None or self.method.updates_alpha()

    def smoothed(self) -> dict[str, Tensor] | None:
        """Op weights the weight step uses instead of the activated α (SDARTS's random smoothing), or None."""
        return self.method.weight_step_weights(self.model) if self.method is not None else None

    def _keep_buffers(self) -> None:
        """nan_policy=skip: the buffers (BatchNorm's running statistics) as they were before this step's first
        forward, which a non-finite batch would poison even though the step is skipped."""
        if self.skip_nonfinite and self.model.training and getattr(self, "_buffers", None) is None:
            self._buffers = [b.detach().clone() for b in self.model.buffers()]

    def _skip(self, x: Tensor) -> StepOutput:
        saved, self._buffers = getattr(self, "_buffers", None), None
        if saved is not None:
            with torch.no_grad():
                for b, v in zip(self.model.buffers(), saved, strict=True):
                    b.copy_(v)
        return skipped_step(x.device)

    def loss(self, x: Tensor, y: Tensor, net: nn.Module | None = None,
             weights: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        self._keep_buffers()
        with self.autocast():
            logits = (net or self.net)(x) if weights is None else (net or self.net)(x, weights=weights)
        return self.loss_fn(logits.float(), y), logits

    def _bad(self, loss: Tensor, params) -> bool:
        """nan_policy=skip: whether this step's loss or gradients are non-finite (then nothing is updated)."""
        if not self.skip_nonfinite or all_finite([loss, *(p.grad for p in params)]):
            return False
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        return True

    def _w_step(self) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.weights(), self.grad_clip)
        self.w_opt.step()

    def _out(self, loss: Tensor, logits: Tensor, y: Tensor) -> StepOutput:
        self._buffers = None
        if y.dim() == 1 and not y.is_floating_point() and logits.dim() == 2:  # class indices: count hits
            return StepOutput(loss.detach(), (logits.detach().argmax(1) == y).sum(), len(y))
        return StepOutput(loss.detach(), torch.zeros((), device=loss.device), len(y))  # loss=: no accuracy

    def step(self, x: Tensor, y: Tensor, arch_batch: Callable[[], Batch] | None = None) -> StepOutput:
        raise NotImplementedError


class SingleLevel(Strategy):
    """w and α updated together from the same mini-batch in one backward pass (paper, eq. 3)."""

    name = "single"
    optim = "single"

    def step(self, x: Tensor, y: Tensor, arch_batch: Callable[[], Batch] | None = None) -> StepOutput:
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        smooth = self.smoothed()
        if smooth is not None:  # α's gradient from the clean weights, w's from the perturbed ones
            loss_a, _ = self.loss(x, y, net=self.model)
            reg = self.arch_regularizer()
            alphas = self.model.alphas()
            grads = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, torch.autograd.grad(
                loss_a if reg is None else loss_a + reg, alphas, allow_unused=True), strict=True)]
            _all_reduce_mean(grads)
            loss, logits = self.loss(x, y, weights=smooth)
            loss.backward()
            for a, g in zip(alphas, grads, strict=True):
                a.grad = g
        else:
            loss, logits = self.loss(x, y)
            reg = self.arch_regularizer()  # depends on α alone: w's gradient is the loss's
            (loss if reg is None else loss + reg).backward()
        if self._bad(loss, self.model.parameters()):
            return self._skip(x)
        self._w_step()
        if self.updates_alpha():
            self.a_opt.step()
        return self._out(loss, logits, y)


def _all_reduce_mean(grads: list[Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


class FirstOrder(Strategy):
    """Bi-level, first order: α from its own batch (held-out split, or another training batch)."""

    name = "bilevel1"
    optim = "bilevel"
    needs_arch_batch = True

    def arch_grads(self, x: Tensor, y: Tensor) -> list[Tensor]:
        # Only α's gradient is needed: autograd.grad skips every weight-gradient kernel.
        loss, _ = self.loss(x, y, net=self.model)
        reg = self.arch_regularizer()
        grads = list(torch.autograd.grad(loss if reg is None else loss + reg, self.model.alphas()))
        _all_reduce_mean(grads)
        return grads

    def _arch_step(self, grads: list[Tensor]) -> None:
        for a, g in zip(self.model.alphas(), grads, strict=True):
            a.grad = g
        self.a_opt.step()

    def step(self, x: Tensor, y: Tensor, arch_batch: Callable[[], Batch] | None = None) -> StepOutput:
        assert arch_batch is not None, "bi-level needs an α batch"
        if not self.updates_alpha():
            return self._bilevel_step(None, x, y)
        xa, ya = arch_batch()
        return self._bilevel_step(self.arch_grads(xa, ya), x, y)

    def _bilevel_step(self, arch_grads: list[Tensor] | None, x: Tensor, y: Tensor) -> StepOutput:
        if arch_grads is not None:  # None: α held still this step
            if self.skip_nonfinite and not all_finite(arch_grads):
                return self._skip(x)
            self._arch_step(arch_grads)
        self.w_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(x, y, weights=self.smoothed())
        loss.backward()
        self.a_opt.zero_grad(set_to_none=True)  # the w-step's α gradient is not used
        if self._bad(loss, self.model.weights()):
            return self._skip(x)
        self._w_step()
        return self._out(loss, logits, y)


class SecondOrder(FirstOrder):
    """DARTS 2nd order: ∇α L_val(w', α) − η ∇²_{α,w} L_train(w, α) ∇w' L_val(w', α),
    w' = w − η(μ·m + ∇w L_train + λw) the one-step unrolled weights."""

    name = "bilevel2"
    optim = "bilevel"
    order = 2

    @classmethod
    def options(cls, cfg) -> dict:
        return {"unroll_r": cfg.unroll_r}

    def __init__(self, *args, unroll_r: float = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.r = unroll_r

    def _unrolled(self, x: Tensor, y: Tensor) -> list[Tensor]:
        group = self.w_opt.param_groups[0]
        eta, mom, wd = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        weights = self.model.weights()
        loss, _ = self.loss(x, y, net=self.model)
        grads = torch.autograd.grad(loss, weights)
        out = []
        with torch.no_grad():
            for p, g in zip(weights, grads, strict=True):
                buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
                d = g + wd * p
                if buf is not None:
                    d = d + mom * buf
                out.append(p - eta * d)
        return out

    def hypergradient(self, xt: Tensor, yt: Tensor, xv: Tensor, yv: Tensor) -> list[Tensor]:
        eta = self.w_opt.param_groups[0]["lr"]
        names = [n for n, _ in self.model.named_weights()]
        unrolled = [w.requires_grad_() for w in self._unrolled(xt, yt)]
        # Evaluate L_val at w' without touching the real buffers (BN statistics).
        state = {n: b.clone() for n, b in self.model.named_buffers()}
        state.update(dict(zip(names, unrolled, strict=True)))
        state.update(self.model.named_alphas())
        with self.autocast():
            logits = functional_call(self.model, state, (xv,))
        loss_v = self.loss_fn(logits.float(), yv)
        alphas = self.model.alphas()
        g = torch.autograd.grad(loss_v, alphas + unrolled)
        d_alpha, v = list(g[:len(alphas)]), list(g[len(alphas):])
        reg = self.arch_regularizer()
        if reg is not None:  # the regulariser depends on α alone: its gradient adds to the hypergradient
            rg = torch.autograd.grad(reg, alphas, allow_unused=True)
            d_alpha = [d if r is None else d + r for d, r in zip(d_alpha, rg, strict=True)]
        return [da - eta * h for da, h in zip(d_alpha, self._hvp(v, xt, yt), strict=True)]

    def _hvp(self, v: list[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        """∇²_{α,w} L_train · v by central differences of ∇α L_train at w ± R·v (DARTS, R = r/‖v‖)."""
        weights = self.model.weights()
        R = self.r / torch.cat([t.reshape(-1) for t in v]).norm().clamp_min(1e-12)

        def shift(scale: float) -> None:
            with torch.no_grad():
                for p, t in zip(weights, v, strict=True):
                    p.add_(t, alpha=float(scale * R))

        shift(1.0)
        gp = torch.autograd.grad(self.loss(x, y, net=self.model)[0], self.model.alphas())
        shift(-2.0)
        gn = torch.autograd.grad(self.loss(x, y, net=self.model)[0], self.model.alphas())
        shift(1.0)
        return [(a - b) / (2 * R) for a, b in zip(gp, gn, strict=True)]

    def step(self, x: Tensor, y: Tensor, arch_batch: Callable[[], Batch] | None = None) -> StepOutput:
        assert arch_batch is not None, "bi-level needs an α batch"
        if not self.updates_alpha():
            return self._bilevel_step(None, x, y)
        xa, ya = arch_batch()
        grads = self.hypergradient(x, y, xa, ya)
        _all_reduce_mean(grads)
        return self._bilevel_step(grads, x, y)


def make_optimizers(model: Supernet, cfg) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Weight SGD (never sees α) and the α optimiser (Adam or SGD), as the paper sets them."""
    w_opt = torch.optim.SGD(model.weights(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.arch_optimizer == "adam":
        a_opt: torch.optim.Optimizer = torch.optim.Adam(
            model.alphas(), lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2), weight_decay=cfg.arch_wd)
    else:
        a_opt = torch.optim.SGD(model.alphas(), lr=cfg.arch_lr, momentum=cfg.arch_momentum,
                                weight_decay=cfg.arch_wd)
    return w_opt, a_opt


class RandomSampling(Strategy):
    """RSPS (Li & Talwalkar, "Random search and reproducibility for NAS", UAI 2019): random search with
    weight sharing. Every step trains one architecture drawn uniformly (only its ops are computed); α is
    never updated. At the end :meth:`select` scores ``rsps_samples`` drawn architectures on validation
    batches with the shared weights, and the best one is derived."""

    name = "rsps"
    optim = "rsps"

    def step(self, x: Tensor, y: Tensor, arch_batch: Callable[[], Batch] | None = None) -> StepOutput:
        self.w_opt.zero_grad(set_to_none=True)
        weights = self.model.sample_weights()
        self._keep_buffers()
        with self.autocast():
            logits = self.net(x, weights=weights)
        loss = self.loss_fn(logits.float(), y)
        loss.backward()
        if self._bad(loss, self.model.weights()):
            return self._skip(x)
        self._w_step()
        return self._out(loss, logits, y)

    def select(self, batches: list[Batch], samples: int, seed: int) -> tuple[dict[str, Tensor], list[float]]:
        return select_architecture(self.model, batches, samples, seed)


@torch.no_grad()
def select_architecture(model: Supernet, batches: list[tuple[Tensor, Tensor]], samples: int, seed: int,
                        draw: Callable[[], dict[str, Tensor]] | None = None, per_sample: int = 0
                        ) -> tuple[dict[str, Tensor], list[float]]:
    """(the best of ``samples`` architectures drawn by ``draw`` (uniformly: ``model.sample_weights``) as
    one-hot weights, every one's accuracy), each scored on the same ``batches`` with batch statistics (the
    shared running statistics belong to no single architecture); ``per_sample`` > 0: sample i on its own
    ``per_sample`` batches, the next ones of ``batches`` in turn (AutoDL-Projects' SETN). BN buffers and the
    global RNG are left as they were."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    was = model.training
    model.train()
    scores: list[float] = []
    best: dict[str, Tensor] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(samples):
                w = (draw or model.sample_weights)()
                own = [batches[(i * per_sample + j) % len(batches)] for j in range(per_sample)] if batches else []
                own = own or batches
                hits = sum(int((model(x, weights=w).argmax(1) == y).sum()) for x, y in own)
                scores.append(hits / max(sum(len(y) for _, y in own), 1))
                if scores[-1] > max(scores[:-1], default=-1.0):
                    best = w
    finally:
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
        model.train(was)
    return best, scores


class EnasStrategy(Strategy):
    """ENAS (Pham et al., ICML 2018): the shared weights train on an architecture the controller samples
    (training batch), then the controller takes one REINFORCE step on an α batch (:mod:`sldarts.methods.enas`,
    the part that holds it). α is never updated."""

    name = "enas"
    optim = "enas"
    needs_arch_batch = True

    def step(self, x: Tensor, y: Tensor, arch_batch: Callable[[], Batch] | None = None) -> StepOutput:
        assert arch_batch is not None, "ENAS rewards its controller on α batches"
        part = self.method.get("enas") if self.method is not None else None
        if part is None:
            raise SldartsError("optim=enas needs the ENAS part (method=enas)")
        self.w_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(x, y, weights=part.sample(self.model))  # type: ignore[attr-defined]
        loss.backward()
        if self._bad(loss, self.model.weights()):
            return self._skip(x)
        self._w_step()
        out = self._out(loss, logits, y)
        part.reinforce(self.model, arch_batch())  # type: ignore[attr-defined]
        return out


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", group="sldarts.strategies")
for _cls in (SingleLevel, FirstOrder, SecondOrder, RandomSampling, EnasStrategy):
    STRATEGIES.register(_cls)


def optims() -> tuple[str, ...]:
    """The config's ``optim`` choices, from the registered strategies."""
    return tuple(dict.fromkeys(cls.optim for _, cls in STRATEGIES.items()))


def strategy_class(optim: str, order: int) -> type[Strategy]:
    for _, cls in STRATEGIES.items():
        if cls.optim == optim and (cls.order == order or optim != "bilevel"):
            return cls
    raise SldartsError(f"no strategy for optim={optim} order={order}")


def make_strategy(cfg, model: Supernet, net: nn.Module, w_opt, a_opt, autocast=nullcontext,
                  method: Method | None = None) -> Strategy:
    kw: dict = dict(grad_clip=cfg.grad_clip, autocast=autocast, skip_nonfinite=cfg.nan_policy == "skip",
                    method=method)
    cls = strategy_class(cfg.optim, cfg.order)
    return cls(model, net, w_opt, a_opt, **kw, **cls.options(cfg))
