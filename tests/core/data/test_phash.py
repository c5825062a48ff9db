"""The picture-signature cache: what it counts as still to decode."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import phash
from tests.helpers import write_pngs


def test_uncached_count_counts_distinct_pictures_without_a_signature_of_this_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    paths = write_pngs(tmp_path / "pics", 3)
    shas = [f"{i:064x}" for i in range(3)]
    assert phash.uncached_count([*shas, shas[0]]) == 3  # a repeated picture counts once
    phash.cached_signatures(paths[:2], shas[:2])  # decodes and stores two
    assert phash.uncached_count([*shas, shas[0], shas[1]]) == 1
    assert phash.uncached_count(shas[:2]) == 0 and phash.uncached_count([]) == 0
    # Signatures of another version do not count: ``cached_signatures`` would decode again.
    monkeypatch.setattr(phash, "SIGNATURE_VERSION", phash.SIGNATURE_VERSION + "-next")
    assert phash.uncached_count(shas) == 3
