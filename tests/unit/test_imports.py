"""The import rules of STYLE.md, checked on the source with `ast` (nothing is imported)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
WEB_PACKAGES = frozenset({"starlette", "uvicorn", "grpc", "prometheus_client"})


def sources() -> list[Path]:
    return sorted(RUNTIME.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(RUNTIME.parent).as_posix()


def imported_roots(path: Path) -> set[str]:
    """Top-level package of every import in a file, function-level imports included."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def may_import_web(rel: str) -> bool:
    # runtime/loadtest is a client (`conveyor bench`), not a layer of the server.
    if rel.startswith(("runtime/protocol/", "runtime/loadtest/")) or rel in (
        "runtime/server.py",
        "runtime/monitoring/metrics.py",
    ):
        return True
    # generated gRPC stubs import grpc by construction
    return rel.startswith("runtime/proto/") and rel.endswith("_pb2_grpc.py")


def test_the_walk_sees_the_tree() -> None:
    names = {relative(p) for p in sources()}
    assert "runtime/protocol/http/codec.py" in names
    assert "runtime/batching/batcher.py" in names
    assert "grpc" in imported_roots(RUNTIME / "protocol" / "grpc" / "servicer.py")


def test_imported_roots_sees_every_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import grpc.aio\nfrom starlette.responses import Response\n"
        "def f():\n    import prometheus_client as p\n"
        "from . import sibling\nimport os, uvicorn\n"
    )
    assert imported_roots(sample) == {"grpc", "starlette", "prometheus_client", "os", "uvicorn"}


@pytest.mark.parametrize("path", sources(), ids=relative)
def test_only_protocol_server_and_metrics_import_web_packages(path: Path) -> None:
    rel = relative(path)
    if may_import_web(rel):
        return
    assert imported_roots(path) & WEB_PACKAGES == set(), rel


# The training and publishing libraries: only runtime/training and runtime/publish may import
# them, so the server never loads them (and the server's image needs none of them).
TRAINING_PACKAGES = frozenset(
    {"torch", "sklearn", "onnxscript", "skl2onnx", "xgboost", "lightgbm", "onnxmltools", "pyarrow"}
)
MAY_IMPORT_TRAINING = ("runtime/training/", "runtime/publish/")


@pytest.mark.parametrize("path", sources(), ids=relative)
def test_only_training_imports_torch(path: Path) -> None:
    rel = relative(path)
    if rel.startswith(MAY_IMPORT_TRAINING):
        return
    assert imported_roots(path) & TRAINING_PACKAGES == set(), rel


def imports_training(nodes: Iterable[ast.AST]) -> bool:
    """True when any of nodes is an import of runtime.training (or of a module inside it)."""
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(n == "runtime.training" or n.startswith("runtime.training.") for n in names):
            return True
    return False


@pytest.mark.parametrize("path", sources(), ids=relative)
def test_only_the_cli_imports_training_and_only_inside_a_function(path: Path) -> None:
    rel = relative(path)
    if rel.startswith(MAY_IMPORT_TRAINING):
        return
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    assert not imports_training(tree.body), f"{rel} imports runtime.training at module level"
    if rel != "runtime/cli.py":
        assert not imports_training(ast.walk(tree)), rel


def test_the_training_package_itself_loads_no_torch() -> None:
    """The CLI and `runtime.training` itself load torch only when a training run starts."""
    code = (
        "import sys, runtime.cli, runtime.training, runtime.publish, conveyor\n"
        "runtime.cli.build_parser()\n"
        "print(sorted(sys.modules.keys() & {'torch', 'sklearn', 'onnxscript', 'skl2onnx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The configuration sits below the layers that read it.
CONFIG_MUST_NOT_IMPORT = (
    "runtime.protocol",
    "runtime.registry",
    "runtime.repository",
    "runtime.dataplane",
)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import in the file names, function-level imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((RUNTIME / "config").rglob("*.py")), ids=relative)
def test_config_imports_no_adapter_registry_repository_or_dataplane(path: Path) -> None:
    bad = {
        name
        for name in imported_modules(path)
        for layer in CONFIG_MUST_NOT_IMPORT
        if name == layer or name.startswith(f"{layer}.")
    }
    assert bad == set(), relative(path)


# The layering of DESIGN.md: each layer, and the modules it must never import.
BELOW_THE_REGISTRY = (
    "runtime.registry",
    "runtime.repository",
    "runtime.instance",
    "runtime.loader",
)
LAYER_RULES: dict[str, tuple[str, ...]] = {
    # Monitoring reads only the events and views it is handed.
    "runtime/monitoring/": (
        *BELOW_THE_REGISTRY,
        "runtime.dataplane",
        "runtime.batching",
        "runtime.protocol",
        "runtime.server",
    ),
    # A backend runs a batch; it knows neither the pipeline around it nor who calls it.
    "runtime/backends/": (
        *BELOW_THE_REGISTRY,
        "runtime.pipeline",
        "runtime.steps",
        "runtime.batching",
        "runtime.monitoring",
        "runtime.dataplane",
        "runtime.protocol",
    ),
    # Adapters translate between the wire and the data plane, nothing below it.
    "runtime/protocol/": (
        *BELOW_THE_REGISTRY,
        "runtime.batching",
        "runtime.backends",
        "runtime.pipeline",
        "runtime.steps",
        "runtime.events",
        "runtime.poller",
        "runtime.snapshot",
        "runtime.reload_plan",
    ),
}
# The core vocabulary: numpy and each other, nothing else of ours (no kernels).
CORE = ("runtime/types.py", "runtime/tensors.py", "runtime/errors.py")
CORE_MODULES = frozenset({"runtime.types", "runtime.tensors", "runtime.errors"})


