"""ENAS (Pham et al., "Efficient neural architecture search via parameter sharing", ICML 2018), on
NAS-Bench-201 as AutoDL-Projects' ENAS runs it. An LSTM controller (hidden 32, 2 layers) samples one op per
α row in turn (logits ``tanh_c · tanh(logits / temperature)``, 2.5 and 5; the sampled op's embedding is the
next input). Each step of the strategy ``optim=enas`` trains the shared weights on one controller sample
(training batch), then steps the controller by REINFORCE on an α batch: reward R = accuracy of a fresh
sample with the shared weights, baseline b ← d·b + (1 − d)·R (d = ``enas_baseline_decay``; b starts at the
first R), loss −(R − b)·Σ log p − λ·Σ H (λ = ``enas_entropy``), Adam (lr ``enas_lr``, betas (0, 0.999), eps
0.001), gradient norm clipped
at 5. At the end ``enas_samples`` controller samples are scored on the same first ``enas_batches`` validation
batches and the best is derived. The controller's parameters are neither α nor weights: they live in this
part, with its optimiser and baseline (saved in every checkpoint).

The DARTS space is refused: its cells also choose two inputs per node, which ENAS's DARTS controller samples
with an attention over earlier nodes that this per-row controller does not have."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from sldarts.methods import Part, config_options, refuse, register
from sldarts.methods.rsps import best_of
from sldarts.spaces.base import Supernet

EnasOptions = config_options("EnasOptions", "enas_samples", "enas_batches",
                             "enas_lr", "enas_entropy", "enas_baseline_decay")


class Controller(nn.Module):
    """ENAS's LSTM controller: ``rows`` decisions among ``ops`` ops, each conditioned on the previous ones."""

    def __init__(self, rows: int, ops: int, hidden: int = 32, layers: int = 2, tanh_c: float = 2.5,
                 temperature: float = 5.0) -> None:
        super().__init__()
        self.rows, self.tanh_c, self.temperature = rows, tanh_c, temperature
        self.start = nn.Parameter(torch.empty(1, 1, hidden).uniform_(-0.1, 0.1))
        self.lstm = nn.LSTM(hidden, hidden, layers)
        self.embed = nn.Embedding(ops, hidden)
        self.pred = nn.Linear(hidden, ops)
        with torch.no_grad():
            for p in (*self.lstm.parameters(), self.embed.weight, self.pred.weight):
                p.uniform_(-0.1, 0.1)

    def forward(self, choices: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(op per row, Σ log p, Σ entropy): a sample from torch's RNG, or the given ``choices`` scored."""
        inp, state = self.start, None
        out, logp, ent = [], [], []
        for r in range(self.rows):
            h, state = self.lstm(inp, state)
            dist = Categorical(logits=self.tanh_c * torch.tanh(self.pred(h.reshape(-1)) / self.temperature))
            c = dist.sample() if choices is None else choices[r]
            out.append(c)
            logp.append(dist.log_prob(c))
            ent.append(dist.entropy())
            inp = self.embed(c.reshape(1, 1))
        return torch.stack(out), torch.stack(logp).sum(), torch.stack(ent).sum()


def reinforce_loss(log_prob: Tensor, entropy: Tensor, reward: float, baseline: float, entropy_weight: float
                   ) -> Tensor:
    """−(R − b)·Σ log p − λ·Σ H."""
    return -(reward - baseline) * log_prob - entropy_weight * entropy


@torch.no_grad()
def accuracy_of(model: Supernet, weights: dict[str, Tensor], batches: list[tuple[Tensor, Tensor]]) -> float:
    """Accuracy of one architecture with the shared weights, batch statistics, BN buffers left as they were."""
    saved = [b.detach().clone() for b in model.buffers()]
    was = model.training
    model.train()
    try:
        hits = sum(int((model(x, weights=weights).argmax(1) == y).sum()) for x, y in batches)
    finally:
        for b, v in zip(model.buffers(), saved, strict=True):
            b.copy_(v)
        model.train(was)
    return hits / max(sum(len(y) for _, y in batches), 1)


@register
class Enas(Part):
    name = "enas"
    title = "ENAS controller"
    Options = EnasOptions
    fused_ok = False  # one-hot steps on the reference cells, as RSPS
    order = 5
    on = "optim"  # switched on by optim=enas (see enabled)

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.controller: Controller | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.baseline: float | None = None
        self.shapes: dict[str, torch.Size] = {}

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return getattr(cfg, "optim", "") == "enas"

    def adapt(self, model: Supernet) -> None:
        if type(model).sample_weights is Supernet.sample_weights:
            raise refuse(self.title, f"the {type(model).__name__} supernet has no sample_weights(); use another "
                         "method")
        with torch.random.fork_rng(devices=[]):  # the run's random stream is not touched
            one = model.sample_weights()
            rows = {k: w.reshape(-1, w.shape[-1]) for k, w in one.items()}
            if any(not bool((r.sum(1) == 1).all()) for r in rows.values()):
                raise refuse(self.title, f"the {type(model).__name__}'s architectures are not one op per "
                             "α row (DARTS's cells also choose two inputs per node, an InputChoice may keep several; "
                             "this controller samples one per row); use space=nb201 or another method")
            widths = sorted({r.shape[-1] for r in rows.values()})
            if len(widths) != 1:
                raise refuse(self.title, f"the {type(model).__name__}'s choices have {widths} candidates, and "
                             "one controller output layer samples choices of one size; give every choice as many "
                             "candidates, or use another method")
            self.shapes = {k: w.shape for k, w in one.items()}
            self.controller = Controller(sum(len(r) for r in rows.values()), next(iter(rows.values())).shape[-1])
        # AutoDL-Projects' ENAS.config: betas (0, 0.999), eps 0.001
        self.opt = torch.optim.Adam(self.controller.parameters(), lr=self.opts.enas_lr, betas=(0.0, 0.999), eps=1e-3)

    def _on(self, model: Supernet) -> Controller:
        assert self.controller is not None
        dev = next(iter(model.arch.values())).device
        if self.controller.start.device != dev:
            self.controller.to(dev)
            assert self.opt is not None
            for st in self.opt.state.values():  # Adam's moments follow the parameters (its step count stays)
                for name, v in st.items():
                    if name != "step" and isinstance(v, Tensor):
                        st[name] = v.to(dev)
        return self.controller

    def weights_of(self, choices: Tensor, device: torch.device) -> dict[str, Tensor]:
        """One-hot weights per α key from the controller's op per row."""
        out, i = {}, 0
        for k, shape in self.shapes.items():
            n = shape[:-1].numel()
            w = nn.functional.one_hot(choices[i:i + n], shape[-1]).float().reshape(shape)
            out[k], i = w.to(device), i + n
        return out

    def sample(self, model: Supernet) -> dict[str, Tensor]:
        """An architecture from the controller (no graph)."""
        ctl = self._on(model)
        with torch.no_grad():
            return self.weights_of(ctl()[0], ctl.start.device)

    def reinforce(self, model: Supernet, batch: tuple[Tensor, Tensor]) -> float:
        """One controller step on a validation batch; returns the reward."""
        ctl = self._on(model)
        choices, log_prob, entropy = ctl()
        reward = accuracy_of(model, self.weights_of(choices.detach(), ctl.start.device), [batch])
        d = self.opts.enas_baseline_decay
        self.baseline = reward if self.baseline is None else d * self.baseline + (1 - d) * reward
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        reinforce_loss(log_prob, entropy, reward, self.baseline, self.opts.enas_entropy).backward()
        nn.utils.clip_grad_norm_(ctl.parameters(), 5.0)
        self.opt.step()
        return reward

    def select(self, model: Supernet, valid_batches: Callable[[int], list[tuple[Tensor, Tensor]]], seed: int
               ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(the best of ``enas_samples`` controller samples, what to record)."""
        weights, rec = best_of(self.name, model, valid_batches(self.opts.enas_batches), self.opts.enas_samples,
                               seed, lambda: self.sample(model))
        rec[self.name]["baseline"] = self.baseline
        return weights, rec

    def state_dict(self) -> dict[str, Any]:
        assert self.controller is not None and self.opt is not None
        return {"controller": self.controller.state_dict(), "opt": self.opt.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.controller is not None and self.opt is not None
        self.controller.load_state_dict(state["controller"])
        self.opt.load_state_dict(state["opt"])
        self.baseline = state["baseline"]
