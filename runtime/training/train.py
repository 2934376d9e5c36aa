"""Train: a seeded, reproducible MLP on standardized features, in PyTorch on the CPU."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from runtime.training.evaluate import accuracy
from runtime.training.ingest import Split
from runtime.training.recipe import TrainSettings


@dataclass(frozen=True, slots=True)
class Epoch:
    """One pass over the training split."""

    index: int
    # Mean cross-entropy over the epoch's batches.
    loss: float
    validation_accuracy: float


@dataclass(slots=True)
class TrainedModel:
    """The module with the best validation accuracy and the learning curve behind it."""

    module: torch.nn.Sequential
    best_epoch: int
    history: list[Epoch] = field(default_factory=list)


OnEpoch = Callable[[Epoch], None]


def build_mlp(features: int, classes: int, hidden: tuple[int, ...]) -> torch.nn.Sequential:
    """Linear + ReLU per hidden width, then a Linear to the class logits."""
    layers: list[torch.nn.Module] = []
    width = features
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


@contextmanager
def deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seeded RNG, deterministic kernels and one thread; the caller's settings come back after."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield torch.Generator().manual_seed(seed)
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)


def train(
    train_split: Split,
    validation_split: Split,
    classes: int,
    settings: TrainSettings,
    seed: int,
    on_epoch: OnEpoch | None = None,
) -> TrainedModel:
    """Train with AdamW on standardized splits; keep the epoch with the best validation accuracy.

    The same seed and settings give the same weights (one thread, deterministic kernels).
    """
    x = torch.from_numpy(train_split.features)
    y = torch.from_numpy(train_split.labels)
    with deterministic(seed) as generator:
        module = build_mlp(x.shape[1], classes, settings.hidden)
        optimizer = torch.optim.AdamW(
            module.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        result = TrainedModel(module, best_epoch=0)
        best_state, best_accuracy = copy.deepcopy(module.state_dict()), -1.0
        for index in range(1, settings.epochs + 1):
            loss = _epoch(module, optimizer, x, y, settings.batch_size, generator)
            epoch = Epoch(index, loss, accuracy(module, validation_split))
            result.history.append(epoch)
            if epoch.validation_accuracy > best_accuracy:
                best_state = copy.deepcopy(module.state_dict())
                best_accuracy, result.best_epoch = epoch.validation_accuracy, index
            if on_epoch is not None:
                on_epoch(epoch)
        module.load_state_dict(best_state)
    module.eval()
    return result


def _epoch(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One shuffled pass; returns the mean batch loss."""
    module.train()
    order = torch.randperm(len(x), generator=generator)
    losses = []
    for start in range(0, len(x), batch_size):
        rows = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(x[rows]), y[rows])
        torch.autograd.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))
