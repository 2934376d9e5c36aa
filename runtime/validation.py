"""Checking a request against the tensors a model version takes and gives.

Bad input never reaches the model: names, datatypes, shapes and batch sizes are checked
here and answered with an error naming the input and what was expected.
"""

from __future__ import annotations

from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InvalidInput
from runtime.types import InferenceRequest, InputTensor, RequestedOutput


class RequestValidator:
    """One model version's tensors, indexed once at load for the per-request checks."""

    __slots__ = ("config", "inputs", "output_names", "outputs", "required_inputs")

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.inputs = {s.name: s for s in config.inputs}
        self.outputs = {s.name: s for s in config.outputs}
        self.output_names = [s.name for s in config.outputs]
        self.required_inputs = frozenset(s.name for s in config.inputs if not s.optional)

    def check(self, request: InferenceRequest) -> None:
        """Check names, datatypes and shapes, and that the inputs agree on the batch size."""
        c = self.config
        rows = -1
        for name, tensor in request.inputs.items():
            spec = self.inputs.get(name)
            if spec is None:
                raise InvalidInput(
                    f"unexpected inference input '{name}' for model '{c.name}'; "
                    f"the model's inputs are {sorted(self.inputs)}"
                )
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"inference input '{name}' data-type is '{tensor.datatype}', but model "
                    f"'{c.name}' expects '{spec.datatype}'"
                )
            batch = _check_shape(c.name, spec, tensor, c.max_batch_size)
            if rows not in (-1, batch):
                raise InvalidInput(
                    f"inputs of model '{c.name}' disagree on the batch size: input '{name}' has "
                    f"{batch} rows, an earlier input has {rows}"
                )
            rows = batch
        missing = self.required_inputs.difference(request.inputs)
        if missing:
            raise InvalidInput(
                f"expected {len(self.required_inputs)} inputs but got {len(request.inputs)} "
                f"inputs for model '{c.name}'; missing input(s) {sorted(missing)}"
            )
        if request.outputs:
            self._check_outputs(request.outputs)

    def _check_outputs(self, outputs: list[RequestedOutput]) -> None:
        # Each name once: an output named N times would otherwise be encoded N times, a
        # small request buying a response as large as the client likes.
        named: set[str] = set()
        for out in outputs:
            self._check_output(out.name, out.class_count)
            if out.name in named:
                raise InvalidInput(
                    f"output '{out.name}' appears more than once in the request; name each "
                    "output once"
                )
            named.add(out.name)

    def _check_output(self, name: str, class_count: int) -> None:
        if name not in self.outputs:
            raise InvalidInput(
                f"unexpected inference output '{name}' for model '{self.config.name}'; "
                f"the model's outputs are {self.output_names}"
            )
        if class_count < 0:
            raise InvalidInput(f"classification count of output '{name}' must be >= 0")


def _check_shape(model: str, spec: TensorSpec, tensor: InputTensor, max_batch_size: int) -> int:
    shape = tensor.data.shape
    dims = spec.dims
    body = shape[1:] if max_batch_size > 0 else shape
    expected = [-1, *dims] if max_batch_size > 0 else list(dims)
    ok = len(body) == len(dims) and (max_batch_size == 0 or len(shape) >= 1)
    ok = ok and all(d == -1 or d == s for d, s in zip(dims, body, strict=False))
    if not ok:
        note = (
            " NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
            "dimension to be prepended to each input shape."
            if max_batch_size > 0
            else ""
        )
        raise InvalidInput(
            f"unexpected shape for input '{spec.name}' for model '{model}'. "
            f"Expected {expected}, got {list(shape)}.{note}"
        )
    if max_batch_size == 0:
        return 1
    batch = int(shape[0])
    if batch < 1 or batch > max_batch_size:
        raise InvalidInput(
            f"inference request batch-size must be <= {max_batch_size} and >= 1 for "
            f"'{model}', got {batch} (input '{spec.name}')"
        )
    return batch
