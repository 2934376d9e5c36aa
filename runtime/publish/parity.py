"""The parity gate: ONNX Runtime on the exported graph against the native model, on the sample.

Classifiers: identical labels and probabilities within `atol` (absolute). Regressors, and a
PyTorch module's `output`: each value within `rtol` of the native one (relative), or within
`atol` where the native value is so close to zero that a relative bound means nothing. A
failure names the worst rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from runtime.publish.errors import BadInput, ParityFailed

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
WORST_ROWS = 5

Outputs = dict[str, NDArray[Any]]


@dataclass(frozen=True, slots=True)
class Parity:
    """The gate's figures, as the card and the run record hold them."""

    rows: int
    atol: float
    rtol: float
    # Largest |onnx - native| over every compared value (0 with no native model).
    max_abs_diff: float = 0.0
    # Largest |onnx - native| / max(|native|, atol / rtol) over regression values.
    max_rel_diff: float = 0.0
    label_mismatches: int = 0
    compared: str = "ONNX Runtime against the native model"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_onnx(model: bytes, sample: NDArray[np.float32]) -> Outputs:
    """Every output of the graph on sample, by name; BadInput when ONNX Runtime refuses it."""
    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {name: sample})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BadInput(f"source: ONNX Runtime cannot run the model on the sample: {exc}") from None
    outputs = {n: np.asarray(v) for n, v in zip(names, values, strict=True)}
    for n, v in outputs.items():
        if v.ndim == 0 or v.shape[0] != len(sample):
            raise BadInput(
                f"source: output '{n}' has shape {v.shape} for {len(sample)} sample rows; "
                "expected one row of output per input row"
            )
    return outputs


def check(
    kind: str, native: Outputs | None, got: Outputs, atol: float, rtol: float, rows: int
) -> Parity:
    """The figures when the gate passes; ParityFailed with the worst rows when it does not."""
    if native is None:
        return Parity(rows, atol, rtol, compared="ONNX Runtime ran the sample (no native model)")
    if kind == "classifier":
        return _classifier(native, got, atol, rtol, rows)
    # A PyTorch module's `output` is compared as a regressor's `prediction` is.
    return _regressor(native, got, atol, rtol, rows, "output" if kind == "module" else "prediction")


def _classifier(native: Outputs, got: Outputs, atol: float, rtol: float, rows: int) -> Parity:
    want_p, got_p = _pair(native, got, "probabilities")
    want_l, got_l = _pair(native, got, "label")
    diff = np.abs(got_p - want_p).reshape(rows, -1).max(axis=1)
    mismatched = want_l.reshape(rows) != got_l.reshape(rows)
    parity = Parity(rows, atol, rtol, float(diff.max()), 0.0, int(mismatched.sum()))
    bad = (diff > atol) | mismatched
    if bad.any():
        raise ParityFailed(
            f"parity: ONNX Runtime and the native model differ on {int(bad.sum())} of {rows} "
            f"sample rows (max |Δp| {parity.max_abs_diff:.3g}, tolerance {atol:g}; "
            f"{parity.label_mismatches} labels differ)\n"
            + worst_rows(diff + mismatched, want_l, got_l, "label")
        )
    return parity


def _regressor(
    native: Outputs, got: Outputs, atol: float, rtol: float, rows: int, name: str = "prediction"
) -> Parity:
    want, have = _pair(native, got, name)
    want, have = want.reshape(rows, -1).astype(np.float64), have.reshape(rows, -1)
    abs_diff = np.abs(have - want)
    # Relative to the native value, or to atol / rtol below it, where the absolute floor rules.
    floor = atol / rtol if rtol > 0 else np.finfo(np.float64).tiny
    rel_diff = abs_diff / np.maximum(np.abs(want), max(floor, np.finfo(np.float64).tiny))
    ok = (abs_diff <= rtol * np.abs(want)) | (abs_diff <= atol)
    parity = Parity(rows, atol, rtol, float(abs_diff.max()), float(rel_diff.max()))
    bad = ~ok.all(axis=1)
    if bad.any():
        raise ParityFailed(
            f"parity: ONNX Runtime and the native model differ on {int(bad.sum())} of {rows} "
            f"sample rows (max relative {parity.max_rel_diff:.3g}, tolerance {rtol:g}; "
            f"max absolute {parity.max_abs_diff:.3g}, tolerance {atol:g})\n"
            + worst_rows(rel_diff.max(axis=1), want[:, 0], have[:, 0], name)
        )
    return parity


def _pair(native: Outputs, got: Outputs, name: str) -> tuple[NDArray[Any], NDArray[Any]]:
    if name not in got:
        raise BadInput(f"source: the ONNX graph has no output '{name}' (outputs: {list(got)})")
    return np.asarray(native[name]), np.asarray(got[name])


def worst_rows(score: NDArray[Any], want: NDArray[Any], have: NDArray[Any], what: str) -> str:
    """A small text table of the rows with the largest score, worst first."""
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")[:WORST_ROWS]
    lines = [f"worst rows:\n{'row':>6}  {'native ' + what:>18}  {'onnx ' + what:>18}  {'diff':>10}"]
    for i in order:
        lines.append(f"{i:>6}  {_cell(want[i]):>18}  {_cell(have[i]):>18}  {score[i]:>10.3g}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.6g}"
