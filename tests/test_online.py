"""An online user with no local data folder: every published file fetched by its pinned URL from a stand-in for GitHub.

The server on 127.0.0.1 lays the files out as ``/<repository>/<commit>/<source_path>``, GitHub's
raw-content layout, and ``KGL_SOURCE_URL`` points kgl at it; nothing else is given (kgl's readings
of the H&E screenshots, µm/px and overlays, ship in the package). The H&E screenshots are published
upstream with the viewer's overlays, which the offline data folder does not hold: the stand-in
serves the painted copies with black boxes drawn back into the overlay rectangles of the data
folder's ``mpp.json`` (not kgl's copy of them, so a wrong packaged rectangle fails the pixel check),
and their sha256 replaces the real one in the manifest for this test only.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading

import numpy as np
import pytest

import kgl
from kgl._cli import main
from kgl._settings import settings
from kgl.datasets import _fetch


@pytest.fixture
def github(shared_data, tmp_path, monkeypatch):
    """A raw-content host on 127.0.0.1 with every manifest file; kgl pointed at it and at an empty cache."""
    from PIL import Image

    root = tmp_path / "github"
    manifest = {}
    for name, rows in _fetch._manifest().items():
        if not (shared_data / name).is_dir():
            continue
        manifest[name] = []
        for row in rows:
            row = dict(row)
            manifest[name].append(row)
            dest = root / row["repository"] / row["commit"] / row["source_path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = shared_data / name / row["file"]
            if row["source_sha256"] == row["shared_sha256"]:
                shutil.copyfile(src, dest)
                continue
            meta = json.loads((shared_data / name / "mpp.json").read_text())
            arr = np.array(Image.open(src).convert("RGB"))
            for x0, y0, x1, y1 in meta[src.stem]["painted_white"]:
                arr[y0 : y1 + 1, x0 : x1 + 1] = 0  # the 'overlay' kgl must paint white again
            Image.fromarray(arr).save(dest, format="PNG")
            row["source_sha256"] = hashlib.sha256(dest.read_bytes()).hexdigest()
    monkeypatch.setattr(_fetch, "_manifest", lambda: manifest)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(settings, "source_url", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(settings, "data_url", None)
    monkeypatch.delenv("KGL_OFFLINE", raising=False)
    yield server
    server.shutdown()


def _report(out: str) -> list[str]:
    """The demo's numbers: metric rows, fraction errors and the object count (not timings or paths)."""
    keys = ("pas_tiles_visium ", "he_biopsy_visium ", "mean absolute error", "glomeruli outlined", "calls:",
            "ground truth:")  # fmt: skip
    return [line for line in out.splitlines() if line.startswith(keys) or any(k in line for k in keys[2:4])]


@pytest.mark.realdata
def test_demo_online_without_local_data_reports_what_the_local_folder_gives(
    github, shared_data, mobilenet_weights, tmp_path, monkeypatch, capsys
):
    # a model in the cache (the default's architecture at random init: the data path is under test, not the weights)
    from kgl.models import DEFAULT_MODEL, REGISTRY, build_segmenter, save_checkpoint

    entry = REGISTRY[DEFAULT_MODEL]
    net = build_segmenter(weights=None, mpp=entry.recipe["mpp"], input_size=entry.recipe["input_size"],
                          name=DEFAULT_MODEL)  # fmt: skip
    net.config["training"] = {"registry_recipe": json.loads(json.dumps(dict(entry.recipe)))}
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    save_checkpoint(net, tmp_path / "cache" / "models" / entry.filename)

    monkeypatch.setattr(settings, "datadir", shared_data)  # 1. the local folder
    assert main(["demo", "--out", str(tmp_path / "local"), "--quiet"]) == 0
    local = _report(capsys.readouterr().out)

    monkeypatch.setattr(settings, "datadir", tmp_path / "no-local-data")  # 2. online: no data folder
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "online"), "--quiet"]) == 0
    online = _report(capsys.readouterr().out)
    assert len(local) >= 6 and online == local
    data = tmp_path / "cache" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["glomeruli-he-biopsy", "glomeruli-pas-tiles"]
    assert not (data / "glomeruli-he-biopsy" / "mpp.json").exists()  # nothing but the published files
    # the overlays were painted white again: the H&E images kgl reads are the development data's pixels
    from PIL import Image

    for img in (shared_data / "glomeruli-he-biopsy" / "images").glob("*.png"):
        got = np.asarray(Image.open(data / "glomeruli-he-biopsy" / "images" / img.name).convert("RGB"))
        np.testing.assert_array_equal(got, np.asarray(Image.open(img).convert("RGB")))
    # and what `kgl train` reads comes the same way (the multistain set too)
    slides, _ = kgl.recipes.map_training_slides()
    assert slides["path"].str.startswith(str(data)).all() and slides["slide"].nunique() > 100