def config_internals(modules: Iterable[str]) -> set[str]:
    """Imports of the config package's own modules, rather than of the names it exports."""
    return {
        name
        for name in modules
        if name.startswith("runtime.config.")
        and (RUNTIME / "config" / f"{name.split('.')[2]}.py").exists()
    }


def violations(rel: str, modules: Iterable[str]) -> set[str]:
    """The imports of the file at `rel` that its layer forbids."""
    modules = set(modules)
    bad = {
        name
        for prefix, forbidden in LAYER_RULES.items()
        if rel.startswith(prefix)
        for name in modules
        for layer in forbidden
        if name == layer or name.startswith(f"{layer}.")
    }
    if rel.startswith("runtime/protocol/"):
        bad |= config_internals(modules)
    if rel in CORE:
        ours = {n for n in modules if n.split(".")[0] in ("runtime", "kernels")}
        bad |= {n for n in ours if ".".join(n.split(".")[:2]) not in CORE_MODULES}
    return bad


@pytest.mark.parametrize("path", sources(), ids=relative)
def test_each_layer_imports_only_what_lies_below_it(path: Path) -> None:
    rel = relative(path)
    assert violations(rel, imported_modules(path)) == set(), rel


def test_core_vocabulary_imports_nothing_but_numpy() -> None:
    for rel in CORE:
        path = RUNTIME.parent / rel
        assert imported_roots(path) - {"numpy", "runtime"} <= set(sys.stdlib_module_names), rel


@pytest.mark.parametrize(
    ("rel", "module"),
    [
        ("runtime/monitoring/metrics.py", "runtime.registry.Registry"),
        ("runtime/monitoring/stats.py", "runtime.instance"),
        ("runtime/backends/onnx_cuda.py", "runtime.pipeline.Pipeline"),
        ("runtime/backends/onnx.py", "runtime.steps"),
        ("runtime/protocol/http/codec.py", "runtime.config.model.TensorSpec"),
        ("runtime/protocol/grpc/servicer.py", "runtime.registry"),
        ("runtime/types.py", "kernels.topk"),
        ("runtime/tensors.py", "runtime.config"),
    ],
)
def test_a_broken_layer_rule_is_caught(rel: str, module: str) -> None:
    assert violations(rel, {module, "numpy"}) == {module}


def test_the_layer_rules_allow_what_the_layers_need() -> None:
    assert violations("runtime/monitoring/metrics.py", {"runtime.events.Subscriber"}) == set()
    assert (
        violations("runtime/protocol/http/app.py", {"runtime.config.DEFAULT_MAX_INPUT_SIZE"})
        == set()
    )
    assert violations("runtime/tensors.py", {"runtime.errors.InvalidInput"}) == set()
    assert violations("runtime/loader.py", {"runtime.registry"}) == set()


def test_the_server_loads_no_training_library(tmp_path: Path) -> None:
    """The server's layers, and loading a model version, import neither torch nor sklearn."""
    code = (
        "import sys, pathlib, runtime.server, runtime.dataplane\n"
        "from runtime.config import read_config_file\n"
        "from runtime.loader import InstanceSettings, load_instance\n"
        "from tests import models\n"
        f"folder = models.add_sub_fp32(pathlib.Path({str(tmp_path)!r}))\n"
        "load_instance(folder, 1, read_config_file(folder), InstanceSettings(device='cpu'))\n"
        "print(sorted(sys.modules.keys() & {'torch', 'sklearn', 'onnxscript', 'skl2onnx'}))"
    )
    root = RUNTIME.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


# The OpenTelemetry SDK (the `trace` extra) is loaded only once tracing turns on: one module
# imports it, and only tracing.py imports that module, inside a function.
OTEL_MODULE = "runtime/monitoring/otel.py"


@pytest.mark.parametrize("path", sources(), ids=relative)
def test_only_the_otel_module_imports_opentelemetry(path: Path) -> None:
    rel = relative(path)
    if rel != OTEL_MODULE:
        assert "opentelemetry" not in imported_roots(path), rel
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top_level = imported_modules_of(tree.body)
    assert not {m for m in top_level if m.startswith("runtime.monitoring.otel")}, rel
    if rel != "runtime/monitoring/tracing.py":
        everywhere = imported_modules_of(ast.walk(tree))
        assert not {m for m in everywhere if m.startswith("runtime.monitoring.otel")}, rel


def imported_modules_of(nodes: Iterable[ast.AST]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_server_loads_no_opentelemetry_with_tracing_off(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib, runtime.server, runtime.cli\n"
        "from runtime.config import ServerConfig\n"
        "from tests import models\n"
        f"root = pathlib.Path({str(tmp_path)!r})\n"
        "models.add_sub_fp32(root)\n"
        "config = ServerConfig([root], trace_config=['rate=1', 'opentelemetry,url=http://h:1/v1/traces'])\n"
        "server = runtime.server.Server(config)\n"
        "assert not server.dataplane.tracing.on\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    root = RUNTIME.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


def test_the_server_loads_opentelemetry_with_tracing_on(tmp_path: Path) -> None:
    """The check above can fail: with tracing on, the SDK is loaded at start."""
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the `trace` extra")
    code = (
        "import sys, pathlib, runtime.server\n"
        "from runtime.config import ServerConfig\n"
        f"root = pathlib.Path({str(tmp_path)!r})\n"
        "config = ServerConfig([root], trace_config=['level=TIMESTAMPS'])\n"
        "server = runtime.server.Server(config)\n"
        "assert server.dataplane.tracing.on\n"
        "print('opentelemetry.sdk.trace' in sys.modules)"
    )
    root = RUNTIME.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "True"
