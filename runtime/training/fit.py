"""Train on the cached rows: each epoch a new shuffled pass, the best validation epoch kept.

The MLP is trained behind the standardization of pass one (the exported module's own step),
on a standardized target for regression; the exported graph maps its output back.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from runtime.training import network
from runtime.training.cache import Cache, minibatches
from runtime.training.network import Classifier, Regressor
from runtime.training.recipe import TrainSettings
from runtime.training.scan import Held, Scan
from runtime.training.table import Task
from runtime.training.train import build_mlp, deterministic


@dataclass(frozen=True, slots=True)
class Epoch:
    """One shuffled pass over the training rows."""

    index: int
    # Mean loss over the epoch's rows: cross-entropy, or squared error of the standardized target.
    loss: float
    # Validation accuracy (classification) or R^2 (regression).
    validation: float
    rows: int
    seconds: float


@dataclass(slots=True)
class Fitted:
    """The module of the best validation epoch and the learning curve behind it."""

    module: Classifier | Regressor
    best_epoch: int
    history: list[Epoch] = field(default_factory=list)


OnEpoch = Callable[[Epoch], None]


def accuracy(predicted: NDArray[Any], labels: NDArray[Any]) -> float:
    return float(np.mean(np.asarray(predicted).reshape(-1) == labels))


def r2(predicted: NDArray[Any], targets: NDArray[Any]) -> float:
    """1 - SSE / SST: 1 is exact, 0 is the targets' mean, below 0 worse; NaN when SST is 0."""
    y = np.asarray(targets, np.float64)
    sst = float(np.sum((y - y.mean()) ** 2))
    sse = float(np.sum((y - np.asarray(predicted, np.float64).reshape(-1)) ** 2))
    return 1.0 - sse / sst if sst > 0 else float("nan")


def score(module: Classifier | Regressor, held: Held) -> float:
    """Accuracy or R^2 of module on held rows (raw features, as clients send them)."""
    out = network.answer(module, held.features)
    if isinstance(module, Classifier):
        return accuracy(out["label"], held.targets)
    return r2(out["prediction"], held.targets)


def build(scan: Scan, task: Task, hidden: tuple[int, ...]) -> Classifier | Regressor:
    """An untrained module for the task, with pass one's standardization in front."""
    net = build_mlp(len(scan.mean), len(scan.classes) if task == "classification" else 1, hidden)
    if task == "classification":
        return Classifier(net, scan.mean, scan.std)
    return Regressor(net, scan.mean, scan.std, scan.target_mean, scan.target_std)


def fit(
    cache_path: Path,
    scan: Scan,
    task: Task,
    settings: TrainSettings,
    seed: int,
    on_epoch: OnEpoch | None = None,
) -> Fitted:
    """Train with AdamW over shuffled epochs of the cache; keep the best validation epoch.

    The same seed, settings and file give the same weights (one thread, deterministic kernels).
    """
    with deterministic(seed), Cache(cache_path) as cache:
        module = build(scan, task, settings.hidden)
        optimizer = torch.optim.AdamW(
            module.net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        result = Fitted(module, best_epoch=0)
        best_state, best = copy.deepcopy(module.state_dict()), -np.inf
        for index in range(1, settings.epochs + 1):
            start = time.perf_counter()
            rng = np.random.default_rng([seed, index])
            loss, rows = _epoch(module, optimizer, cache, rng, settings.batch_size, scan)
            value = score(module, scan.validation)
            epoch = Epoch(index, loss, value, rows, time.perf_counter() - start)
            result.history.append(epoch)
            if value > best or result.best_epoch == 0:
                best_state, best = copy.deepcopy(module.state_dict()), value
                result.best_epoch = index
            if on_epoch is not None:
                on_epoch(epoch)
        module.load_state_dict(best_state)
    module.eval()
    return result


def _epoch(
    module: Classifier | Regressor,
    optimizer: torch.optim.Optimizer,
    cache: Cache,
    rng: np.random.Generator,
    batch_size: int,
    scan: Scan,
) -> tuple[float, int]:
    """One shuffled pass; (mean loss per row, rows)."""
    module.train()
    total, rows = 0.0, 0
    for x, y in minibatches(cache, rng, batch_size):
        optimizer.zero_grad()
        loss = _loss(module, module.scores(torch.from_numpy(x)), y, scan)
        torch.autograd.backward(loss)
        optimizer.step()
        total += loss.item() * len(x)
        rows += len(x)
    return total / max(rows, 1), rows


def _loss(
    module: Classifier | Regressor, out: torch.Tensor, y: NDArray[Any], scan: Scan
) -> torch.Tensor:
    if isinstance(module, Classifier):
        return torch.nn.functional.cross_entropy(out, torch.from_numpy(scan.remap[y]))
    target = ((y - scan.target_mean) / scan.target_std).astype(np.float32)
    return torch.nn.functional.mse_loss(out[:, 0], torch.from_numpy(target))
