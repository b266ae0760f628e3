from adapterfleet.store.refs import Ref
from tests.helpers.synthetic import write_adapter


def test_push_then_pull_round_trip_is_byte_identical(store, tmp_path):
    src = write_adapter(tmp_path / "a")
    client = store.client()
    out = client.push_dir(src, "demo")
    assert out.created and out.manifest.version == 1 and out.manifest.digest.startswith("sha256:")
    manifest = client.pull("demo@1", tmp_path / "pulled")
    assert manifest.digest == out.manifest.digest
    for f in src.iterdir():
        assert (tmp_path / "pulled" / f.name).read_bytes() == f.read_bytes()
    assert Ref.parse(str(manifest.key)).digest == manifest.digest
