import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a tiny, fast search in a temporary run directory."""
    return dict(epochs=1, train_samples=256, channels=4, batch_size=32, eval_samples=64, progress="none",
                out=str(tmp_path / "run"))
