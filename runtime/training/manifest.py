"""The model-level files the server reads: config.pbtxt, labels.txt and conveyor.yaml."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from google.protobuf import text_format

from runtime.proto import model_config_pb2 as pb

CONFIG_FILENAME = "config.pbtxt"
LABELS_FILENAME = "labels.txt"
SETTINGS_FILENAME = "conveyor.yaml"
SETTINGS_HEADER = "# Written by `conveyor train`: the serving steps around the ONNX model.\n"


@dataclass(frozen=True, slots=True)
class Signature:
    """What the model is served as: one FP32 input [F] and one FP32 output [C] per row."""

    model_name: str
    input_name: str
    output_name: str
    features: int
    classes: int
    max_batch_size: int
    max_queue_delay_us: int


def model_config(sig: Signature) -> Any:
    """Triton's ModelConfig for the model (a runtime.proto.model_config_pb2.ModelConfig)."""
    config = pb.ModelConfig(
        name=sig.model_name, platform="onnxruntime_onnx", max_batch_size=sig.max_batch_size
    )
    config.input.add(name=sig.input_name, data_type=pb.TYPE_FP32, dims=[sig.features])
    config.output.add(
        name=sig.output_name,
        data_type=pb.TYPE_FP32,
        dims=[sig.classes],
        label_filename=LABELS_FILENAME,
    )
    config.dynamic_batching.max_queue_delay_microseconds = sig.max_queue_delay_us
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    # A small MLP gains nothing from more intra-op threads; they only contend with batches.
    config.parameters["intra_op_thread_count"].string_value = "1"
    return config


def config_text(sig: Signature) -> str:
    """config.pbtxt's text."""
    text: str = text_format.MessageToString(model_config(sig))
    return text


def labels_text(class_names: Sequence[str]) -> str:
    """labels.txt: one class name per line, in class index order."""
    return "".join(f"{name}\n" for name in class_names)


def settings_text(input_name: str, output_name: str) -> str:
    """conveyor.yaml: standardize the input with the version's arrays, softmax the output."""
    doc = {
        "pipeline": {
            "pre": [
                {
                    "kernel": "standardize",
                    "tensor": input_name,
                    "args": {"mean": "@mean", "std": "@std"},
                }
            ],
            "post": [{"kernel": "softmax", "tensor": output_name}],
        }
    }
    return SETTINGS_HEADER + yaml.safe_dump(doc, sort_keys=False)


def files(sig: Signature, class_names: Sequence[str]) -> dict[str, bytes]:
    """Every model-level file by name."""
    return {
        CONFIG_FILENAME: config_text(sig).encode(),
        LABELS_FILENAME: labels_text(class_names).encode(),
        SETTINGS_FILENAME: settings_text(sig.input_name, sig.output_name).encode(),
    }
