"""Disk snapshots of the service's answers."""

from __future__ import annotations

from pathlib import Path

from legato.cli.snapshots import SnapshotDirectory


def test_a_saved_snapshot_loads_back_with_its_time(tmp_path: Path) -> None:
    snapshots = SnapshotDirectory(tmp_path / "cache", "http://127.0.0.1:8600")
    snapshots.save("workers", [{"id": "w1"}], 1_700_000_000.5)
    loaded = snapshots.load("workers")
    assert loaded is not None
    assert loaded.value == [{"id": "w1"}]
    assert loaded.fetched_at == 1_700_000_000.5
    assert loaded.base_url == "http://127.0.0.1:8600"


def test_two_services_never_share_a_snapshot(tmp_path: Path) -> None:
    staging = SnapshotDirectory(tmp_path, "http://staging:8600")
    production = SnapshotDirectory(tmp_path, "http://production:8600")
    staging.save("workers", ["staging"], 1.0)
    assert production.load("workers") is None
    assert staging.path("workers") != production.path("workers")


def test_a_missing_or_corrupt_snapshot_reads_as_none(tmp_path: Path) -> None:
    snapshots = SnapshotDirectory(tmp_path, "http://127.0.0.1:8600")
    assert snapshots.load("info") is None
    snapshots.path("info").write_text("{half a docu")
    assert snapshots.load("info") is None


def test_an_unwritable_directory_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    snapshots = SnapshotDirectory(blocker / "cache", "http://127.0.0.1:8600")
    snapshots.save("workers", [], 1.0)
    assert snapshots.load("workers") is None
