"""The on-disk spool: order, bounds, restart, torn tails."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.storage import spool as spool_module
from hub.storage.spool import Spool


def _drain(spool: Spool) -> list[str]:
    out = []
    while (batch := spool.peek()) is not None:
        out.append(batch)
        spool.pop()
    return out


def test_batches_come_back_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    with Spool(tmp_path, 10_000) as first:
        for n in range(5):
            assert first.append(f"m v={n}i {n}")
        assert first.peek() == "m v=0i 0"
        first.pop()
    with Spool(tmp_path, 10_000) as again:
        assert again.records == 4
        assert _drain(again) == [f"m v={n}i {n}" for n in range(1, 5)]
        assert (again.records, again.bytes) == (0, 0)
    with Spool(tmp_path, 10_000) as last:
        assert last.peek() is None


def test_the_bound_refuses_and_frees_room_as_batches_replay(tmp_path: Path) -> None:
    with Spool(tmp_path, 100) as spool:
        assert spool.append("x" * 60)
        assert not spool.append("y" * 60)  # would exceed 100 bytes
        spool.peek()
        spool.pop()
        assert spool.append("y" * 60)
        assert _drain(spool) == ["y" * 60]


def test_a_torn_record_is_cut_off(tmp_path: Path) -> None:
    with Spool(tmp_path, 10_000) as spool:
        spool.append("good 1")
        spool.append("good 2")
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as out:
        out.write(b"\x00\x00\x01\x00garbage")  # a crash in the middle of an append
    with Spool(tmp_path, 10_000) as reopened:
        assert reopened.records == 2
        assert reopened.append("after")
        assert _drain(reopened) == ["good 1", "good 2", "after"]


def test_segments_rotate_and_replayed_ones_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 64)  # small segments for the test
    with Spool(tmp_path, 100_000) as spool:
        for n in range(20):
            spool.append(f"batch {n:02d} " + "z" * 20)
        assert len(list(tmp_path.glob("*.seg"))) > 3
        assert _drain(spool) == [f"batch {n:02d} " + "z" * 20 for n in range(20)]
        assert len(list(tmp_path.glob("*.seg"))) == 1
