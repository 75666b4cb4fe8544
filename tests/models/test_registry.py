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


def test_registry_default_is_an_alias_like_torchvision_weights(served, tmp_path, monkeypatch):
    """``REGISTRY["DEFAULT"]`` / ``REGISTRY.DEFAULT`` are the default model's entry, listed once by its name."""
    from kgl.models import DEFAULT_MODEL, available_models, fetch_model

    assert REGISTRY.DEFAULT is REGISTRY[DEFAULT_MODEL] is REGISTRY["DEFAULT"]
    assert "DEFAULT" in REGISTRY and "DEFAULT" not in available_models()
    assert REGISTRY.resolve("DEFAULT") == DEFAULT_MODEL
    with pytest.raises(KeyError, match="alias"):
        REGISTRY["DEFAULT"] = REGISTRY.DEFAULT
    with pytest.raises(KeyError, match=r"Registered: \[.*kgl-glom-v2"):
        fetch_model("no-such-model")
    # the alias resolves to the real entry's file: a cached default model is found through "DEFAULT"
    _, path, model = served
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / REGISTRY.DEFAULT.filename).write_bytes(path.read_bytes())
    assert fetch_model("DEFAULT") == tmp_path / "cache" / "models" / REGISTRY.DEFAULT.filename
    assert state_dict_sha256(resolve_model("DEFAULT")) == state_dict_sha256(model)


def test_a_cached_model_of_an_older_recipe_is_not_used_under_its_name(tmp_path, monkeypatch):
    # a kgl upgrade that changes a recipe: the model cached under the name was trained to the old one
    import dataclasses
    from types import MappingProxyType

    from _kgl_fixtures import red_fraction_segmenter
    from kgl.models import DEFAULT_MODEL, fetch_model

    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    entry = REGISTRY[DEFAULT_MODEL]
    net = red_fraction_segmenter()
    # trained with a run override (epochs=1) of the registered recipe: that is not a change of recipe
    net.config["training"] = {"recipe": {**entry.recipe, "epochs": 1}, "registry_recipe": dict(entry.recipe)}
    path = save_checkpoint(net, tmp_path / "cache" / "models" / entry.filename)
    assert fetch_model(DEFAULT_MODEL) == path
    newer = dataclasses.replace(entry, recipe=MappingProxyType({**entry.recipe, "mpp": 0.5}))
    monkeypatch.setitem(REGISTRY._entries, DEFAULT_MODEL, newer)
    with pytest.raises(FileNotFoundError, match=r"older recipe \(mpp 1.0 -> 0.5\).*kgl train --name kgl-glom-map-v1"):
        fetch_model("DEFAULT")
