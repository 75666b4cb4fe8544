import numpy as np
import pytest

import kgl
from kgl._settings import settings


@pytest.mark.realdata
def test_default_recipe_quick_installs_where_classify_finds_it(shared_data, mobilenet_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="kgl train"):
        kgl.models.fetch_model("kgl-glom-v2")
    path = kgl.recipes.train_default_model(
        tmp_path / "work", max_patches_per_split=60, epochs=1, input_size=64, show_progress=False, device="cpu"
    )
    assert path == tmp_path / "cache" / "models" / "kgl-glom-v2.pt"
    assert path.with_suffix(".md").exists() and (tmp_path / "work" / "MODEL_CARD.md").exists()
    for png in ("curves.png", "roc_pr.png", "reliability_test.png", "confusion_test.png"):
        assert (tmp_path / "work" / png).stat().st_size > 1000
    cfg = kgl.models.load_checkpoint(path).config
    metrics = cfg["metrics"]
    assert {"val", "test (held-out biopsies, patches)", "pas_tiles_visium (other site, spots)"} <= set(metrics)
    test_groups = set(cfg["training_data"]["test_biopsies"])
    assert test_groups and not test_groups & set(cfg["training_data"].get("train_biopsies", []))
    # kgl-glom-v2's recipe trains on both H&E cases; a changed recipe does not claim the registered protocol
    assert cfg["training_data"]["he_biopsy"]["cases"] == ["C002", "C004"]
    assert cfg["training_data"]["he_biopsy"]["repeat"] == 3 and "protocol" not in cfg
    card = (tmp_path / "work" / "MODEL_CARD.md").read_text()
    assert "kgl-glom-v2" in card and "held-out biopsies" in card
    # classify_spots(adata, model=name) finds the installed model
    adata = kgl.datasets.pas_tiles_visium()[:40].copy()
    kgl.tl.classify_spots(adata, model="kgl-glom-v2", show_progress=False)
    assert adata.uns["glomerulus"]["params"]["model"] == "kgl-glom-v2"
    assert adata.uns["glomerulus"]["params"]["training_he_cases"] == ["C002", "C004"]
    assert adata.uns["glomerulus"]["params"]["head_trained"] is True
    assert np.isfinite(adata.obs["glomerulus_proba"]).all()


def test_each_registered_model_carries_its_recipe():
    from kgl.models import DEFAULT_MODEL, PATCH_MODEL, REGISTRY

    assert DEFAULT_MODEL == "kgl-glom-map-v1" and REGISTRY.DEFAULT.recipe["task"] == "segment"
    assert PATCH_MODEL == "kgl-glom-v2"
    assert kgl.recipes.DEFAULT_RECIPE == dict(REGISTRY[PATCH_MODEL].recipe)
    v1, v2 = REGISTRY["kgl-glom-v1"].recipe, REGISTRY["kgl-glom-v2"].recipe
    assert (v1["input_size"], v1["he_repeat"]) == (224, 0)  # the Masson/PASM/PAS-only model, as it was shipped
    assert (v2["input_size"], v2["he_repeat"]) == (112, 3)
    assert set(v1) == set(v2)
    for name in (PATCH_MODEL, DEFAULT_MODEL):  # the model cards' held-out evaluations of the recipes
        assert len(REGISTRY[name].protocol["seeds"]) >= 3
        for row in REGISTRY[name].protocol["results"].values():
            for mean, sd in row.values():
                assert 0 <= mean <= 1 and 0 <= sd < 0.5
    with pytest.raises(ValueError, match="is a map model"):
        kgl.recipes.train_default_model(name="DEFAULT")
    with pytest.raises(ValueError, match="is a patch classifier"):
        kgl.recipes.train_map_model(name="kgl-glom-v2")


@pytest.mark.realdata
def test_map_recipe_quick_installs_the_default_model(shared_data, mobilenet_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="kgl train --name kgl-glom-map-v1"):
        kgl.models.fetch_model("DEFAULT")
    path = kgl.recipes.train_model(None, tmp_path / "work", epochs=1, steps_per_epoch=2, batch_size=2,
                                   show_progress=False, device="cpu")  # fmt: skip
    assert path == tmp_path / "cache" / "models" / "kgl-glom-map-v1.pt"
    assert (tmp_path / "work" / "curves.png").stat().st_size > 1000
    card = (tmp_path / "work" / "MODEL_CARD.md").read_text()
    assert "Dense glomerulus map" in card and "kgl-glom-map-v1" in card
    cfg = kgl.models.load_checkpoint(path).config
    assert {"val (spots)", "pas_tiles_visium (other site, spots)"} <= set(cfg["metrics"])
    assert cfg["training_data"]["he_biopsy"]["cases"] == ["C002", "C004"] and "protocol" not in cfg
    with pytest.raises(TypeError, match="settings of the patch recipe"):
        kgl.recipes.train_model(None, tmp_path / "w2", max_patches_per_split=10)
    # classify_spots(adata) with no model= uses the installed default: the map
    adata = kgl.datasets.pas_tiles_visium()[:40].copy()
    kgl.tl.classify_spots(adata, show_progress=False)
    params = adata.uns["glomerulus"]["params"]
    assert params["model"] == "kgl-glom-map-v1" and params["task"] == "segment"
    assert adata.obs["glomerulus_fraction"].between(0, 1).all()


@pytest.mark.realdata
def test_default_recipe_without_the_he_set_says_how_to_train_without_it(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")

    def missing(*a, **k):
        raise FileNotFoundError("Could not find the data folder 'glomeruli-he-biopsy'.")

    monkeypatch.setattr(kgl.datasets, "he_biopsy_slides", missing)
    with pytest.raises(FileNotFoundError, match=r"(?s)trains on the H&E biopsy set.*kgl train --name kgl-glom-v1"):
        kgl.recipes.train_default_model(tmp_path / "work", max_patches_per_split=30, show_progress=False, device="cpu")
    assert not (tmp_path / "work").exists() and not (tmp_path / "cache" / "models").exists()  # nothing written
