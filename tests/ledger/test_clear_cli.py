"""`spb-ledger clear FILE`: a book's lines on stdout, or one line and exit 1 for a bad book."""

from __future__ import annotations

import io
import json

import pytest

from ledger.cli import main
from tests.support.clearing import EXAMPLE_BOOK, EXAMPLE_LINES


def clear(capsys, monkeypatch, tmp_path, book: bytes, from_stdin: bool = False) -> tuple[int, str, str]:
    if from_stdin:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(book)))
        code = main(["clear", "-"])
    else:
        (tmp_path / "book.json").write_bytes(book)
        code = main(["clear", str(tmp_path / "book.json")])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("from_stdin", [False, True])
def test_clear_prints_the_products_then_the_fills(capsys, monkeypatch, tmp_path, from_stdin):
    code, out, err = clear(capsys, monkeypatch, tmp_path, json.dumps(EXAMPLE_BOOK).encode(), from_stdin)
    assert (code, out.splitlines(), err) == (0, EXAMPLE_LINES, "")


@pytest.mark.parametrize(
    "book, reason",
    [
        (
            json.dumps({"bids": [{"id": "01", "wh": True, "price": 1, "green": False}], "asks": []}),
            "bids[0]: bid 01: wh must be an integer > 0, not True",
        ),
        (
            json.dumps({**EXAMPLE_BOOK, "asks": [*EXAMPLE_BOOK["asks"], {**EXAMPLE_BOOK["asks"][0], "id": "01"}]}),
            "asks[3]: id 01 is also the id of bids[1]",
        ),
        ('{"bids": [], "asks": [', "not a JSON book: Expecting value: line 1 column 23 (char 22)"),
        ("[" * 100_000, "not a JSON book: maximum recursion depth exceeded"),  # the rest depends on the Python
        (b"\xff\xfe\xfd", "not a JSON book: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    ],
)
def test_a_bad_book_is_one_line_naming_the_command_and_exit_1(capsys, monkeypatch, tmp_path, book, reason):
    code, out, err = clear(capsys, monkeypatch, tmp_path, book if isinstance(book, bytes) else book.encode())
    assert (code, out) == (1, "") and err.startswith(f"spb-ledger clear: {reason}") and err.count("\n") == 1, err


def test_a_missing_file_is_one_line_too(capsys, tmp_path):
    assert main(["clear", str(tmp_path / "nothing.json")]) == 1
    assert capsys.readouterr() == ("", f"spb-ledger clear: {tmp_path / 'nothing.json'}: No such file or directory\n")
