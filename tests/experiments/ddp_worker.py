"""One rank of the DDP test: ``torchrun --nproc_per_node=2 ddp_worker.py OUT_DIR``.

Trains a small float64 ScoreMLP for a few steps with the shared loop and saves the final
weights and losses of this rank to OUT_DIR/rank<r>.pt (read by test_training.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from experiments.common.training import TrainConfig, setup_distributed, train
from theory.networks import ScoreMLP

CONFIG = TrainConfig(steps=6, batch=16, lr=1e-2, ema=0.9, grad_clip=1.0, seed=7)


def problem() -> tuple[ScoreMLP, torch.Tensor]:
    """The model and data of the test, identical in every process."""
    torch.manual_seed(0)
    model = ScoreMLP(3, 16, 2).double()
    data = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, data


if __name__ == "__main__":
    torch.set_num_threads(1)
    rank, world, device = setup_distributed()
    model, data = problem()
    model, ema, losses = train(model, data, CONFIG, device=device, progress=False)
    out = Path(sys.argv[1]) / f"rank{rank}.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "losses": losses,
                "world": world}, out)
