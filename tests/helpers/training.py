"""Training for the controlled experiments on planted ground truth: the demo's network fitted to a
cohort held in memory (tests/test_engine_synthetic.py, benchmarks/cam_evidence.py). Not part of
the package: no user trains this way."""

from __future__ import annotations

import torch

from heimer_mlflow.demo.nets import DemoCNN


def fit_in_memory(images: torch.Tensor, is_positive: torch.Tensor, *, head: str = "max", width: int = 4,
                  epochs: int = 30, learning_rate: float = 3e-3, seed: int = 0) -> DemoCNN:  # fmt: skip
    """A one-logit DemoCNN fitted to a small cohort held in memory (no MLflow, no validation
    split): the controlled experiments on planted ground truth (tests/test_engine_synthetic.py,
    benchmarks/cam_evidence.py). No dropout; plain AdamW; batches of 8."""
    torch.manual_seed(seed)
    model = DemoCNN(n_outputs=1, width=width, dropout=0.0, head=head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(8):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images[batch])[:, 0], is_positive[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # So few steps leave the running BatchNorm statistics behind the weights: recompute them.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(images)
    return model.eval()
