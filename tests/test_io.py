"""Atomic writes: whole files or none, with the permissions an ordinary file would get."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from inat_keras import storage


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_get_the_mode_the_umask_gives_not_a_private_one(tmp_path: Path, monkeypatch, umask, mode) -> None:
    monkeypatch.setattr(storage, "current_umask", lambda: umask)
    storage.write_json(tmp_path / "metrics.json", {"test_accuracy": 0.5})
    storage.atomic_write(tmp_path / "best.keras", lambda tmp: tmp.write_bytes(b"PK"))  # as Keras saves: open(tmp, "wb")
    for name in ("metrics.json", "best.keras"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras", "metrics.json"]


def test_the_umask_is_read_without_changing_it() -> None:
    before = os.umask(0o022)
    os.umask(before)
    storage.current_umask.cache_clear()
    assert storage.current_umask() == before
    after = os.umask(before)
    assert after == before


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary_one(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        storage.atomic_write(tmp_path / "history.csv", fail)
    assert list(tmp_path.iterdir()) == []


def test_a_long_error_reason_is_cut_at_a_word_with_an_ellipsis() -> None:
    from inat_keras.errors import brief

    assert brief(ValueError("short\n  and   spaced")) == "short and spaced"
    long = ValueError("expected 1 variables, but received 2 variables " * 10)
    text = brief(long, limit=60)
    assert text.endswith(" …") and len(text) <= 62 and text[:-2] == text[:-2].rstrip()
    assert "variables, but received 2" in text and not text[:-2].endswith("variab")
    assert brief(KeyError()) == "KeyError"
