import subprocess
import sys

import anndata as ad

from _kgl_fixtures import make_visium, plant_markers
from kgl._cli import main


def test_import_kgl_does_not_import_torch():
    code = (
        "import sys, kgl; kgl.io; kgl.im; kgl.tl; kgl.pl; kgl.datasets; "
        "assert 'torch' not in sys.modules, 'torch imported'"
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


def test_cli_errors_are_one_line(tmp_path, capsys):
    adata = make_visium()
    inp = tmp_path / "in.h5ad"
    adata.write_h5ad(inp)
    rc = main(["classify", str(inp), "--out", str(tmp_path / "o.h5ad"), "--model", "nonexistent_backbone"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("kgl: error: Unknown model 'nonexistent_backbone'")
    assert not (tmp_path / "o.h5ad").exists()
