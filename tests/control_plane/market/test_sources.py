"""The real clients are registered as market sources and built from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.config import PlaneSettings
from control_plane.market.awattar import AwattarClient
from control_plane.market.entsoe import EntsoeClient
from control_plane.market.sources import SourceConfigError, build_sources

TOKEN = "x" * 36  # a fake token: the client is never asked to fetch here


async def test_entsoe_is_the_default_source_when_a_token_is_set(tmp_path: Path) -> None:
    assert build_sources(PlaneSettings(data_dir=tmp_path)) == []
    sources = build_sources(PlaneSettings(data_dir=tmp_path, entsoe_token=TOKEN))  # type: ignore[arg-type]
    assert [type(s) for s in sources] == [EntsoeClient]
    assert TOKEN not in repr(sources[0])
    for source in sources:
        await source.aclose()  # type: ignore[attr-defined]


async def test_named_sources_and_a_missing_token(tmp_path: Path) -> None:
    sources = build_sources(PlaneSettings(data_dir=tmp_path, market_sources=["awattar"]))
    assert [type(s) for s in sources] == [AwattarClient]
    await sources[0].aclose()  # type: ignore[attr-defined]
    with pytest.raises(SourceConfigError, match="ENTSOE_TOKEN is not set"):
        build_sources(PlaneSettings(data_dir=tmp_path, market_sources=["entsoe"]))
    with pytest.raises(SourceConfigError, match="available: awattar, entsoe"):
        build_sources(PlaneSettings(data_dir=tmp_path, market_sources=["nordpool"]))
