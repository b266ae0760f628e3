"""`adapterfleet pull REF DIR` never deletes what is not the adapter's: an existing DIR that is not an earlier pull
of the same adapter is refused without --force (and kept as it was); with --force only the adapter's own files are
replaced; a re-pull of the same adapter updates it in place. Real store (Redis + moto S3), the CLI's main()."""

from __future__ import annotations

import json

import pytest

from adapterfleet.cli.main import main
from adapterfleet.common.errors import FailedPrecondition
from adapterfleet.store.pull_dest import MARKER
from tests.helpers.synthetic import write_adapter


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out if code == 0 else out.err)


@pytest.fixture
def pushed(store, tmp_path):
    client = store.client()
    client.push_dir(write_adapter(tmp_path / "v1", seed=1, readme="v1\n"), "acme/sum")
    v2 = write_adapter(tmp_path / "v2", seed=2, readme=None)
    (v2 / "notes.txt").write_text("v2 notes\n")
    client.push_dir(v2, "acme/sum")
    client.push_dir(write_adapter(tmp_path / "o", seed=3), "acme/other")
    return store.address


def contents(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_pull_into_unrelated_dir_is_refused_and_keeps_files(pushed, tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "adapter_config.json").write_text("my own config\n")
    (dest / "thesis.md").write_text("years of work\n")
    before = contents(dest)
    code, err = cli(capsys, "pull", "acme/sum@1", str(dest), "--store", pushed)
    assert code == 1 and err["error"]["code"] == "FAILED_PRECONDITION", err
    assert "--force" in err["error"]["message"] and MARKER in err["error"]["message"]
    assert contents(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "o", "v1", "v2"]  # no temp dir left


def test_force_replaces_only_the_adapters_files(pushed, tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "adapter_config.json").write_text("stale\n")
    (dest / "thesis.md").write_text("years of work\n")
    (dest / "sub").mkdir()
    (dest / "sub" / "keep.txt").write_text("kept\n")
    code, out = cli(capsys, "pull", "acme/sum@1", str(dest), "--store", pushed, "--force")
    assert code == 0, out
    assert (dest / "thesis.md").read_text() == "years of work\n" and (dest / "sub" / "keep.txt").exists()
    assert (dest / "adapter_config.json").read_bytes() == (tmp_path / "v1" / "adapter_config.json").read_bytes()
    assert (dest / "README.md").read_text() == "v1\n"
    assert json.loads((dest / MARKER).read_text())["key"] == out["key"]


def test_repull_of_the_same_adapter_updates_in_place(pushed, tmp_path, capsys):
    dest = tmp_path / "pulled"
    assert cli(capsys, "pull", "acme/sum@1", str(dest), "--store", pushed)[0] == 0
    assert sorted(contents(dest)) == sorted([MARKER, "README.md", "adapter_config.json", "adapter_model.safetensors"])
    (dest / "my-notes.txt").write_text("mine\n")  # the user's own file beside the pull
    code, out = cli(capsys, "pull", "acme/sum@2", str(dest), "--store", pushed)
    assert code == 0 and out["version"] == 2, out
    # v1's README.md is gone (v2 has none), v2's notes.txt is in, the user's file stays
    assert sorted(contents(dest)) == sorted([MARKER, "adapter_config.json", "adapter_model.safetensors",
                                             "notes.txt", "my-notes.txt"])
    assert (dest / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "v2" / "adapter_model.safetensors").read_bytes()
    # another adapter into the same directory: refused, and nothing changed
    before = contents(dest)
    code, err = cli(capsys, "pull", "acme/other@1", str(dest), "--store", pushed)
    assert code == 1 and "holds a pull of acme/sum" in err["error"]["message"], err
    assert contents(dest) == before


def test_pull_into_an_empty_dir_and_the_client_api(store, pushed, tmp_path):
    dest = tmp_path / "empty"
    dest.mkdir()
    client = store.client()
    m = client.pull("acme/sum@1", dest)
    assert (dest / MARKER).exists() and m.version == 1
    with pytest.raises(FailedPrecondition):
        client.pull("acme/other@1", dest)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        client.pull("acme/sum@1", tmp_path / "file")


def test_a_repull_refused_for_a_directory_in_the_way_changes_nothing(pushed, tmp_path, capsys):
    dest = tmp_path / "pulled"
    assert cli(capsys, "pull", "acme/sum@1", str(dest), "--store", pushed)[0] == 0
    (dest / "notes.txt").mkdir()  # where v2 has a file; it sorts after the files that would be replaced first
    files = lambda: {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    code, err = cli(capsys, "pull", "acme/sum@2", str(dest), "--store", pushed)
    assert code == 1 and "is a directory where the adapter has a file" in err["error"]["message"], err
    assert files() == before
    assert json.loads((dest / MARKER).read_text())["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "pulled", "v1", "v2"]  # no temp dir left
