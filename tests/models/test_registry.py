import functools
import hashlib
import http.server
import threading

import pytest

from kgl._settings import settings
from kgl.models import REGISTRY, ModelEntry, build_model, resolve_model, save_checkpoint, state_dict_sha256


@pytest.fixture
def served(tmp_path):
    """A kgl checkpoint served over HTTP on 127.0.0.1 (the network users download from)."""
    root = tmp_path / "www"
    root.mkdir()
    model = build_model("mobilenet_v2", weights=None)
    save_checkpoint(model, root / "glom.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/glom.pt", root / "glom.pt", model
    finally:
        server.shutdown()


def test_registry_download_with_sha256(served, tmp_path, monkeypatch):
    url, path, model = served
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(REGISTRY, "test-glom", ModelEntry("test-glom", "test-glom.pt", url, sha))
    loaded = resolve_model("test-glom")
    assert state_dict_sha256(loaded) == state_dict_sha256(model)
    assert (tmp_path / "cache" / "models" / "test-glom.pt").exists()


def test_registry_bad_checksum_is_refused(served, tmp_path, monkeypatch):
    url, _, _ = served
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    monkeypatch.setitem(REGISTRY, "bad", ModelEntry("bad", "bad.pt", url, "0" * 64))
    with pytest.raises(ValueError, match=r"(?i)hash"):
        resolve_model("bad")
    assert not (tmp_path / "cache" / "models" / "bad.pt").exists()
