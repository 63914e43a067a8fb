"""Training the demo model, the way a user's training script would: per-epoch train and
validation loss and accuracy logged to the active MLflow run."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import mlflow
import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from ..cohort import read_cohort, validate
from ..cohort.loader import CohortDataset, make_loader
from ..errors import HeimerError
from ..meta import ModelMeta
from .nets import DemoCNN


@dataclass
class TrainedModel:
    model: torch.nn.Module
    meta: ModelMeta
    history: dict  # metric name -> list of per-epoch values


def _stratified_split(labels: np.ndarray, val_fraction: float, rng: np.random.Generator):
    """Indices (train, val) with each class split in the same proportion."""
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(round(val_fraction * len(idx)))) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(val, dtype=int))


def _load_all(dataset, progress: bool):
    """Every volume once, into memory: a demo-sized cohort fits, and epochs then cost no IO."""
    images, labels = [], []
    loader = make_loader(dataset, batch_size=8, workers=min(2, len(dataset)))
    for batch in tqdm(loader, desc="loading volumes", unit="batch", disable=not progress, file=sys.stderr):
        bad = [f"{s}: {p}" for s, p in zip(batch["subject_id"], batch["problem"]) if p]
        if bad:
            raise HeimerError(f"cannot train on {len(bad)} subject(s): {'; '.join(bad)}")
        images.append(batch["image"])
        labels.append(batch["label"])
    return torch.cat(images), torch.cat(labels)


def _epoch(model, images, labels, indices, batch_size, optimizer=None, generator=None):
    """One pass over ``indices``; trains when an optimizer is given. Returns (loss, accuracy)."""
    training = optimizer is not None
    model.train(training)
    order = indices[torch.randperm(len(indices), generator=generator).numpy()] if training else indices
    total_loss, correct = 0.0, 0
    with torch.set_grad_enabled(training):
        for start in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[start : start + batch_size])
            x, y = images[idx], labels[idx]
            if training and generator is not None:
                # Left-right flips: the planted changes are bilateral, so this is label-preserving.
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None, None], x.flip(2), x)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(order), correct / len(order)


def train_demo(
    data,
    *,
    epochs: int = 20,
    batch_size: int = 8,
    learning_rate: float = 3e-3,
    width: int = 8,
    val_fraction: float = 0.25,
    intensity: str = "zscore",
    seed: int = 0,
    progress: bool = True,
) -> TrainedModel:
    """Train :class:`DemoCNN` on a cohort, logging ``train_loss``, ``train_accuracy``,
    ``val_loss`` and ``val_accuracy`` per epoch (step = epoch) to the active MLflow run."""
    if epochs < 1:
        raise HeimerError(f"epochs={epochs}: train for at least one epoch")
    torch.manual_seed(seed)
    meta = ModelMeta(intensity=intensity)
    cohort = read_cohort(data, meta.class_names)
    # The demo model takes the grid of the cohort it is trained on.
    meta.input_shape = [1, *(int(s) for s in nib.load(cohort.table["path"][0]).shape[:3])]
    cohort = validate(cohort, meta)
    images, labels = _load_all(CohortDataset(cohort, meta), progress)
    train_idx, val_idx = _stratified_split(labels.numpy(), val_fraction, np.random.default_rng(seed))
    if len(val_idx) == 0 or len(np.unique(labels[train_idx].numpy())) < 2:
        raise HeimerError(f"cohort {cohort.source} is too small to split into training and validation; use more subjects")

    model = DemoCNN(in_channels=1, n_outputs=len(meta.class_names), width=width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    generator = torch.Generator().manual_seed(seed)
    mlflow.log_params(
        dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, width=width,
             val_fraction=val_fraction, intensity=intensity, seed=seed,
             n_train=len(train_idx), n_val=len(val_idx), input_shape=str(meta.input_shape))
    )
    history = {k: [] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress, file=sys.stderr)
    for epoch in bar:
        train_loss, train_acc = _epoch(model, images, labels, train_idx, batch_size, optimizer, generator)
        val_loss, val_acc = _epoch(model, images, labels, val_idx, batch_size)
        scheduler.step()
        values = dict(train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss, val_accuracy=val_acc)
        mlflow.log_metrics(values, step=epoch)
        for k, v in values.items():
            history[k].append(v)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.2f}")
    model.eval()
    meta.target_layer = model.gradcam_layer
    return TrainedModel(model=model, meta=meta, history=history)
