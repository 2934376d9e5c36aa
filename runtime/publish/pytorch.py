"""PyTorch sources: an nn.Module, a program saved with torch.export.save (.pt2) or a
TorchScript module (.pt), exported to ONNX with torch.onnx.

Modules and programs go through the dynamo exporter, as the training stage does; TorchScript
modules cannot be captured by torch.export, so they go through torch.onnx's TorchScript
exporter. The graph takes one FP32 input [batch, n_features] and answers one FP32 `output`,
as wide as the module makes it. torch is imported only when a source needs it: the CLI and
the server never load it otherwise.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from runtime.publish.errors import BadInput

OUTPUT_NAME = "output"
# The dynamo exporter's translation library is built for opset 18 and up; the training stage
# exports with 18 too, and every supported ONNX Runtime runs it.
OPSET = 18

Outputs = dict[str, NDArray[Any]]


def is_torch(obj: Any) -> bool:
    """Whether obj is an nn.Module or a torch.export program (torch is loaded if it is one)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(obj, torch.nn.Module | torch.export.ExportedProgram)


def is_program(obj: Any) -> bool:
    """Whether obj is a torch.export.ExportedProgram."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.export.ExportedProgram)


def load_program(path: Path) -> Any:
    """The torch.export.ExportedProgram saved in path with torch.export.save."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.export.load(str(path))


def load_torchscript(path: Path) -> Any:
    """The TorchScript module saved in path with torch.jit.save, on the CPU."""
    import torch

    with warnings.catch_warnings():
        # torch.jit is deprecated; a module saved with it still loads and exports.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]


def _callable(obj: Any) -> Any:
    """What answers a batch: the program's module, or the module itself in eval mode."""
    import torch

    if isinstance(obj, torch.export.ExportedProgram):
        return obj.module()
    return obj.eval()


def native_output(obj: Any, sample: NDArray[np.float32], origin: str) -> NDArray[np.float32]:
    """The module's own answer on sample, [rows, width] float32; BadInput when it has none."""
    import torch

    module = _callable(obj)
    try:
        with torch.no_grad():
            answer = module(torch.from_numpy(np.ascontiguousarray(sample)))
    except Exception as exc:  # shape errors and whatever the module raises on these rows
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(
            f"{origin}: the PyTorch module cannot run on {sample.shape[1]} columns "
            f"({type(exc).__name__}: {message})"
        ) from None
    if not isinstance(answer, torch.Tensor):
        raise BadInput(
            f"source: the PyTorch module answers a {type(answer).__name__}; expected one tensor"
        )
    values = answer.detach().cpu().numpy().astype(np.float32)
    if values.ndim == 0 or values.shape[0] != len(sample):
        raise BadInput(
            f"source: the PyTorch module answers shape {list(values.shape)} for "
            f"{len(sample)} rows; expected one row of output per input row"
        )
    return values.reshape(len(sample), -1)


def _example(sample: NDArray[np.float32]) -> Any:
    """The first rows of the sample as the export's example input; at least two rows, since
    torch.export makes a batch axis of size 1 a constant."""
    import torch

    rows = sample[:2] if len(sample) >= 2 else np.repeat(sample[:1], 2, axis=0)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def to_onnx(obj: Any, sample: NDArray[np.float32], input_name: str) -> tuple[onnx.ModelProto, str]:
    """(graph, converter description) for obj, with a variable batch axis."""
    import torch

    from runtime.training.export import _quiet_exporter

    try:
        with _quiet_exporter():
            if isinstance(obj, torch.jit.ScriptModule):
                # torch.export cannot capture TorchScript: its own exporter handles it.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", UserWarning)
                    buffer = _export_torchscript(torch, obj, sample, input_name)
                return onnx.load_from_string(buffer), "torch.onnx (TorchScript)"
            if isinstance(obj, torch.export.ExportedProgram):
                # A saved program keeps the shapes decided when it was exported.
                program = torch.onnx.export(
                    obj,
                    input_names=[input_name],
                    output_names=[OUTPUT_NAME],
                    dynamo=True,
                    opset_version=OPSET,
                    verbose=False,
                )
            else:
                program = torch.onnx.export(
                    obj.eval(),
                    (_example(sample),),
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    input_names=[input_name],
                    output_names=[OUTPUT_NAME],
                    dynamo=True,
                    opset_version=OPSET,
                    verbose=False,
                )
    except Exception as exc:  # TorchExportError, ConversionError, and the module's own
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"source: torch.onnx cannot export this model: {message}") from None
    if program is None:
        raise BadInput("source: torch.onnx.export returned no program")
    model: onnx.ModelProto = program.model_proto
    _check_batch_axis(model)
    return model, "torch.onnx (dynamo)"


def _export_torchscript(
    torch: Any, module: Any, sample: NDArray[np.float32], input_name: str
) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (_example(sample),),
        buffer,
        dynamo=False,
        opset_version=OPSET,
        dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        input_names=[input_name],
        output_names=[OUTPUT_NAME],
        verbose=False,
    )
    return buffer.getvalue()


def _check_batch_axis(model: onnx.ModelProto) -> None:
    weights = {t.name for t in model.graph.initializer}
    for value in [i for i in model.graph.input if i.name not in weights]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise BadInput(
                f"source: the program's input '{value.name}' has a fixed batch size "
                f"{dims[0].dim_value}; export it with a dynamic batch axis "
                "(dynamic_shapes={0: torch.export.Dim('batch')}) before torch.export.save"
            )


def version() -> str:
    import torch

    return str(torch.__version__)
