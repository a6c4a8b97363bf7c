"""A model passed as a Python object (a small ViT with choices over attention heads, MLP width and Zero) is
usable from its run directory alone: load, predict and export in a new process that never sees its class."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

import sldarts
from sldarts.nn import Choice, Zero

D = 8  # token width


class Attention(nn.Module):
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.norm, self.att = nn.LayerNorm(D), nn.MultiheadAttention(D, heads, batch_first=True)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm(t)
        return self.att(h, h, h, need_weights=False)[0]


class TinyViT(nn.Module):
    """4x4 patches of a 16x16 image, one block: attention with 1 or 2 heads or none, an MLP of width 16 or 32."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, D, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, 16, D))
        self.attn = Choice({"heads1": Attention(1), "heads2": Attention(2), "none": Zero(1)}, label="attention")
        self.mlp = Choice({f"width{w}": nn.Sequential(nn.LayerNorm(D), nn.Linear(D, w), nn.GELU(), nn.Linear(w, D))
                           for w in (16, 32)}, label="mlp")
        self.head = nn.Linear(D, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        t = t + self.attn(t)
        t = t + self.mlp(t)
        return self.head(t.mean(1))


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randint(0, 80, (n, 3, 16, 16), generator=g) + 80 * y.view(-1, 1, 1, 1)
    return x.float() / 255.0, y  # pixels a PNG holds exactly


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    train, test = _images(48, 0), _images(12, 1)
    res = sldarts.search(model=TinyViT(), train_data=torch.utils.data.TensorDataset(*train),
                         test_data=torch.utils.data.TensorDataset(*test), epochs=1, batch_size=8, workers=0,
                         progress="none", out=str(tmp / "run"))
    for i in range(4):
        Image.fromarray((test[0][i] * 255).round().byte().permute(1, 2, 0).numpy()).save(tmp / f"{i}.png")
    return tmp, res, test


def test_a_searched_python_object_loads_exports_and_predicts_from_its_run_directory(vit_run):
    tmp, res, (x, _) = vit_run
    assert set(res["choices"]) == {"attention", "mlp"} and "test_acc" in res
    assert (tmp / "run" / "model.pt2").exists() and res["input"]["shape"] == [3, 16, 16]
    torch.save(x[:4], tmp / "batch.pt")
    code = f"""
import json, sys, torch
import sldarts
from sldarts.export import export, predict
run = {str(tmp / 'run')!r}
loaded = sldarts.load(run)
x = torch.load({str(tmp / 'batch.pt')!r})
with torch.no_grad():
    logits = loaded.model(x)
out = export(run, "pt2", {str(tmp / 'vit.pt2')!r})
again = torch.export.load(str(out)).module()(x)
rows = predict(run, [{", ".join(repr(str(tmp / f"{i}.png")) for i in range(4))}], k=1)
print(json.dumps(dict(logits=logits.tolist(), again=again.tolist(), top=[r["top"][0]["index"] for r in rows],
                      prep=(loaded.preprocess(__import__("PIL.Image").Image.open({str(tmp / '0.png')!r}))
                            - x[:1]).abs().max().item(), modules=[m for m in sys.modules if m.startswith("test_")])))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["modules"] == []  # the class TinyViT was never imported there
    assert got["prep"] == 0.0  # predict's preprocessing is the data's (pixels / 255 here)
    logits = torch.tensor(got["logits"])
    assert torch.allclose(torch.tensor(got["again"]), logits, atol=1e-5)
    assert got["top"] == logits.argmax(1).tolist()
    fixed = sldarts.fix(TinyViT(), res["choices"])  # the same function as the supernet fixed in this process
    assert sum(isinstance(m, Choice) for m in fixed.modules()) == 0


class Regressor(nn.Module):
    """y = x @ w: a linear layer or a small MLP (label "body"), a Zero-or-identity residual (label "extra")."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Choice({"linear": nn.Linear(4, 2), "mlp": nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
                                                                            nn.Linear(8, 2))}, label="body")
        self.extra = Choice({"none": Zero(1), "copy": nn.Linear(4, 2, bias=False)}, label="extra")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.extra(x)


def mean_abs_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).abs().mean()


@pytest.mark.parametrize("optim", ["single", "bilevel"])
def test_a_regression_model_searches_with_a_loss_and_reports_its_metric(tmp_path, optim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g)
    y = x @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0], [-1.0, 0.5]])  # labels of shape (2,), float
    data = torch.utils.data.TensorDataset(x[:64], y[:64])
    kw = (dict(loss=torch.nn.functional.mse_loss, metric=mean_abs_error) if optim == "single" else
          dict(loss="mse", metric="torch.nn.functional:l1_loss"))  # names, as on the command line
    res = sldarts.search(model=Regressor(), train_data=data, test_data=torch.utils.data.TensorDataset(x[64:], y[64:]),
                         optim=optim, epochs=3, batch_size=16, lr=0.05, workers=0, progress="none",
                         out=str(tmp_path / "run"), **kw)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all("valid_metric" in r and "valid_loss" in r and "valid_acc" not in r for r in rows)
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]  # it learns y = x @ w
    assert set(res["choices"]) == {"body", "extra"} and res["test_metric"] >= 0 and "test_loss" in res
    assert res["config"]["loss"] == ("<loss:mse_loss>" if optim == "single" else "mse")
