"""pylon.filters.http.python, sans proxy: loading a script, and the headers a filter may not change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pylon.config.envoy import convert
from pylon.extensions.filters.http.python import PythonFilterConfig, ScriptError, _editable, _name, load_hooks
from pylon.proxy.headers import HeaderList


def script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "filter.py"
    path.write_text(text)
    return str(path)


def test_hooks_are_taken_from_the_module(tmp_path: Path) -> None:
    hooks = load_hooks(script(tmp_path, "def on_response(response):\n    pass\n"))
    assert hooks.on_request is None and hooks.on_response is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\n", "defines none of on_request(), on_request_body(), on_response(), on_response_body()"),
        ("on_request = 3\n", "defines none of"),
        ("def on_request(request)\n", "does not load: SyntaxError"),
        ("raise ImportError('no such thing')\n", "does not load: ImportError: no such thing"),
    ],
)
def test_a_script_that_cannot_serve_says_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(message)):
        load_hooks(script(tmp_path, text))


def test_a_missing_file_is_a_config_error_at_path(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot read"):
        convert({"path": str(tmp_path / "absent.py")}, PythonFilterConfig)


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host", "x-forwarded-for", "X-Envoy-Internal",
                                  "x-request-id", "connection"])
def test_the_connection_managers_own_headers_are_off_limits(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be changed by a filter"):
        _name(name)


def test_other_names_are_lower_cased() -> None:
    assert _name("X-Team") == b"x-team"


@pytest.mark.parametrize(("name", "value"), [("x-a", "b\r\nx-injected: 1"), ("x-a", "b\nc"), ("x-a", "b\x00"),
                                             ("x a", "b"), ("x-a:", "b")])
def test_a_header_the_wire_cannot_carry_is_refused_and_nothing_is_written(name: str, value: str) -> None:
    """A script copying a value into a header must not write headers of its (or the client's) making."""
    headers = HeaderList([(b"x-a", b"kept")])
    view = _editable(headers)
    for write in (view.set, view.add):
        with pytest.raises(ValueError, match="invalid header"):
            write(name, value)
    assert list(headers) == [(b"x-a", b"kept")]
