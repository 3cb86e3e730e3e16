"""Trains a `torch_service.models` architecture in place: device tensors, optimizer, the
shuffled epochs and the per-epoch reports of EPOCH_METRICS.

Uses no process-wide random state (a private generator per training), so trainings may run
in several threads at once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from serving.backend import TrainSpec
from serving.errors import InvalidInput
from torch_service.models import TrainableModule

__all__ = ["fit"]


def _tensors(spec: TrainSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """x, y, x_val, y_val on `device`, copied so they never alias the caller's arrays."""
    y_dtype = np.int64 if spec.task == "classification" else np.float32
    arrays = (
        np.asarray(spec.x, dtype=np.float32),
        np.asarray(spec.y, dtype=y_dtype),
        np.asarray(spec.x_val, dtype=np.float32),
        np.asarray(spec.y_val, dtype=y_dtype),
    )
    return tuple(torch.tensor(a, device=device) for a in arrays)


def _optimizer(spec: TrainSpec, module: nn.Module) -> torch.optim.Optimizer:
    # The same update rules as TFBackend's: Keras's Adam epsilon (1e-7, torch's is 1e-8)
    # and SGD with momentum 0.9.
    if spec.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=spec.learning_rate, eps=1e-7)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=spec.learning_rate, momentum=0.9)
    raise InvalidInput(f"unknown optimizer '{spec.optimizer}': use 'adam' or 'sgd'")


def fit(module: TrainableModule, spec: TrainSpec, device: torch.device) -> dict[str, float]:
    """Trains `module` in place; returns the last epoch's metrics (EPOCH_METRICS)."""
    x, y, x_val, y_val = _tensors(spec, device)
    # A private generator rather than torch.manual_seed: the same seed gives bit-identical
    # weights without touching the process-wide RNG that other threads may be using. It
    # lives on the CPU, so a seed means the same initial weights and order on any device.
    generator = torch.Generator().manual_seed(spec.seed)
    module.reset_parameters(generator)
    module.to(device)
    module.fit_statistics(x, y)  # from the training rows only, so validation stays unseen
    optimizer = _optimizer(spec, module)
    target, val_target = module.target(y), module.target(y_val)
    metrics: dict[str, float] = {}
    for epoch in range(1, spec.epochs + 1):
        loss = _epoch(module, optimizer, x, target, batch_size=spec.batch_size, generator=generator)
        metrics = {"loss": loss}
        if len(x_val):
            with torch.no_grad():
                val_loss = module.objective(module.forward_train(x_val), val_target)
            metrics["val_loss"] = float(val_loss)
            metrics["val_metric"] = module.metric(x_val, y_val)
        if spec.on_epoch is not None:
            spec.on_epoch(epoch, dict(metrics))
    return metrics


def _epoch(
    module: TrainableModule,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One shuffled pass; returns the mean loss over rows, as Keras reports it."""
    module.train()
    total = torch.zeros((), device=x.device)
    order = torch.randperm(len(x), generator=generator).to(x.device)
    # torch.split and autograd.backward: the typed spellings of .split() and .backward().
    for batch in torch.split(order, batch_size):
        loss = module.objective(module.forward_train(x[batch]), target[batch])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        total += loss.detach() * len(batch)
    module.eval()
    return float(total) / len(x)
