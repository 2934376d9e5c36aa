"""The process one Python model instance runs in: `python -m runtime.worker FD`.

It imports the version's model.py, tells the server what the model declares, loads it with
the completed config, then runs batches until told to stop or until the server goes away.
Batches arrive and leave through shared buffers (runtime/shared_buffer.py); the connection
carries only where each tensor lies. Beyond numpy and the standard library it imports only
its own helpers (shared buffers, the Triton interface), not the server, so a worker starts
in a fraction of a second and holds none of the server's memory.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runtime import pb_utils, triton_model
from runtime.channel import Channel
from runtime.model_calls import ModelCalls
from runtime.shared_buffer import SharedBuffer, size_for, split_objects

MODEL_CLASS = "Model"


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What `Model.load(context)` is given."""

    model_name: str
    model_version: str
    # The model's folder (<repo>/<model>) and this version's folder in it.
    model_dir: Path
    version_dir: Path
    # The completed config, as GET /v2/models/{m}/config shows it.
    config: dict[str, Any]
    instance: int


def last_line(exc: BaseException) -> str:
    """The traceback's last line: the reason a model is unavailable."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def import_model(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"conveyor_model_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def declared(model_class: type, attribute: str) -> list[tuple[str, str, list[int]]]:
    """`Model.inputs` / `Model.outputs`: (name, datatype, dims) or dicts with those keys."""
    entries = getattr(model_class, attribute, None) or []
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = (entry["name"], entry["datatype"], entry["dims"])
        name, datatype, dims = entry
        out.append((str(name), str(datatype).upper(), [int(d) for d in dims]))
    return out


class Worker:
    """One model instance's loop on its end of the connection."""

    def __init__(self, conn: Channel) -> None:
        self.conn = conn
        self.model: Any = None
        self.triton: triton_model.TritonAdapter | None = None
        self.input: SharedBuffer | None = None
        self.output: SharedBuffer | None = None
        self.dtypes: dict[str, np.dtype] = {}
        # Model code's calls to other models (BLS), open while a batch runs.
        self.calls = ModelCalls(conn)
        pb_utils.bind_calls(self.calls)

    def start(self) -> bool:
        """Import, declare, load; False (the server told why) when the model cannot serve."""
        hello = self.conn.recv()
        triton_model.install()
        try:
            module = import_model(Path(hello["path"]), hello["name"])
            model_class = getattr(module, MODEL_CLASS, None)
            triton = triton_model.defines(module)
            if not isinstance(model_class, type) and not triton:
                raise TypeError(
                    f"{hello['path']} defines neither class {MODEL_CLASS} nor class "
                    f"{triton_model.TRITON_CLASS}"
                )
        except BaseException as exc:
            self.conn.send(("failed", last_line(exc)))
            return False
        if triton:  # Triton's models declare their tensors in config.pbtxt, or complete it
            try:
                completed = _auto_completed(module, hello.get("config"))
            except BaseException as exc:
                self.conn.send(("failed", f"auto_complete_config: {last_line(exc)}"))
                return False
            self.conn.send(("declared", [], [], completed))
        else:
            assert isinstance(model_class, type)
            self.conn.send(
                ("declared", declared(model_class, "inputs"), declared(model_class, "outputs"))
            )
        load = self.conn.recv()
        try:
            self.dtypes = {name: np.dtype(dt) for name, dt in load["output_dtypes"].items()}
            if triton:
                self.triton = triton_model.TritonAdapter(module, load["context"])
            else:
                assert isinstance(model_class, type)
                self.model = model_class()
                if hasattr(self.model, "load"):
                    self.model.load(ModelContext(**load["context"]))
        except BaseException as exc:
            self.conn.send(("failed", last_line(exc)))
            return False
        self.conn.send(("ready",))
        return True

    def serve(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the server went away: so do we
                return
            if message[0] == "stop":
                self._unload()
                self.conn.send(("stopped",))
                return
            self.conn.send(self._run(*message[1:]))

    def _run(
        self,
        buffer: tuple[str, int],
        placed: list[Any],
        objects: dict[str, np.ndarray],
        names: list[str],
        rows: list[int],
    ) -> tuple[Any, ...]:
        errors: list[tuple[int, str] | None] | None = None
        try:
            inputs = {**self._attach_input(buffer).read(placed), **objects}
            for array in inputs.values():
                array.flags.writeable = False  # the server's buffer, not the model's scratch
            self.calls.open = True
            if self.triton is not None:
                outputs, errors = _flattened(self.triton.run(inputs, names, rows, self.dtypes))
            else:
                outputs = self._outputs(self.model.predict(inputs), names)
        except BaseException as exc:
            message = str(exc) if self.triton is not None else f"{type(exc).__name__}: {exc}"
            return ("error", message)
        finally:
            self.calls.open = False
        numeric, objects_out = split_objects(outputs)
        need = size_for(numeric)
        if self.output is None or self.output.size < need:
            self.conn.send(("grow", need))
            path, size = self.conn.recv()
            if self.output is not None:
                self.output.close()
            self.output = SharedBuffer.attach(path, size)
        if errors is not None:
            return ("each", self.output.write(numeric), objects_out, errors)
        return ("ok", self.output.write(numeric), objects_out)

    def _attach_input(self, buffer: tuple[str, int]) -> SharedBuffer:
        """The server's input buffer; a new one when it grew (the old one is let go)."""
        path, size = buffer
        if self.input is None or str(self.input.path) != path:
            if self.input is not None:
                self.input.close()
            self.input = SharedBuffer.attach(path, size)
        return self.input

    def _outputs(self, result: Any, names: list[str]) -> dict[str, np.ndarray]:
        if not isinstance(result, dict):
            raise TypeError(f"predict must return a dict of outputs, got {type(result).__name__}")
        missing = [n for n in names if n not in result]
        if missing:
            raise KeyError(f"predict returned no output {missing}; it returned {sorted(result)}")
        return {n: np.asarray(result[n], dtype=self.dtypes.get(n)) for n in names}

    def _unload(self) -> None:
        if self.triton is not None:
            try:
                self.triton.finalize()
            except Exception:
                traceback.print_exc()
            return
        unload = getattr(self.model, "unload", None)
        if unload is not None:
            try:
                unload()
            except Exception:
                traceback.print_exc()


def _auto_completed(module: ModuleType, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The config as a TritonPythonModel's `auto_complete_config` completes it, once, in the
    first instance's worker; None when the model has no such method."""
    complete = getattr(getattr(module, triton_model.TRITON_CLASS), "auto_complete_config", None)
    if complete is None or config is None:
        return None
    given = pb_utils.ModelConfig(config)
    answer = complete(given)
    if not isinstance(answer, pb_utils.ModelConfig):
        raise TypeError(f"it must return the ModelConfig it was given, not {type(answer).__name__}")
    return answer.as_dict()


def _flattened(
    outcomes: list[triton_model.Outcome],
) -> tuple[dict[str, np.ndarray], list[tuple[int, str] | None]]:
    """Each request's outputs under "<index>/<name>", and each request's error or None."""
    outputs: dict[str, np.ndarray] = {}
    errors: list[tuple[int, str] | None] = []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, tuple):
            errors.append(outcome)
            continue
        errors.append(None)
        outputs.update({f"{i}/{name}": array for name, array in outcome.items()})
    return outputs, errors


def main(argv: list[str]) -> int:
    # The server decides when its workers stop (SIGTERM drains first); a Ctrl-C at the
    # terminal reaches the whole process group and must not kill a batch mid-run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The worker sleeps on its connection between batches (the server's end is on its loop).
    conn = Channel.from_fd(int(argv[1]), wait_readable=True)
    worker = Worker(conn)
    if worker.start():
        worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
