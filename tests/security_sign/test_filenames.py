"""The one file-name rule (store/filenames.py), fed the same cases through every user of it: push validation,
the wire manifest a client receives, a stored manifest read back, the path join of every writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterfleet.common.errors import InvalidAdapter, UnsafeFileName
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.filenames import check_safe_file_name, check_safe_file_names, inside
from adapterfleet.store.manifest import FileEntry, Manifest
from adapterfleet.store.validation import check_file_name

SHA = "0" * 64
HOSTILE = ["../../X", "../X", "..", "/etc/x", "a/b", "a\\b", "x\x00y", ".hidden", "bad\nname.md", "C:evil.json",
           "é" * 130 + ".md", ""]
FINE = ["adapter_config.json", "adapter_model.safetensors", "README.md", "notes-v1.2.txt", "ü.md"]


def manifest_with(name: str) -> Manifest:
    return Manifest("acme/x", (FileEntry(name, 1, SHA),))


@pytest.mark.parametrize("name", HOSTILE)
def test_every_user_refuses_a_hostile_name(name, tmp_path):
    with pytest.raises(UnsafeFileName):
        check_safe_file_name(name)
    with pytest.raises(InvalidAdapter):  # push: UnsafeFileName is an InvalidAdapter (INVALID_ARGUMENT)
        check_file_name(name)
    with pytest.raises(UnsafeFileName):
        pc.manifest_from_pb(pc.manifest_to_pb(manifest_with(name)))
    record = json.loads(manifest_with("README.md").to_json())
    record["files"][0]["name"] = name
    with pytest.raises(UnsafeFileName):
        Manifest.from_json(json.dumps(record))
    with pytest.raises(UnsafeFileName):
        inside(tmp_path, name)


@pytest.mark.parametrize("name", FINE)
def test_plain_names_pass_everywhere(name, tmp_path):
    assert check_safe_file_name(name) == name
    assert inside(tmp_path, name) == tmp_path / name
    assert pc.manifest_from_pb(pc.manifest_to_pb(manifest_with(name))).files[0].name == name


def test_a_name_listed_twice_is_refused():
    with pytest.raises(UnsafeFileName, match="twice"):
        check_safe_file_names(["README.md", "README.md"])


def test_marker_names_are_only_a_hint(tmp_path):
    from adapterfleet.store.pull_dest import MARKER, read_marker

    (tmp_path / MARKER).write_text(json.dumps({"name": "acme/x", "files": ["README.md", "../../etc/passwd", "/x"]}))
    assert read_marker(tmp_path).files == ("README.md",)
    (tmp_path / MARKER).write_text("not json")
    assert read_marker(tmp_path) is None
    assert read_marker(Path(tmp_path / "missing")) is None


def test_signature_shape_checks():
    from adapterfleet.common.errors import InvalidArgument
    from adapterfleet.store.signatures import MAX_SIGNATURE_BYTES, coverage_problem, parse_bundle

    assert coverage_problem({"a": "1"}, {"a": "1"}) == ""
    assert coverage_problem({"a": "1", "b": "2"}, {"a": "3", "c": "4"}) == "not c; also b; other bytes of a"
    for bad in ["[]", "{", "x" * (MAX_SIGNATURE_BYTES + 1),
                json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"})]:
        with pytest.raises(InvalidArgument):
            parse_bundle(bad)
