"""Export: the trained module to ONNX (dynamic batch axis), then the parity gate.

The dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, the default since torch 2.9;
it needs onnxscript) is used: the TorchScript one is deprecated. Opset 18 is the exporter's
own (no version conversion) and loads in every ONNX Runtime since 1.14.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from runtime.training.errors import ParityError
from runtime.training.evaluate import scores

OPSET = 18
# Logits of this MLP are O(10); float32 Gemm in two libraries differs by ~1e-6 there.
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class Parity:
    """How far ONNX Runtime's outputs are from PyTorch's on the same rows."""

    max_abs_diff: float
    tolerance: float
    argmax_mismatches: int
    rows: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices about optional packages and its own deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Raised inside torch.export by torch's own pytree code, not by our call.
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module: torch.nn.Module, features: int, input_name: str, output_name: str) -> bytes:
    """Serialized ONNX model: input_name FP32 [batch, features] -> output_name FP32 [batch, C]."""
    module.eval()
    example = torch.zeros(2, features)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ParityError("export: torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _check_signature(session: ort.InferenceSession, input_name: str, output_name: str) -> None:
    """The graph has exactly the expected input and output, each with a symbolic batch axis."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    found = ([i.name for i in inputs], [o.name for o in outputs])
    if found != ([input_name], [output_name]):
        raise ParityError(
            f"parity: the ONNX graph has inputs {found[0]} and outputs {found[1]}, "
            f"expected ['{input_name}'] and ['{output_name}']"
        )
    for arg in (*inputs, *outputs):
        if isinstance(arg.shape[0], int):
            raise ParityError(
                f"parity: '{arg.name}' has a fixed batch size {arg.shape[0]} in the ONNX graph"
            )


def check_parity(
    model: bytes,
    module: torch.nn.Module,
    features: NDArray[np.float32],
    names: tuple[str, str],
    tolerance: float = DEFAULT_TOLERANCE,
) -> Parity:
    """Run both on standardized rows; ParityError unless max |diff| <= tolerance and every
    argmax agrees. names: (input, output) tensor names."""
    session = _session(model)
    _check_signature(session, *names)
    expected = scores(module, features)
    got = np.asarray(session.run([names[1]], {names[0]: features})[0])
    if got.shape != expected.shape:
        raise ParityError(
            f"parity: ONNX Runtime gave '{names[1]}' shape {got.shape}, PyTorch {expected.shape}"
        )
    diff = float(np.max(np.abs(got - expected)))
    mismatches = int(np.sum(np.argmax(got, axis=1) != np.argmax(expected, axis=1)))
    parity = Parity(diff, tolerance, mismatches, len(features))
    if not diff <= tolerance or mismatches:
        raise ParityError(
            f"parity: ONNX Runtime and PyTorch differ on '{names[1]}' over {len(features)} rows: "
            f"max abs diff {diff:.3g} (tolerance {tolerance:.3g}), "
            f"{mismatches} argmax mismatches"
        )
    return parity
