"""The ensemble's plan and its dataflow, over fake step models (the thing next to the unit):
order, concurrency of independent steps, max_inflight_requests, and the load-time checks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from runtime import config as cfg
from runtime.config import ConfigError
from runtime.ensemble import find_cycle, load_ensemble
from runtime.ensemble.validate import plan
from runtime.errors import NotFound
from runtime.loader import InstanceSettings
from runtime.proto import model_config_pb2 as pb
from runtime.types import InferenceRequest, InferenceResponse, InputTensor, OutputTensor


def message(text: str) -> pb.ModelConfig:
    out = pb.ModelConfig()
    text_format.Parse(text, out)
    return out


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += " " + " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 {maps} }}'


def ensemble(inputs: list[str], outputs: list[str], steps: list[str], extra: str = "") -> str:
    def tensors(names: list[str]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 2 ] }}' for n in names)

    return (
        f'name: "ens" platform: "ensemble" max_batch_size: 4 input [ {tensors(inputs)} ] '
        f"output [ {tensors(outputs)} ] ensemble_scheduling {{ {extra} step [ "
        + ", ".join(steps)
        + " ] }"
    )


class Overlap:
    """How many calls run at once, at most."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    def enter(self) -> None:
        self.running += 1
        self.most = max(self.most, self.running)


class FakeModel:
    """A served model computing y = x + 1, that records how many of its calls overlap."""

    def __init__(self, name: str, delay_s: float = 0.01, shared: Overlap | None = None) -> None:
        self.name = name
        # Overlap across several models' calls, where they share one.
        self.shared = shared if shared is not None else Overlap()
        self.ready = True
        self.delay_s = delay_s
        self.config = cfg.build(
            message(
                f'name: "{name}" max_batch_size: 4 '
                'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ] '
                'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]'
            )
        )
        self.running = 0
        self.most = 0
        self.calls = 0

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        self.shared.enter()
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
            self.shared.running -= 1
        y = request.inputs["x"].data + 1
        return InferenceResponse(self.name, "1", request.id, [OutputTensor("y", "FP32", y)])


def settings_for(models: dict[str, FakeModel]) -> InstanceSettings:
    def lookup(name: str, version: str) -> Any:
        if name not in models:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        return models[name]

    return InstanceSettings(models=lookup)


def loaded(tmp_path: Path, text: str, models: dict[str, FakeModel]) -> Any:
    (tmp_path / "ens" / "1").mkdir(parents=True, exist_ok=True)
    return load_ensemble(tmp_path / "ens", 1, message(text), settings_for(models))


def request(x: np.ndarray) -> InferenceRequest:
    return InferenceRequest("ens", inputs={"X": InputTensor("X", "FP32", x)})


def test_steps_run_in_dataflow_order_whatever_their_listed_order() -> None:
    checked = plan(
        message(
            ensemble(
                ["X"],
                ["Z"],
                [step("b", {"x": "mid"}, {"y": "Z"}), step("a", {"x": "X"}, {"y": "mid"})],
            )
        )
    )
    assert [s.model_name for s in checked.steps] == ["a", "b"]


def test_independent_steps_run_at_once_after_the_step_they_read(tmp_path: Path) -> None:
    overlap = Overlap()
    models = {n: FakeModel(n, shared=overlap) for n in ("first", "left", "right")}
    text = ensemble(
        ["X"],
        ["L", "R"],
        [
            step("first", {"x": "X"}, {"y": "mid"}),
            step("left", {"x": "mid"}, {"y": "L"}),
            step("right", {"x": "mid"}, {"y": "R"}),
        ],
    )
    instance = loaded(tmp_path, text, models)
    response = asyncio.run(instance.infer(request(np.zeros((1, 2), np.float32))))
    out = {o.name: o.data for o in response.outputs}
    np.testing.assert_array_equal(out["L"], np.full((1, 2), 2, np.float32))  # (0 + 1) + 1
    np.testing.assert_array_equal(out["R"], np.full((1, 2), 2, np.float32))
    assert overlap.most == 2  # left and right together, never with first


def test_max_inflight_requests_caps_each_step(tmp_path: Path) -> None:
    model = FakeModel("only", delay_s=0.01)
    text = ensemble(
        ["X"], ["Y"], [step("only", {"x": "X"}, {"y": "Y"})], extra="max_inflight_requests: 2"
    )
    instance = loaded(tmp_path, text, {"only": model})

    async def go() -> None:
        x = np.zeros((1, 2), np.float32)
        await asyncio.gather(*(instance.infer(request(x)) for _ in range(10)))

    asyncio.run(go())
    assert model.calls == 10
    assert model.most == 2


def test_without_a_cap_the_requests_overlap(tmp_path: Path) -> None:
    model = FakeModel("only", delay_s=0.01)
    instance = loaded(
        tmp_path, ensemble(["X"], ["Y"], [step("only", {"x": "X"}, {"y": "Y"})]), {"only": model}
    )

    async def go() -> None:
        x = np.zeros((1, 2), np.float32)
        await asyncio.gather(*(instance.infer(request(x)) for _ in range(10)))

    asyncio.run(go())
    assert model.most == 10


@pytest.mark.parametrize(
    ("steps", "outputs", "reason"),
    [
        (
            [step("a", {"x": "X"}, {"y": "Y"}), step("b", {"x": "X"}, {"y": "Y"})],
            ["Y"],
            "ensemble tensor 'Y' is written by both step 0 and step 1",
        ),
        ([step("a", {"x": "X"}, {"y": "Y"})], ["Y", "W"], "output 'W' for ensemble 'ens'"),
        (
            [step("a", {"x": "X"}, {"y": "Y"}), step("b", {"x": "nowhere"}, {"y": "T"})],
            ["Y"],
            "ensemble tensor 'T' is unused",
        ),
        ([step("ens", {"x": "X"}, {"y": "Y"})], ["Y"], "calls the ensemble itself"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_step_and_tensor(
    steps: list[str], outputs: list[str], reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        plan(message(ensemble(["X"], outputs, steps)))
    assert reason in str(info.value)


def test_find_cycle_names_the_loop() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert find_cycle("d", lambda n: graph.get(n, [])) == ["a", "b", "c", "a"]
    assert find_cycle("x", lambda n: {"x": ["y"]}.get(n, [])) is None
