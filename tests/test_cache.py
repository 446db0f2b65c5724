"""shiva_bids.cache: folders looked up in the work directory, then the user cache; built once,
published atomically, and copied so that a new work directory finds them."""
from __future__ import annotations

from pathlib import Path

import pytest

from shiva_bids import cache


def _builder(calls: list[Path], text: str = "x"):
    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "result.txt").write_text(text)
    return build


def test_built_once_then_found_in_the_user_cache_from_a_new_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "user"))
    calls: list[Path] = []
    first = cache.cached_folder("key1", cache.cache_roots(tmp_path / "work1"), _builder(calls))
    assert first == tmp_path / "work1" / "key1"
    assert (first / "result.txt").read_text() == "x"
    assert (tmp_path / "user" / "key1" / "result.txt").read_text() == "x"
    second = cache.cached_folder("key1", cache.cache_roots(tmp_path / "work2"),
                                 _builder(calls, "other"))
    assert len(calls) == 1  # not built again
    assert (second / "result.txt").read_text() == "x"
    assert second == tmp_path / "work2" / "key1"  # a copy beside the run's work files
    assert not [p for p in (tmp_path / "work1").iterdir() if p.name.startswith(".")]


def test_a_failed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, "none")

    def broken(tmp: Path) -> None:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        cache.cached_folder("key2", cache.cache_roots(tmp_path / "work"), broken)
    assert list((tmp_path / "work").iterdir()) == []
    calls: list[Path] = []
    cache.cached_folder("key2", cache.cache_roots(tmp_path / "work"), _builder(calls))
    assert len(calls) == 1


def test_unwritable_user_cache_means_work_dir_only(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocked / "cache"))
    assert cache.user_cache_dir() is None
    assert cache.cache_roots(tmp_path / "work") == (tmp_path / "work",)
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.user_cache_dir() == tmp_path / "xdg" / "shiva-bids"
