"""Checks for the generated protocol stubs in runtime/proto.

* they are exactly what proto/generate.py produces from proto/*.proto;
* they are wire-compatible with tritonclient's own `inference` stubs (same messages,
  fields, enums and service methods);
* they coexist with tritonclient in one process (private descriptor pool).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, text_format
from google.protobuf.descriptor import FileDescriptor

import runtime.proto
from runtime.proto import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
STUB_DIR = REPO_ROOT / "runtime" / "proto"
GENERATE = REPO_ROOT / "proto" / "generate.py"

tc_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as tc_model_config_pb2  # noqa: E402
from tritonclient.grpc import service_pb2 as tc_service_pb2  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as tc_service_pb2_grpc  # noqa: E402


def _generated_files(directory: Path) -> dict[str, bytes]:
    paths = [*directory.glob("*_pb2*.py"), *directory.glob("*_pb2*.pyi")]
    return {p.name: p.read_bytes() for p in sorted(paths)}


# ---------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------


def test_regenerating_gives_identical_stubs(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e '.[proto]') - cannot regenerate")
    proc = subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(tmp_path)],
        cwd=tmp_path,  # output must not depend on the working directory
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = _generated_files(tmp_path)
    committed = _generated_files(STUB_DIR)
    assert sorted(fresh) == sorted(committed)
    assert {"model_config_pb2.py", "grpc_service_pb2.py", "grpc_service_pb2_grpc.py"} <= set(fresh)
    # The type stubs mypy reads the messages through are regenerated and compared too.
    assert {"model_config_pb2.pyi", "grpc_service_pb2.pyi"} <= set(fresh)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs, rerun `python proto/generate.py`: {stale}"


# ---------------------------------------------------------------------------
# Wire compatibility with tritonclient's descriptors
# ---------------------------------------------------------------------------


def _field_key(field: descriptor_pb2.FieldDescriptorProto, oneofs: list[str]) -> tuple[Any, ...]:
    oneof = oneofs[field.oneof_index] if field.HasField("oneof_index") else None
    packed = field.options.packed if field.options.HasField("packed") else None
    return (
        field.number,
        field.type,
        field.label,
        field.type_name,
        oneof,
        field.proto3_optional,
        packed,
    )


def _walk_message(
    msg: descriptor_pb2.DescriptorProto,
    scope: str,
    messages: dict[str, Any],
    enums: dict[str, Any],
) -> None:
    full = f"{scope}.{msg.name}"
    oneofs = [o.name for o in msg.oneof_decl]
    messages[full] = {
        "map_entry": msg.options.map_entry,
        "oneofs": sorted(oneofs),
        "fields": {f.name: _field_key(f, oneofs) for f in msg.field},
        "reserved": sorted((r.start, r.end) for r in msg.reserved_range),
    }
    for enum in msg.enum_type:
        enums[f"{full}.{enum.name}"] = {v.name: v.number for v in enum.value}
    for nested in msg.nested_type:
        _walk_message(nested, full, messages, enums)


def _describe(fd: FileDescriptor) -> dict[str, Any]:
    """Order-insensitive summary of everything that matters on the wire."""
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    messages: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    scope = f".{proto.package}" if proto.package else ""
    for msg in proto.message_type:
        _walk_message(msg, scope, messages, enums)
    for enum in proto.enum_type:
        enums[f"{scope}.{enum.name}"] = {v.name: v.number for v in enum.value}
    services = {
        f"{scope}.{svc.name}": {
            m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in svc.method
        }
        for svc in proto.service
    }
    return {
        "name": proto.name,
        "package": proto.package,
        "syntax": proto.syntax,
        "dependencies": list(proto.dependency),
        "messages": messages,
        "enums": enums,
        "services": services,
    }


def _diff(ours: dict[str, Any], theirs: dict[str, Any], path: str = "") -> list[str]:
    problems: list[str] = []
    for key in sorted(set(ours) | set(theirs), key=str):
        where = f"{path}/{key}"
        if key not in theirs:
            problems.append(f"extra in ours: {where}")
        elif key not in ours:
            problems.append(f"missing from ours: {where}")
        elif isinstance(ours[key], dict) and isinstance(theirs[key], dict):
            problems.extend(_diff(ours[key], theirs[key], where))
        elif ours[key] != theirs[key]:
            problems.append(f"differs at {where}: ours={ours[key]!r} tritonclient={theirs[key]!r}")
    return problems


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        pytest.param(model_config_pb2, tc_model_config_pb2, id="model_config"),
        pytest.param(grpc_service_pb2, tc_service_pb2, id="grpc_service"),
    ],
)
def test_descriptors_match_tritonclient(ours: Any, theirs: Any) -> None:
    mine = _describe(ours.DESCRIPTOR)
    ref = _describe(theirs.DESCRIPTOR)
    assert mine["messages"], "nothing was described"
    problems = _diff(mine, ref)
    assert not problems, "\n".join(problems)


def test_service_shape() -> None:
    svc = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert len(svc.methods) == 20
    stream = svc.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming
    assert stream.server_streaming
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceStub")
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceServicer")
    assert hasattr(grpc_service_pb2_grpc, "add_GRPCInferenceServiceServicer_to_server")


# ---------------------------------------------------------------------------
# Coexistence with tritonclient in one process
# ---------------------------------------------------------------------------


def test_private_descriptor_pool() -> None:
    ours = grpc_service_pb2.ModelInferRequest.DESCRIPTOR
    assert runtime.proto.POOL.FindMessageTypeByName("inference.ModelInferRequest") is ours
    default = descriptor_pool.Default().FindMessageTypeByName("inference.ModelInferRequest")
    assert default is tc_service_pb2.ModelInferRequest.DESCRIPTOR
    assert default is not ours


def _tc_request() -> Any:
    req = tc_service_pb2.ModelInferRequest(model_name="m", model_version="2", id="r1")
    req.parameters["sequence_id"].int64_param = 7
    req.parameters["flag"].bool_param = True
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 3])
    inp.parameters["binary_data_size"].int64_param = 24
    inp.contents.fp32_contents.extend([1.0, 2.5])
    req.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 3
    req.raw_input_contents.append(bytes(range(24)))
    return req


def test_infer_request_roundtrip_between_stub_sets() -> None:
    theirs = _tc_request()
    ours = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.model_name == "m"
    assert ours.id == "r1"
    assert ours.parameters["sequence_id"].int64_param == 7
    assert ours.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert list(ours.inputs[0].shape) == [2, 3]
    assert list(ours.inputs[0].contents.fp32_contents) == [1.0, 2.5]
    assert ours.outputs[0].parameters["classification"].int64_param == 3
    assert ours.raw_input_contents[0] == bytes(range(24))
    # Same content both ways (compared field by field via text format).
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)
    back = tc_service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert back == theirs
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(theirs)


def test_json_and_text_format_on_our_messages() -> None:
    req = grpc_service_pb2.ModelInferRequest.FromString(_tc_request().SerializeToString())
    as_dict = json_format.MessageToDict(req, preserving_proto_field_name=True)
    assert as_dict["inputs"][0]["shape"] == ["2", "3"]
    assert json_format.ParseDict(as_dict, grpc_service_pb2.ModelInferRequest()) == req

    config = text_format.Parse(
        """
        name: "m" max_batch_size: 8
        input { name: "x" data_type: TYPE_FP32 dims: [-1, 3] }
        dynamic_batching { priority_queue_policy { key: 1 value { max_queue_size: 4 } } }
        parameters { key: "k" value { string_value: "v" } }
        """,
        model_config_pb2.ModelConfig(),
    )
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert json_format.ParseDict(json_format.MessageToDict(config), model_config_pb2.ModelConfig())
    wrapped = grpc_service_pb2.ModelConfigResponse(config=config)
    theirs = tc_service_pb2.ModelConfigResponse.FromString(wrapped.SerializeToString())
    assert json_format.MessageToDict(theirs) == json_format.MessageToDict(wrapped)


def test_import_order_does_not_matter() -> None:
    """Our stubs first, then tritonclient (the reverse of this module's order)."""
    code = (
        "import runtime.proto.grpc_service_pb2_grpc as s\n"
        "import tritonclient.grpc as t\n"
        "from tritonclient.grpc import service_pb2 as ts\n"
        "m = s.grpc__service__pb2.ModelInferRequest(model_name='x')\n"
        "assert ts.ModelInferRequest.FromString(m.SerializeToString()).model_name == 'x'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


class _Servicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request: Any, context: Any) -> Any:
        return grpc_service_pb2.ServerLiveResponse(live=True)

    def ModelConfig(self, request: Any, context: Any) -> Any:
        config = model_config_pb2.ModelConfig(name=request.name, max_batch_size=4)
        return grpc_service_pb2.ModelConfigResponse(config=config)

    def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        for request in request_iterator:
            response = grpc_service_pb2.ModelInferResponse(model_name=request.model_name)
            yield grpc_service_pb2.ModelStreamInferResponse(infer_response=response)


def test_tritonclient_talks_to_our_servicer() -> None:
    """A real gRPC round trip: tritonclient's stub on one side, our servicer on the other."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = tc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            live = stub.ServerLive(tc_service_pb2.ServerLiveRequest(), timeout=10)
            assert live.live is True
            cfg = stub.ModelConfig(tc_service_pb2.ModelConfigRequest(name="m"), timeout=10)
            assert cfg.config.name == "m"
            assert cfg.config.max_batch_size == 4
            requests = iter([tc_service_pb2.ModelInferRequest(model_name=n) for n in "ab"])
            names = [r.infer_response.model_name for r in stub.ModelStreamInfer(requests)]
            assert names == ["a", "b"]
    finally:
        server.stop(grace=None)
