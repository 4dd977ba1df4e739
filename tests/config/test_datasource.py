"""DataSource: inline, file, environment; read once at load time."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from pylon.config.datasource import DataSource, DataSourceError, read_bytes


def test_each_kind_reads_its_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "body.txt").write_bytes(b"from file")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYLON_DS_TEST", "from env")
    assert read_bytes(DataSource(filename="body.txt")) == b"from file"
    assert read_bytes(DataSource(filename=str(tmp_path / "body.txt"))) == b"from file"
    assert read_bytes(DataSource(inline_string="héllo")) == "héllo".encode()
    assert read_bytes(DataSource(inline_bytes=b"\x00\x01")) == b"\x00\x01"
    assert read_bytes(DataSource(environment_variable="PYLON_DS_TEST")) == b"from env"


def test_inline_bytes_are_base64_in_json() -> None:
    assert msgspec.convert({"inline_bytes": "AAE="}, DataSource).inline_bytes == b"\x00\x01"


def test_exactly_one_kind() -> None:
    with pytest.raises(ValueError, match="exactly one of filename, inline_bytes, inline_string, environment_variable must be set$"):
        DataSource()
    with pytest.raises(ValueError, match=r"\(got filename, inline_string\)"):
        DataSource(filename="a", inline_string="b")


def test_unreadable_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLON_DS_UNSET", raising=False)
    with pytest.raises(DataSourceError, match="environment variable PYLON_DS_UNSET is not set"):
        read_bytes(DataSource(environment_variable="PYLON_DS_UNSET"))
    with pytest.raises(DataSourceError, match=f"cannot read {tmp_path}: Is a directory"):
        read_bytes(DataSource(filename=str(tmp_path)))


def test_a_nul_in_a_filename_is_a_datasource_error() -> None:
    """open() raises ValueError, not OSError, for a NUL in the name; the config fuzzer reached it as a traceback."""
    with pytest.raises(DataSourceError, match="embedded null byte"):
        read_bytes(DataSource(filename="certs/a\x00b.pem"))
