import subprocess
import sys

import anndata as ad

from _kgl_fixtures import make_visium, plant_markers
from kgl._cli import main


def test_import_kgl_does_not_import_torch():
    code = (
        "import sys, kgl; kgl.io; kgl.im; kgl.tl; kgl.pl; kgl.datasets; kgl.models.REGISTRY; "
        "kgl.models.DEFAULT_MODEL; kgl.recipes.DEFAULT_RECIPE; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "kgl.models.GlomClassifier; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_classify_h5ad(tmp_path, capsys):
    adata = make_visium()
    plant_markers(adata, [7])
    inp = tmp_path / "in.h5ad"
    adata.write_h5ad(inp)
    from kgl.models import build_model, save_checkpoint

    ckpt = save_checkpoint(build_model("mobilenet_v2", weights=None, input_size=64), tmp_path / "m.pt")
    out = tmp_path / "out.h5ad"
    rc = main(
        ["classify", str(inp), "--out", str(out), "--model", str(ckpt), "--quiet", "--plot", str(tmp_path / "p.png")]
    )
    assert rc == 0
    res = ad.read_h5ad(out)
    assert res.obs["glomerulus"].notna().all() and res.obsm["X_glomerulus"].shape == (adata.n_obs, 1280)
    text = capsys.readouterr().out
    assert "spots classified: 33" in text and "written:" in text
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_classify_with_a_map_model(tmp_path, capsys):
    adata = make_visium()
    inp = tmp_path / "in.h5ad"
    adata.write_h5ad(inp)
    from kgl.models import build_segmenter, save_checkpoint

    model = build_segmenter("Unet", "resnet18", weights=None, mpp=2.0, input_size=64, head_trained=True)
    ckpt = save_checkpoint(model, tmp_path / "map.pt")
    out = tmp_path / "out.h5ad"
    assert main(["classify", str(inp), "--out", str(out), "--model", str(ckpt), "--quiet"]) == 0
    res = ad.read_h5ad(out)
    assert res.obs["glomerulus_fraction"].between(0, 1).all() and res.obsm["X_glomerulus"].shape == (adata.n_obs, 512)
    assert res.uns["glomerulus"]["params"]["task"] == "segment"
    assert "spots classified: 33" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    adata = make_visium()
    inp = tmp_path / "in.h5ad"
    adata.write_h5ad(inp)
    rc = main(["classify", str(inp), "--out", str(tmp_path / "o.h5ad"), "--model", "nonexistent_backbone"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("kgl: error: Unknown model 'nonexistent_backbone'")
    assert not (tmp_path / "o.h5ad").exists()


def test_cli_refuses_an_image_too_coarse_for_the_model(tmp_path, capsys):
    """A 10 µm/px image for a model that needs 110 µm / 32 px = 3.4 µm/px: one error line, exit 2, no output."""
    from kgl.models import build_model, save_checkpoint

    adata = make_visium(hires_scalef=0.05)  # full res 0.5 µm/px, hires 10 µm/px
    inp = tmp_path / "in.h5ad"
    adata.write_h5ad(inp)
    ckpt = save_checkpoint(build_model("mobilenet_v2", weights=None, input_size=32), tmp_path / "m.pt")
    out = tmp_path / "o.h5ad"
    rc = main(["classify", str(inp), "--out", str(out), "--model", str(ckpt), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("kgl: error: The 'hires' image of library 'lib' has 10 µm/px, but the model needs 3.44 µm/px")
    assert "--fullres-image" in err and "--allow-upsampling" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    rc = main(["classify", str(inp), "--out", str(out), "--model", str(ckpt), "--quiet", "--allow-upsampling"])
    assert rc == 0 and out.exists()


def test_no_test_reads_kgl_logs_through_plain_caplog():
    """The kgl logger does not propagate: plain caplog sees its records only on some pytest versions."""
    from pathlib import Path

    tests = Path(__file__).parent
    offenders = [
        f"{p.relative_to(tests)}:{i}"
        for p in sorted(tests.rglob("*.py"))
        if p.name not in ("conftest.py", "test_package.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "caplog" in line
    ]
    assert offenders == [], f"use the kgl_log fixture instead of caplog: {offenders}"


def test_packaging_one_version_license_and_types():
    from importlib.metadata import metadata, version
    from pathlib import Path

    import kgl

    assert kgl.__version__ == version("kgl-spatial")  # one source: pyproject.toml
    meta = metadata("kgl-spatial")
    assert meta["License-Expression"] == "BSD-3-Clause" and "LICENSE" in meta.get_all("License-File")
    root = Path(kgl.__file__).parent
    assert (root / "py.typed").is_file()
    assert "BSD 3-Clause" in (root.parents[1] / "LICENSE").read_text()
