"""`conveyor publish`: the flags, the exit status, and what is printed for the new model."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from runtime.publish import api, fallback, files, parity, sources
from runtime.publish.errors import BadInput, PublishStopped


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish your own model (ONNX, scikit-learn, XGBoost, LightGBM, PyTorch) as the "
        "next version in a repository",
        description="Publish a model as the next version of REPOSITORY/NAME after a parity "
        f"check on the sample. Sources: {sources.describe_kinds()}. Pickle and joblib files "
        "run code when loaded: publish only files you trust.",
    )
    p.add_argument("source", type=Path, help="the model file")
    p.add_argument("--repository", type=Path, required=True, help="model repository folder")
    p.add_argument("--name", required=True, help="model name (its folder in the repository)")
    p.add_argument("--sample", type=Path, required=True, help=".npy or .csv of feature rows")
    p.add_argument("--reference", type=Path, help="rows for the drift profile (default: sample)")
    p.add_argument("--labels", type=Path, help="class names, one a line, in class order")
    p.add_argument("--max-batch-size", type=int, default=files.DEFAULT_MAX_BATCH_SIZE)
    p.add_argument("--input-name", default="input", help="input tensor name of a converted model")
    p.add_argument("--atol", type=float, default=parity.DEFAULT_ATOL, help="probabilities, abs")
    p.add_argument("--rtol", type=float, default=parity.DEFAULT_RTOL, help="regression, relative")
    p.add_argument(
        "--fallback",
        choices=fallback.CHOICES,
        default="python",
        help="a scikit-learn model skl2onnx cannot convert: publish it as a Python model "
        "(python, the default) or stop with exit status 1 (none)",
    )


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Publish what args name; 0 published, 1 a failed gate, 2 bad input."""
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        labels = _labels(args.labels) if args.labels else None
        model = sources.load_file(args.source)
        record = api.publish(
            model, args.sample, repository=args.repository, name=args.name,
            reference=args.reference, labels=labels, max_batch_size=args.max_batch_size,
            input_name=args.input_name, atol=args.atol, rtol=args.rtol,
            command=shlex.join(["conveyor", *words]), source_file=str(args.source),
            fallback=args.fallback,
        )  # fmt: skip
    except PublishStopped as exc:
        print(f"conveyor publish: {exc}", file=sys.stderr)
        print("conveyor publish: nothing was published", file=sys.stderr)
        return exc.exit_code
    if record.fallback:
        print(fallback_notice(record), file=sys.stderr)
    print(summary(record))
    print(usage(record))
    return 0


def _labels(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"labels '{path}': cannot be read ({exc})") from None
    names = [n for n in names if n]
    if not names:
        raise BadInput(f"labels '{path}': expected one class name a line, found none")
    return names


def fallback_notice(record: api.PublishRecord) -> str:
    """What the fallback did, and what the server then needs."""
    reason = record.fallback.strip().splitlines()[0] if record.fallback.strip() else ""
    return (
        f"conveyor publish: {reason}\n"
        "conveyor publish: fallback python: published the native model as a Python model "
        f"({fallback.CODE_FILENAME} loading {fallback.JOBLIB_FILENAME}) instead of ONNX.\n"
        "conveyor publish: the server unpickles it: the modules its classes come from (custom "
        "transformers, say) must be importable in the server's environment (PYTHONPATH)."
    )


def summary(record: api.PublishRecord) -> str:
    p = record.parity
    return (
        f"published {record.model} version {record.version} ({record.kind}) to "
        f"{record.version_dir}\n"
        f"parity on {p.get('rows')} sample rows: max abs diff {p.get('max_abs_diff', 0):.3g}, "
        f"max rel diff {p.get('max_rel_diff', 0):.3g}, "
        f"label mismatches {p.get('label_mismatches', 0)}\n"
        f"model card: {record.paths.get('card')}\nrun record: {record.record_path}"
    )


def usage(record: api.PublishRecord) -> str:
    """A tritonclient snippet and a curl call for the new model, with the default ports."""
    name, inp, width = record.model, record.input_name, record.features
    outputs = ", ".join(repr(o) for o in record.outputs)
    row = ", ".join(["0.0"] * width)
    return f"""
Serve it:  conveyor serve --model-repository {shlex.quote(record.repository)}

Python (pip install "tritonclient[http]"):
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient("localhost:8000")
    rows = np.zeros((1, {width}), dtype=np.float32)  # your feature rows
    x = httpclient.InferInput({inp!r}, list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    result = client.infer({name!r}, [x])
    print({{name: result.as_numpy(name) for name in [{outputs}]}})

curl:
    curl -s localhost:8000/v2/models/{name}/infer -H 'Content-Type: application/json' \\
      -d '{{"inputs": [{{"name": "{inp}", "shape": [1, {width}], "datatype": "FP32", \\
      "data": [{row}]}}]}}'
"""
