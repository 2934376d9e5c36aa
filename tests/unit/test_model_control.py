"""Model control: folder signatures, the version plan, per-version hot swap, the poller.

Everything runs in-process against tiny ONNX models under tmp_path; the poller is driven
by calling `poll()` directly, never by waiting for its interval.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import reload_plan, snapshot
from runtime.errors import NotFound, Unavailable
from runtime.loader import InstanceSettings
from runtime.poller import RepositoryPoller
from runtime.registry import READY, UNAVAILABLE, Registry
from runtime.reload_plan import VersionPlan
from runtime.snapshot import Snapshot, Source
from runtime.types import InferenceRequest, InputTensor
from tests import models

TIMEOUT_S = 30.0
PLUS_1 = models.GRAPHS["two_versions", 1]  # x + 1
PLUS_2 = models.GRAPHS["two_versions", 2]  # x + 2
PLUS_HALF = models.GRAPHS["queued_fp32", 1]  # x + 0.5
ALL_VERSIONS = "version_policy: { all {} }\n"


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one async test body under a deadline, so a hang fails instead of stalling."""

    async def bounded() -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await body()

    asyncio.run(bounded())


def publish(model_dir: Path, version: int, data: bytes) -> None:
    """Write a version as publishers should: a hidden temp folder, then one rename."""
    temp = model_dir / f".{version}.tmp"
    temp.mkdir(parents=True)
    (temp / "model.onnx").write_bytes(data)
    os.replace(temp, model_dir / str(version))


def graph(build: Callable[[], Any]) -> bytes:
    return bytes(build().SerializeToString())


def write_offset_model(root: Path, name: str, extra: str = "", versions: int = 1) -> Path:
    """An FP32 [batch, 4] model; version v is x + v."""
    model_dir = root / name
    io: list[models.Tensor] = [("INPUT0", "FP32", [4])]
    out: list[models.Tensor] = [("OUTPUT0", "FP32", [4])]
    models.write_config(model_dir, models.config_text(name, 8, io, out, extra))
    for version, build in list(enumerate((PLUS_1, PLUS_2), start=1))[:versions]:
        publish(model_dir, version, graph(build))
    return model_dir


def zeros_request() -> InferenceRequest:
    """One row of zeros for an FP32 [batch, 4] model."""
    data = np.zeros((1, 4), np.float32)
    return InferenceRequest("m", inputs={"INPUT0": InputTensor("INPUT0", "FP32", data)})


async def infer(registry: Registry, name: str, version: str = "") -> np.ndarray:
    """One row of zeros through the named model's batcher; the output row."""
    model = registry.get(name, version)
    future = model.batcher.submit(zeros_request())
    return (await future)["OUTPUT0"][0]


def with_registry(root: Path, body: Callable[[Registry], Awaitable[None]]) -> None:
    """Run body against a registry over root, closing every model afterwards."""

    async def main() -> None:
        registry = Registry([root], InstanceSettings(device="cpu"))
        try:
            await body(registry)
        finally:
            await registry.close()

    run(main)


# -- signatures ----------------------------------------------------------------------------


def test_signature_is_stable_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub" / "a.txt").write_text("a")
    first = snapshot.signature(tmp_path)
    assert first == snapshot.signature(tmp_path)
    assert [stamp[0] for stamp in first] == ["b.txt", os.path.join("sub", "a.txt")]


@pytest.mark.parametrize("change", ["size", "mtime", "add", "remove", "rename", "replace"])
def test_signature_sees_every_kind_of_change(tmp_path: Path, change: str) -> None:
    path = tmp_path / "deep" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"12345")
    before = snapshot.signature(tmp_path)
    if change == "size":
        path.write_bytes(b"123456")
    elif change == "mtime":
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "add":
        (tmp_path / "extra.bin").write_bytes(b"")
    elif change == "remove":
        path.unlink()
    elif change == "rename":
        path.rename(path.with_name("other.onnx"))
    else:  # same size, same name: a new file renamed over the old one (a new inode)
        temp = tmp_path / "new.onnx"
        temp.write_bytes(b"54321")
        os.utime(temp, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        os.replace(temp, path)
    assert snapshot.signature(tmp_path) != before


def test_a_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    """A link back up the tree must not send the scan thread round forever."""
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"x")
    (tmp_path / "1" / "again").symlink_to(tmp_path, target_is_directory=True)
    linked = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    linked.symlink_to(tmp_path / "1", target_is_directory=True)
    (tmp_path / "shared").symlink_to(linked, target_is_directory=True)
    names = [stamp[0] for stamp in snapshot.signature(tmp_path)]
    assert names.count("1/model.onnx") == 1
    assert len(names) == 1


