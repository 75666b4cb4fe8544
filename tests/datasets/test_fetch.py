"""Data sets: the local copy, else a sha256-checked pooch download (served here from 127.0.0.1)."""

from __future__ import annotations

import functools
import http.server
import logging
import shutil
import threading

import numpy as np
import pooch
import pytest

import kgl
from kgl._settings import settings
from kgl.datasets._fetch import _manifest, _paint_white, image_facts, source_url


@pytest.fixture
def serve():
    """Serve a folder over HTTP on 127.0.0.1 (an ephemeral port); stopped after the test."""
    servers = []

    def start(root):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a, **k: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()


@pytest.fixture
def pooch_records():
    """The records pooch's logger emits during the test (after its filters)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    pooch.get_logger().addHandler(handler)
    yield records
    pooch.get_logger().removeHandler(handler)


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """No local copy anywhere: the loaders must download into the (temporary) cache."""
    monkeypatch.setattr(settings, "datadir", tmp_path / "no-local-data")
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    monkeypatch.delenv("KGL_OFFLINE", raising=False)
    return tmp_path / "cache"


def test_manifest_pins_every_file_to_a_commit_and_checksum():
    man = _manifest()
    assert {"glomeruli-multistain", "glomeruli-pas-tiles", "glomeruli-he-biopsy"} <= set(man)
    assert len(man["glomeruli-multistain"]) == 106 and len(man["glomeruli-he-biopsy"]) == 18
    for rows in man.values():
        for r in rows:
            assert len(r["commit"]) == 40 and len(r["shared_sha256"]) == 64
    row = next(r for r in man["glomeruli-pas-tiles"] if r["file"] == "images/10003.png")
    assert source_url(row) == (
        "https://raw.githubusercontent.com/sarah-antillia/TensorFlow-FlexUNet-Tiled-Image-Segmentation-Glomeruli/"
        f"{row['commit']}/{row['source_path']}"
    )


@pytest.mark.realdata
def test_loaders_download_from_a_mirror_and_check_sha256(shared_data, serve, no_local_data, pooch_records, monkeypatch):
    url = serve(shared_data)
    monkeypatch.setattr(settings, "data_url", url)
    slides = kgl.datasets.he_biopsy_slides()  # not found locally: fetched from 127.0.0.1 into the cache
    assert len(slides) == 9 and sorted(slides["group"].unique()) == ["C002", "C004"]
    assert slides["n_glomeruli"].sum() == 13 and slides["path"].str.startswith(str(no_local_data)).all()
    import json

    local = json.loads((shared_data / "glomeruli-he-biopsy" / "mpp.json").read_text())
    assert slides.set_index("slide")["mpp"].to_dict() == {k: v["mpp"] for k, v in local.items()}
    assert not (no_local_data / "data" / "glomeruli-he-biopsy" / "mpp.json").exists()
    level = pooch.get_logger().level
    tiles = kgl.datasets.pas_tiles_slides()
    assert len(tiles) == 24 and tiles["path"].str.startswith(str(no_local_data)).all()
    # 66 downloads (18 + 48), not one pooch line each; its level left as it was
    assert pooch_records == [] and pooch.get_logger().level == level
    assert len(kgl.datasets.pas_tiles_slides()) == 24  # the cached files, sha256-checked again
    # a second call reuses the cache (the server is gone)
    monkeypatch.setattr(settings, "data_url", "http://127.0.0.1:9")
    assert len(kgl.datasets.he_biopsy_slides()) == 9


@pytest.mark.realdata
def test_a_tampered_download_is_refused_and_not_cached(shared_data, serve, no_local_data, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(shared_data / "glomeruli-he-biopsy", mirror / "glomeruli-he-biopsy")
    with open(mirror / "glomeruli-he-biopsy" / "annotations" / "C002_region1.geojson", "a") as f:
        f.write(" ")  # one byte more: another sha256
    monkeypatch.setattr(settings, "data_url", serve(mirror))
    with pytest.raises(FileNotFoundError, match=r"C002_region1\.geojson .*failed its sha256 hash check"):
        kgl.datasets.he_biopsy_slides()
    cached = no_local_data / "data" / "glomeruli-he-biopsy" / "annotations"
    assert not (cached / "C002_region1.geojson").exists()


def test_offline_says_where_it_looked(no_local_data, monkeypatch):
    monkeypatch.setenv("KGL_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"(?s)glomeruli-he-biopsy.*KGL_OFFLINE is set"):
        kgl.datasets.he_biopsy_slides()


@pytest.mark.realdata
def test_packaged_readings_are_the_development_datas(shared_data):
    """kgl's own readings (µm/px, size, overlays) say what the data folder's mpp.json says."""
    import json

    local = json.loads((shared_data / "glomeruli-he-biopsy" / "mpp.json").read_text())
    assert image_facts("glomeruli-he-biopsy") == local


def test_packaged_readings_cover_every_published_image():
    facts = image_facts("glomeruli-he-biopsy")
    images = {r["file"] for r in _manifest()["glomeruli-he-biopsy"] if r["file"].startswith("images/")}
    assert images == {f"images/{k}.png" for k in facts}
    assert all(0.3 < f["mpp"] < 2 and len(f["painted_white"]) == 3 for f in facts.values())
    with pytest.raises(KeyError, match=r"no image readings for data set 'nope'.*glomeruli-he-biopsy"):
        image_facts("nope")


def test_a_local_copy_that_disagrees_with_kgls_readings_is_refused(tmp_path, monkeypatch):
    import json

    root = tmp_path / "data" / "glomeruli-he-biopsy"
    root.mkdir(parents=True)
    facts = image_facts("glomeruli-he-biopsy")
    facts["C004_region3"]["mpp"] = 0.5
    (root / "mpp.json").write_text(json.dumps(facts))
    monkeypatch.setattr(settings, "datadir", tmp_path / "data")
    with pytest.raises(ValueError, match=r"C004_region3 has mpp 0\.5, kgl's reading is 0\.72464"):
        kgl.datasets.he_biopsy_slides()
    facts["C004_region3"]["mpp"] = 0.72464
    facts["C004_region3"]["painted_white"][0] = [0, 0, 10, 10]
    (root / "mpp.json").write_text(json.dumps(facts))
    with pytest.raises(ValueError, match=r"C004_region3's painted overlays \[\[0, 0, 10, 10\]"):
        kgl.datasets.he_biopsy_slides()
    (root / "mpp.json").write_text(json.dumps({k: v["mpp"] for k, v in facts.items()}))  # another layout
    with pytest.raises(ValueError, match=r"C002_region1 should have \['height', 'mpp', 'painted_white', 'width'\]"):
        kgl.datasets.he_biopsy_slides()
    del facts["C004_region3"]
    (root / "mpp.json").write_text(json.dumps(facts))
    with pytest.raises(ValueError, match="is not the published set"):
        kgl.datasets.he_biopsy_slides()


def test_source_url_replaces_the_raw_content_host(monkeypatch):
    row = _manifest()["glomeruli-pas-tiles"][0]
    monkeypatch.setattr(settings, "source_url", "http://127.0.0.1:8000/")
    assert source_url(row) == f"http://127.0.0.1:8000/{row['repository']}/{row['commit']}/{row['source_path']}"


def test_unreachable_mirror_is_a_clear_error(no_local_data, pooch_records, monkeypatch):
    monkeypatch.setattr(settings, "data_url", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(FileNotFoundError, match=r"Downloading it failed too: Could not download"):
        kgl.datasets.pas_tiles_slides()
    # pooch is quiet only inside kgl's data downloads: after a failed one, its lines pass again
    pooch.get_logger().info("a pooch line")
    assert [r.getMessage() for r in pooch_records] == ["a pooch line"]


def test_overlays_are_painted_white(tmp_path):
    from PIL import Image

    img = np.zeros((20, 30, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    _paint_white(tmp_path / "a.png", tmp_path / "b.png", [[2, 3, 5, 4]])  # PIL-inclusive corners
    out = np.asarray(Image.open(tmp_path / "b.png"))
    assert (out[3:5, 2:6] == 255).all() and out.sum() == 2 * 4 * 3 * 255
