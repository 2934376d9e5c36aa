"""The network a data run serves: the standardization of pass one folded in front of the MLP,
and the task's head after it, exported to ONNX as one graph.

Clients send raw feature values in one FP32 tensor `input` [n_features], as for published
models. A classifier answers `label` (INT64, the top class's index) and `probabilities` (FP32
[n_classes], the softmax of the logits); a regressor answers `prediction` (FP32 [1], the
standardized output mapped back to the target's scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from runtime.training.errors import ParityError
from runtime.training.export import OPSET, _quiet_exporter

INPUT_NAME = "input"
CLASSIFIER_OUTPUTS = ("label", "probabilities")
REGRESSOR_OUTPUTS = ("prediction",)
# Rows a native answer is computed for at once: bounds the activations' memory.
_CHUNK_ROWS = 65_536


class _Standardized(torch.nn.Module):
    """(x - mean) / std, then the MLP."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, net: torch.nn.Module, mean: NDArray[np.float32], std: NDArray[np.float32]
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_buffer("std", torch.from_numpy(np.asarray(std, np.float32)))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out


class Classifier(_Standardized):
    """Raw features -> (label, probabilities)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.scores(x)
        return torch.argmax(logits, dim=1), torch.softmax(logits, dim=1)


class Regressor(_Standardized):
    """Raw features -> prediction on the target's scale."""

    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(
        self,
        net: torch.nn.Module,
        mean: NDArray[np.float32],
        std: NDArray[np.float32],
        target_mean: float,
        target_std: float,
    ) -> None:
        super().__init__(net, mean, std)
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x) * self.target_std + self.target_mean


def output_names(module: torch.nn.Module) -> tuple[str, ...]:
    return CLASSIFIER_OUTPUTS if isinstance(module, Classifier) else REGRESSOR_OUTPUTS


def answer(module: torch.nn.Module, x: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
    """The module's outputs on raw rows, by output name, in eval mode."""
    module.eval()
    parts: list[tuple[NDArray[Any], ...]] = []
    with torch.no_grad():
        for start in range(0, len(x), _CHUNK_ROWS):
            out = module(torch.from_numpy(np.ascontiguousarray(x[start : start + _CHUNK_ROWS])))
            parts.append(tuple(t.numpy() for t in (out if isinstance(out, tuple) else (out,))))
    names = output_names(module)
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}


def to_onnx(module: torch.nn.Module, features: int) -> onnx.ModelProto:
    """The module as an ONNX graph: `input` FP32 [batch, features] -> the task's outputs."""
    module.eval()
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (torch.zeros(2, features),),
            input_names=[INPUT_NAME],
            output_names=list(output_names(module)),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ParityError("export: torch.onnx.export returned no program")
    model: onnx.ModelProto = program.model_proto
    return model
