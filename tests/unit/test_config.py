"""config.pbtxt parsing, completion from the graph, Triton's checks and the config JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as triton_pb  # type: ignore[import-untyped]

from runtime import backends
from runtime import config as cfg
from runtime.config import ConfigError, GraphTensor
from runtime.errors import InvalidInput
from runtime.proto import model_config_pb2 as pb

BATCHED_IN = [GraphTensor("INPUT0", "FP32", (None, 4))]
BATCHED_OUT = [GraphTensor("OUTPUT0", "FP32", (None, 4))]
FIXED_IN = [GraphTensor("INPUT0", "FP32", (2, 3))]
FIXED_OUT = [GraphTensor("OUTPUT0", "FP32", (2, 3))]

FULL_CONFIG = """
name: "full"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific { versions: [1, 3] } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ -1 ] reshape: { shape: [ 1, -1 ] } }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" }
]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 1500
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 7000
    allow_timeout_override: true
    max_queue_size: 5
  }
  priority_queue_policy {
    key: 1
    value: { default_timeout_microseconds: 9000 max_queue_size: 3 }
  }
}
instance_group [ { name: "cpu_group" kind: KIND_CPU count: 2 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def parse(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


def complete_text(text: str, name: str = "m", inputs: Any = None, outputs: Any = None) -> Any:
    return cfg.complete(
        parse(text),
        name,
        BATCHED_IN if inputs is None else inputs,
        BATCHED_OUT if outputs is None else outputs,
    )


# --- read_config_file -------------------------------------------------------------------


def test_read_config_file_parses_text_format(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(FULL_CONFIG)
    message = cfg.read_config_file(tmp_path)
    assert message.name == "full"
    assert message.max_batch_size == 8
    assert [i.name for i in message.input] == ["INPUT0", "INPUT1"]
    assert message.input[1].data_type == pb.TYPE_STRING
    assert list(message.dynamic_batching.preferred_batch_size) == [2, 4]
    assert message.dynamic_batching.priority_queue_policy[1].max_queue_size == 3


def test_read_config_file_missing_gives_empty_message(tmp_path: Path) -> None:
    message = cfg.read_config_file(tmp_path)
    assert message == pb.ModelConfig()


def test_read_config_file_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_size: [ oops\n')
    with pytest.raises(ConfigError, match=r"config\.pbtxt") as info:
        cfg.read_config_file(tmp_path)
    assert str(path) in str(info.value)


def test_read_config_file_unknown_field_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('name: "m"\nmax_batch_sizes: 4\n')
    with pytest.raises(ConfigError, match=r"config\.pbtxt"):
        cfg.read_config_file(tmp_path)


# --- complete -----------------------------------------------------------------------------


def test_complete_without_config_and_symbolic_batch_dim() -> None:
    graph_in = [GraphTensor("INPUT0", "FP32", (None, 3, None)), GraphTensor("T", "BYTES", (None,))]
    graph_out = [GraphTensor("OUTPUT0", "INT64", (None, 3))]
    out = cfg.complete(pb.ModelConfig(), "auto", graph_in, graph_out)
    assert out.name == "auto"
    assert out.platform == "onnxruntime_onnx"
    assert out.max_batch_size == 4
    assert out.HasField("dynamic_batching")
    assert list(out.dynamic_batching.preferred_batch_size) == [4]
    assert [(t.name, t.data_type, list(t.dims)) for t in out.input] == [
        ("INPUT0", pb.TYPE_FP32, [3, -1]),
        ("T", pb.TYPE_STRING, []),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in out.output] == [
        ("OUTPUT0", pb.TYPE_INT64, [3]),
    ]


def test_complete_without_config_and_fixed_first_dim() -> None:
    out = cfg.complete(pb.ModelConfig(), "fixed", FIXED_IN, FIXED_OUT)
    assert out.max_batch_size == 0
    assert not out.HasField("dynamic_batching")
    assert list(out.input[0].dims) == [2, 3]
    assert list(out.output[0].dims) == [2, 3]


def test_complete_one_fixed_output_disables_batching() -> None:
    out = cfg.complete(
        pb.ModelConfig(), "m", BATCHED_IN, [*BATCHED_OUT, GraphTensor("O2", "FP32", (1,))]
    )
    assert out.max_batch_size == 0
    assert list(out.input[0].dims) == [-1, 4]


def test_complete_keeps_explicit_tensors_and_checks_them() -> None:
    text = (
        "max_batch_size: 8\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    out = complete_text(text)
    assert out.max_batch_size == 8
    assert list(out.input[0].dims) == [-1]  # a config -1 over a fixed graph dim is allowed
    assert not out.HasField("dynamic_batching")  # an explicit config gets no scheduler


def test_complete_config_input_not_in_graph() -> None:
    text = 'max_batch_size: 8\ninput [ { name: "NOPE" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    with pytest.raises(ConfigError, match="'NOPE'") as info:
        complete_text(text)
    assert "INPUT0" in str(info.value)


def test_complete_config_output_not_in_graph() -> None:
    text = 'max_batch_size: 8\noutput [ { name: "OUT9" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    with pytest.raises(ConfigError, match="output 'OUT9'"):
        complete_text(text)


def test_complete_datatype_mismatch() -> None:
    text = 'max_batch_size: 8\ninput [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] } ]'
    with pytest.raises(ConfigError, match=r"FP32.*INT32"):
        complete_text(text)


@pytest.mark.parametrize(
    ("dims", "pattern"),
    [("[ 5 ]", r"dims \[5\]"), ("[ 4, 1 ]", "dimensions"), ("[ ]", "dimensions")],
)
def test_complete_dims_mismatch(dims: str, pattern: str) -> None:
    text = f'max_batch_size: 8\ninput [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }} ]'
    with pytest.raises(ConfigError, match=pattern):
        complete_text(text)


def test_complete_dims_include_batch_when_not_batching() -> None:
    text = 'max_batch_size: 0\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]'
    out = complete_text(text, inputs=FIXED_IN, outputs=FIXED_OUT)
    assert list(out.input[0].dims) == [2, 3]
    with pytest.raises(ConfigError):
        complete_text(text.replace("[ 2, 3 ]", "[ 3 ]"), inputs=FIXED_IN, outputs=FIXED_OUT)


def test_complete_max_batch_size_with_fixed_first_dim() -> None:
    with pytest.raises(ConfigError, match="max_batch_size is 4"):
        complete_text("max_batch_size: 4", inputs=FIXED_IN, outputs=FIXED_OUT)


def test_complete_negative_max_batch_size() -> None:
    with pytest.raises(ConfigError, match="max_batch_size"):
        complete_text('max_batch_size: -1 input [ { name: "INPUT0" data_type: TYPE_FP32 } ]')


def test_complete_name_mismatch() -> None:
    with pytest.raises(ConfigError, match=r"'other'.*'m'"):
        complete_text('name: "other"')


def test_complete_matching_name_is_fine() -> None:
    assert complete_text('name: "m"').name == "m"


@pytest.mark.parametrize(
    "text", ['platform: "tensorflow_savedmodel"', 'backend: "pytorch"', 'platform: "onnx"']
)
def test_unsupported_platform_is_refused_before_any_file_is_read(text: str) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        backends.registration(text_format.Parse(text, pb.ModelConfig()))


def test_complete_backend_onnxruntime_is_accepted() -> None:
    out = complete_text('backend: "onnxruntime"')
    assert out.backend == "onnxruntime"
    assert cfg.build(out).platform == "onnxruntime"


def test_complete_normalises_like_triton() -> None:
    out = complete_text("max_batch_size: 6\ndynamic_batching { }", name="norm")
    assert out.version_policy.WhichOneof("policy_choice") == "latest"
    assert out.version_policy.latest.num_versions == 1
    assert list(out.dynamic_batching.preferred_batch_size) == [6]
    assert len(out.instance_group) == 1
    group = out.instance_group[0]
    assert (group.name, group.count, group.kind) == ("norm_0", 1, pb.ModelInstanceGroup.KIND_CPU)
    assert out.default_model_filename == "model.onnx"


def test_complete_normalises_each_instance_group() -> None:
    text = 'instance_group [ { kind: KIND_AUTO }, { name: "g" count: 3 kind: KIND_CPU } ]'
    out = complete_text(text, name="ig")
    assert [(g.name, g.count, g.kind) for g in out.instance_group] == [
        ("ig_0", 1, pb.ModelInstanceGroup.KIND_CPU),
        ("g", 3, pb.ModelInstanceGroup.KIND_CPU),
    ]


def test_complete_keeps_what_is_set() -> None:
    text = (
        "max_batch_size: 8\n"
        "version_policy: { all {} }\n"
        "dynamic_batching { preferred_batch_size: [ 2, 4 ] }\n"
        'default_model_filename: "other.onnx"'
    )
    out = complete_text(text)
    assert out.version_policy.WhichOneof("policy_choice") == "all"
    assert list(out.dynamic_batching.preferred_batch_size) == [2, 4]
    assert out.default_model_filename == "other.onnx"


def test_complete_does_not_modify_its_argument() -> None:
    message = parse("max_batch_size: 8\ndynamic_batching { }")
    before = message.SerializeToString()
    cfg.complete(message, "m", BATCHED_IN, BATCHED_OUT)
    assert message.SerializeToString() == before


# --- build --------------------------------------------------------------------------------


def built(text: str, model_dir: Path | None = None) -> cfg.ModelConfig:
    return cfg.build(cfg.complete(parse(text), "full", *_full_graph()), model_dir)


def test_build_full_config(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    model = built(FULL_CONFIG, tmp_path)
    assert model.name == "full"
    assert model.max_batch_size == 8
    assert model.batched
    assert model.instance_count == 2
    assert model.instance_kind == "KIND_CPU"
    assert model.parameters == {"intra_op_thread_count": "1"}
    assert model.input("INPUT1") == cfg.TensorSpec("INPUT1", "BYTES", (-1,))
    assert model.input("nope") is None
    assert model.output("OUTPUT0") is not None
    assert model.output("OUTPUT0").labels == ("cat", "dog", "bird", "fish")  # type: ignore[union-attr]
    b = model.batching
    assert b.enabled
    assert b.preferred_batch_sizes == (2, 4)
    assert b.max_queue_delay_us == 1500
    assert (b.priority_levels, b.default_priority_level) == (2, 2)
    assert b.default_policy == cfg.QueuePolicy(True, 7000, True, 5)
    assert b.policy(1) == cfg.QueuePolicy(False, 9000, False, 3)
    assert b.policy(2) == b.default_policy


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [("", cfg.DEFAULT_INLINE_RUN_US), ("0", 0), ("250", 250), (" 40 ", 40)],
)
def test_build_inline_run_us(parameter: str, expected: int) -> None:
    text = "max_batch_size: 4\ndynamic_batching { }\n"
    if parameter:
        text += f'parameters {{ key: "inline_run_us" value: {{ string_value: "{parameter}" }} }}'
    assert cfg.build(complete_text(text)).inline_run_us == expected


@pytest.mark.parametrize("bad", ["-5", "1.5", "fast", ""])
def test_build_inline_run_us_must_be_whole_microseconds(bad: str) -> None:
    text = f'parameters {{ key: "inline_run_us" value: {{ string_value: "{bad}" }} }}'
    with pytest.raises(ConfigError, match=f"inline_run_us .*'{bad.strip()}'"):
        cfg.build(complete_text(text))


def test_build_without_dynamic_batching() -> None:
    model = cfg.build(cfg.complete(pb.ModelConfig(), "m", FIXED_IN, FIXED_OUT))
    assert not model.batched
    assert model.batching == cfg.BatchingConfig()
    assert model.input("INPUT0").metadata_shape(model.max_batch_size) == [2, 3]  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [0, 9])
def test_build_preferred_batch_size_out_of_range(size: int) -> None:
    text = f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [ 2, {size} ] }}"
    with pytest.raises(ConfigError, match="preferred_batch_size"):
        cfg.build(complete_text(text))


@pytest.mark.parametrize("level", [0, 3])
def test_build_default_priority_level_out_of_range(level: int) -> None:
    text = (
        "max_batch_size: 8\n"
        f"dynamic_batching {{ priority_levels: 2 default_priority_level: {level} }}"
    )
    with pytest.raises(ConfigError, match="default_priority_level"):
        cfg.build(complete_text(text))


@pytest.mark.parametrize(
    "block",
    [
        "preserve_ordering: true priority_levels: 2 default_priority_level: 1",
        "preserve_ordering: true default_queue_policy "
        "{ timeout_action: DELAY default_timeout_microseconds: 100 }",
    ],
)
def test_build_refuses_preserve_ordering_with_what_would_reorder(block: str) -> None:
    with pytest.raises(ConfigError, match="preserve_ordering"):
        cfg.build(complete_text(f"max_batch_size: 8\ndynamic_batching {{ {block} }}"))


def test_build_keeps_preserve_ordering_and_the_delay_action() -> None:
    text = (
        "max_batch_size: 8\ndynamic_batching { preserve_ordering: true "
        "default_queue_policy { timeout_action: DELAY } }"
    )
    batching = cfg.build(complete_text(text)).batching
    assert batching.preserve_ordering
    assert batching.default_policy.timeout_action_delay


def test_build_label_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"labels\.txt"):
        built(FULL_CONFIG, tmp_path)


def test_build_invalid_dimension() -> None:
    message = cfg.complete(pb.ModelConfig(), "m", BATCHED_IN, BATCHED_OUT)
    message.input[0].dims[0] = -2
    with pytest.raises(ConfigError, match="-2"):
        cfg.build(message)


# --- to_json ------------------------------------------------------------------------------


def test_to_json_shape_of_a_completed_config() -> None:
    doc = cfg.to_json(cfg.complete(parse(FULL_CONFIG), "full", *_full_graph()))
    assert doc["name"] == "full"
    assert doc["max_batch_size"] == 8
    assert doc["version_policy"] == {"specific": {"versions": [1, 3]}}
    first = doc["input"][0]
    assert first["data_type"] == "TYPE_FP32"
    assert first["format"] == "FORMAT_NONE"
    assert first["dims"] == [4]
    assert first["optional"] is False
    assert first["is_shape_tensor"] is False
    assert doc["input"][1]["data_type"] == "TYPE_STRING"
    assert doc["input"][1]["dims"] == [-1]
    assert doc["input"][1]["reshape"] == {"shape": [1, -1]}
    assert doc["output"][0]["label_filename"] == "labels.txt"
    db = doc["dynamic_batching"]
    assert db["max_queue_delay_microseconds"] == 1500
    assert db["preferred_batch_size"] == [2, 4]
    assert db["priority_levels"] == 2
    assert db["default_priority_level"] == 2
    assert db["preserve_ordering"] is False
    assert db["default_queue_policy"] == {
        "timeout_action": "DELAY",
        "default_timeout_microseconds": 7000,
        "allow_timeout_override": True,
        "max_queue_size": 5,
    }
    # map keys stay strings, values are numbers
    assert db["priority_queue_policy"] == {
        "1": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 9000,
            "allow_timeout_override": False,
            "max_queue_size": 3,
        }
    }
    assert doc["instance_group"][0]["kind"] == "KIND_CPU"
    assert doc["instance_group"][0]["count"] == 2
    assert doc["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}


def test_to_json_prints_defaults() -> None:
    doc = cfg.to_json(cfg.complete(pb.ModelConfig(), "fixed", FIXED_IN, FIXED_OUT))
    assert doc["max_batch_size"] == 0
    assert doc["input"][0]["optional"] is False
    assert doc["input"][0]["dims"] == [2, 3]
    assert doc["output"][0]["dims"] == [2, 3]
    assert doc["output"][0]["label_filename"] == ""
    assert doc["version_policy"] == {"latest": {"num_versions": 1}}
    assert doc["backend"] == ""
    assert "dynamic_batching" not in doc


def test_to_json_default_queue_policy_of_an_empty_dynamic_batching() -> None:
    doc = cfg.to_json(complete_text("max_batch_size: 4\ndynamic_batching { }"))
    db = doc["dynamic_batching"]
    assert db["max_queue_delay_microseconds"] == 0
    assert db["priority_levels"] == 0
    assert db["preferred_batch_size"] == [4]


def test_to_json_has_no_64_bit_strings() -> None:
    """Every integer-looking string in the JSON is a map key or a parameter, never a field."""
    doc = cfg.to_json(cfg.complete(parse(FULL_CONFIG), "full", *_full_graph()))
    assert _numeric_strings(doc) == ["parameters.intra_op_thread_count.string_value"]


def _numeric_strings(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _numeric_strings(v, f"{path}.{k}".lstrip("."))]
    if isinstance(value, list):
        return [p for v in value for p in _numeric_strings(v, path)]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return [path]
    return []


def _full_graph() -> tuple[list[GraphTensor], list[GraphTensor]]:
    return (
        [GraphTensor("INPUT0", "FP32", (None, 4)), GraphTensor("INPUT1", "BYTES", (None, None))],
        BATCHED_OUT,
    )


def _same(ours: Any, theirs: Any, path: str = "") -> None:
    """Equal keys everywhere; 64-bit integers may be numbers here and strings there."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), path
        assert sorted(ours) == sorted(theirs), path
        for key in theirs:
            _same(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), path
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, str) and isinstance(ours, int) and not isinstance(ours, bool):
        assert str(ours) == theirs, path
    else:
        assert ours == theirs, path


@pytest.mark.parametrize("text", [FULL_CONFIG, 'name: "fixed"', "max_batch_size: 4"])
def test_to_json_matches_tritonclient_model_config(text: str) -> None:
    ours = cfg.complete(parse(text), *_name_and_graph(text))
    theirs = text_format.Parse(text_format.MessageToString(ours), triton_pb.ModelConfig())
    expected = json_format.MessageToDict(
        theirs, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _same(cfg.to_json(ours), expected)


def test_to_json_matches_tritonclient_for_the_raw_file_text() -> None:
    expected = json_format.MessageToDict(
        text_format.Parse(FULL_CONFIG, triton_pb.ModelConfig()),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _same(cfg.to_json(parse(FULL_CONFIG)), expected)


def _name_and_graph(text: str) -> tuple[str, list[GraphTensor], list[GraphTensor]]:
    if text is FULL_CONFIG:
        return ("full", *_full_graph())
    if "fixed" in text:
        return "fixed", FIXED_IN, FIXED_OUT
    return "m", BATCHED_IN, BATCHED_OUT


def test_parse_config_json_round_trips_to_json() -> None:
    message = cfg.complete(parse(FULL_CONFIG), "full", *_full_graph())
    again = cfg.parse_config_json(json.dumps(cfg.to_json(message)))
    assert again == message


def test_parse_config_json_invalid() -> None:
    with pytest.raises(InvalidInput, match="invalid model config JSON"):
        cfg.parse_config_json('{"max_batch_size": "many"}')