def test_take_splits_model_files_from_versions_and_skips_hidden(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m", versions=2)
    (model_dir / "labels.txt").write_text("a\nb\n")
    (model_dir / "assets").mkdir()
    (model_dir / "assets" / "vocab.txt").write_text("x")
    (model_dir / ".3.tmp").mkdir()
    (model_dir / ".3.tmp" / "model.onnx").write_bytes(b"half written")
    (model_dir / "01").mkdir()  # not a version folder (leading zero), so model-level
    (model_dir / "01" / "x").write_text("x")
    taken = snapshot.take(model_dir)
    assert sorted(taken.versions) == [1, 2]
    assert [stamp[0] for stamp in taken.versions[1]] == ["model.onnx"]
    names = [stamp[0] for stamp in taken.files]
    assert names == sorted(
        ["config.pbtxt", "labels.txt", os.path.join("assets", "vocab.txt"), os.path.join("01", "x")]
    )


def test_take_a_published_version_leaves_the_others_as_they_were(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m")
    before = snapshot.take(model_dir)
    (model_dir / ".2.tmp").mkdir()
    (model_dir / ".2.tmp" / "model.onnx").write_bytes(graph(PLUS_2))
    assert snapshot.take(model_dir) == before  # the hidden temp folder is not there yet
    os.replace(model_dir / ".2.tmp", model_dir / "2")
    after = snapshot.take(model_dir)
    assert after.files == before.files
    assert after.versions[1] == before.versions[1]
    assert sorted(after.versions) == [1, 2]


def test_a_hidden_temp_file_counts_only_once_renamed_into_place(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m")
    before = snapshot.take(model_dir)
    temp = model_dir / "1" / ".model.onnx.tmp"
    temp.write_bytes(graph(PLUS_HALF))
    assert snapshot.take(model_dir) == before
    os.replace(temp, model_dir / "1" / "model.onnx")
    assert snapshot.take(model_dir).versions[1] != before.versions[1]


def test_take_sees_a_config_change_as_model_level(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m")
    before = snapshot.take(model_dir)
    with (model_dir / "config.pbtxt").open("a") as f:
        f.write("# edited\n")
    after = snapshot.take(model_dir)
    assert after.files != before.files
    assert after.versions == before.versions


def test_take_of_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        snapshot.take(tmp_path / "gone")


# -- the plan ------------------------------------------------------------------------------

SIG_A: snapshot.Signature = (("model.onnx", 1, 10, 100),)
SIG_B: snapshot.Signature = (("model.onnx", 2, 11, 101),)
CONFIG: snapshot.Signature = (("config.pbtxt", 1, 5, 7),)


def disk(**versions: snapshot.Signature) -> Snapshot:
    return Snapshot(CONFIG, {int(v[1:]): sig for v, sig in versions.items()})


def served(now: Snapshot, *versions: int) -> dict[int, Source]:
    return {v: now.source(v) for v in versions}


def test_plan_first_load_builds_everything() -> None:
    now = disk(v1=SIG_A, v2=SIG_A)
    assert reload_plan.plan([1, 2], {}, now) == VersionPlan(load=(1, 2))


def test_plan_nothing_changed_keeps_everything() -> None:
    now = disk(v1=SIG_A, v2=SIG_A)
    assert reload_plan.plan([1, 2], served(now, 1, 2), now) == VersionPlan(keep=(1, 2))


def test_plan_one_changed_version_reloads_only_it() -> None:
    before = disk(v1=SIG_A, v2=SIG_A)
    now = disk(v1=SIG_A, v2=SIG_B)
    assert reload_plan.plan([1, 2], served(before, 1, 2), now) == VersionPlan(
        load=(2,), keep=(1,), retire=(2,)
    )


def test_plan_model_level_change_reloads_all() -> None:
    before = disk(v1=SIG_A, v2=SIG_A)
    now = Snapshot((("config.pbtxt", 2, 6, 7),), before.versions)
    assert reload_plan.plan([1, 2], served(before, 1, 2), now) == VersionPlan(
        load=(1, 2), retire=(1, 2)
    )


def test_plan_a_new_config_override_reloads_all() -> None:
    now = disk(v1=SIG_A)
    assert reload_plan.plan([1], served(now, 1), now, override=b"max_batch_size: 2") == VersionPlan(
        load=(1,), retire=(1,)
    )


def test_plan_a_published_version_under_latest_one() -> None:
    before = disk(v1=SIG_A)
    now = disk(v1=SIG_A, v2=SIG_B)
    assert reload_plan.plan([2], served(before, 1), now) == VersionPlan(load=(2,), retire=(1,))


def test_plan_a_removed_version() -> None:
    before = disk(v1=SIG_A, v2=SIG_A)
    now = disk(v1=SIG_A)
    assert reload_plan.plan([1], served(before, 1, 2), now) == VersionPlan(keep=(1,), retire=(2,))


def test_plan_rebuilds_a_version_that_cannot_be_reused() -> None:
    now = disk(v1=SIG_A, v2=SIG_A)
    assert reload_plan.plan([1, 2], {1: now.source(1), 2: None}, now) == VersionPlan(
        load=(2,), keep=(1,), retire=(2,)
    )


def test_settle_without_failures_retires_the_plan() -> None:
    chosen = VersionPlan(load=(2,), keep=(), retire=(1,))
    assert reload_plan.settle(chosen, failed=(), on_disk=(1, 2)) == (1,)


def test_settle_keeps_the_previous_versions_while_a_new_one_failed() -> None:
    chosen = VersionPlan(load=(2,), keep=(), retire=(1,))
    assert reload_plan.settle(chosen, failed=(2,), on_disk=(1, 2)) == ()


def test_settle_keeps_a_version_whose_new_files_failed() -> None:
    chosen = VersionPlan(load=(1, 2), keep=(), retire=(1, 2))
    assert reload_plan.settle(chosen, failed=(2,), on_disk=(1, 2)) == (1,)


def test_settle_retires_a_removed_folder_whatever_failed() -> None:
    chosen = VersionPlan(load=(3,), keep=(1,), retire=(2,))
    assert reload_plan.settle(chosen, failed=(3,), on_disk=(1, 3)) == (2,)


# -- the registry's per-version swap -------------------------------------------------------


def test_reload_reuses_unchanged_versions(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m", ALL_VERSIONS, versions=2)

    async def body(registry: Registry) -> None:
        first = await registry.load("m")
        v1, v2 = first.versions[1], first.versions[2]
        np.testing.assert_array_equal(await infer(registry, "m", "1"), np.full(4, 1.0))
        assert (await registry.load("m")).versions == {1: v1, 2: v2}  # nothing changed

        shutil.rmtree(model_dir / "2")
        publish(model_dir, 2, graph(PLUS_HALF))
        entry = await registry.load("m")
        assert entry.versions[1] is v1
        assert entry.versions[2] is not v2
        assert v1.statistics.to_dict()["inference_count"] == 1  # the statistics carried over
        np.testing.assert_array_equal(await infer(registry, "m", "2"), np.full(4, 0.5))
        with pytest.raises(Unavailable, match="not accepting"):
            v2.batcher.submit(zeros_request())  # drained, closed

    with_registry(tmp_path, body)


def test_a_crashed_version_is_rebuilt_by_the_next_load(tmp_path: Path) -> None:
    write_offset_model(tmp_path, "m", ALL_VERSIONS, versions=2)

    async def body(registry: Registry) -> None:
        old = dict((await registry.load("m")).versions)
        old[2].batcher.failed = RuntimeError("the batch loop crashed")
        new = (await registry.load("m")).versions
        assert new[1] is old[1]
        assert new[2] is not old[2]
        assert new[2].ready

    with_registry(tmp_path, body)


def test_config_change_reloads_every_version(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m", ALL_VERSIONS, versions=2)

    async def body(registry: Registry) -> None:
        old = dict((await registry.load("m")).versions)
        with (model_dir / "config.pbtxt").open("a") as f:
            f.write("# touched\n")
        new = (await registry.load("m")).versions
        assert sorted(new) == [1, 2]
        assert all(new[v] is not old[v] for v in (1, 2))

    with_registry(tmp_path, body)


def test_a_broken_new_version_leaves_the_old_one_serving(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m")

    async def body(registry: Registry) -> None:
        v1 = (await registry.load("m")).versions[1]
        publish(model_dir, 2, b"not an onnx model")
        entry = await registry.load("m")
        assert entry.versions == {1: v1}
        assert entry.states[1] == (READY, "")
        state, reason = entry.states[2]
        assert state == UNAVAILABLE
        assert "ONNX Runtime cannot load" in reason
        assert entry.errors
        np.testing.assert_array_equal(await infer(registry, "m"), np.full(4, 1.0))

        # Fixed: version 2 takes over and version 1 leaves.
        (model_dir / "2" / "model.onnx").write_bytes(graph(PLUS_2))
        entry = await registry.load("m")
        assert sorted(entry.versions) == [2]
        assert entry.states[1] == (UNAVAILABLE, "unloaded")
        np.testing.assert_array_equal(await infer(registry, "m"), np.full(4, 2.0))

    with_registry(tmp_path, body)


def test_broken_new_files_of_a_served_version_keep_the_old_files(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m")

    async def body(registry: Registry) -> None:
        v1 = (await registry.load("m")).versions[1]
        (model_dir / "1" / "model.onnx").write_bytes(b"garbage, and longer than before " * 9)
        entry = await registry.load("m")
        assert entry.versions == {1: v1}
        state, reason = entry.states[1]
        assert state == READY
        assert "previous files" in reason
        np.testing.assert_array_equal(await infer(registry, "m"), np.full(4, 1.0))

    with_registry(tmp_path, body)


def test_a_broken_config_keeps_every_version_serving(tmp_path: Path) -> None:
    model_dir = write_offset_model(tmp_path, "m")

    async def body(registry: Registry) -> None:
        v1 = (await registry.load("m")).versions[1]
        (model_dir / "config.pbtxt").write_text("this is { not a config")
        entry = await registry.load("m")
        assert entry.versions == {1: v1}
        assert entry.errors
        np.testing.assert_array_equal(await infer(registry, "m"), np.full(4, 1.0))

    with_registry(tmp_path, body)


# -- the poller ----------------------------------------------------------------------------


def test_poll_follows_new_changed_and_removed_models(tmp_path: Path) -> None:
    write_offset_model(tmp_path, "a")

    async def body(registry: Registry) -> None:
        poller = RepositoryPoller(registry, interval_s=3600)
        await poller.poll()
        a = registry.get("a")
        await poller.poll()
        assert registry.get("a") is a  # nothing changed, nothing reloaded

        temp = tmp_path / "a" / ".2.tmp"  # a publisher midway: still nothing
        temp.mkdir()
        (temp / "model.onnx").write_bytes(graph(PLUS_2)[:20])
        await poller.poll()
        assert registry.get("a") is a

        model_b = write_offset_model(tmp_path, "b")
        (temp / "model.onnx").write_bytes(graph(PLUS_2))
        os.replace(temp, tmp_path / "a" / "2")
        await poller.poll()
        assert registry.get("a").version == "2"
        np.testing.assert_array_equal(await infer(registry, "b"), np.full(4, 1.0))

        shutil.rmtree(model_b)
        await poller.poll()
        with pytest.raises(NotFound):
            registry.get("b")
        assert registry.loaded_names() == ["a"]

    with_registry(tmp_path, body)


def test_poller_stops_promptly(tmp_path: Path) -> None:
    async def body(registry: Registry) -> None:
        poller = RepositoryPoller(registry, interval_s=3600)
        poller.start()
        await asyncio.sleep(0)
        await poller.stop()  # does not wait out the hour

    with_registry(tmp_path, body)
