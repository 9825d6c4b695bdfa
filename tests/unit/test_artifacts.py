"""The file helpers every writer and JSONL reader of the core goes through: atomic files and directories,
JSONL lines located by number, JSON key order."""

import json

import pytest

from rlhf.core.artifacts import atomic_dir, atomic_file, iter_jsonl, read_jsonl, write_json, write_jsonl
from rlhf.core.errors import DataError


def test_jsonl_round_trip_and_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert path.read_bytes() == b'{"a": 1}\n{"b": "\\u00e9"}\n'
    write_jsonl(path, [{"b": "é"}], ensure_ascii=False)
    assert path.read_bytes() == '{"b": "é"}\n'.encode()
    path.write_text('{"a": 1}\n\n  \n[2]\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, [2])]
    assert read_jsonl(path) == [{"a": 1}, [2]]


def test_a_bad_line_is_raised_or_collected_with_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{not json\n"\xff"\n{"b": 2}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: not valid JSON") as info:
        read_jsonl(path)
    assert info.value.line == 2 and info.value.hint
    errors = []
    assert list(iter_jsonl(path, errors.append)) == [(1, {"a": 1}), (4, {"b": 2})]
    assert [(e.line, e.message.split(" (")[0]) for e in errors] == [(2, "not valid JSON"), (3, "not UTF-8 text")]


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"b": 1, "a": 2})
    assert list(json.loads(path.read_text())) == ["a", "b"]
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert json.loads(path.read_text()) == {"a": 2, "b": 1} and [p.name for p in path.parent.iterdir()] == ["out.json"]
    write_json(path, {"b": 1, "a": 2}, sort_keys=False)
    assert list(json.loads(path.read_text())) == ["b", "a"]


def test_atomic_dir_without_replace_keeps_the_first_copy(tmp_path):
    final = tmp_path / "cache"
    with atomic_dir(final, replace=False) as tmp:
        (tmp / "f").write_text("first")
    with pytest.raises(OSError), atomic_dir(final, replace=False) as tmp:
        (tmp / "f").write_text("second")
    assert (final / "f").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["cache"]
    with atomic_dir(final) as tmp:
        (tmp / "f").write_text("third")
    assert (final / "f").read_text() == "third"
