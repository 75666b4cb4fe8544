import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from kgl.io import read_visium, write_tiff_pyramid


@pytest.fixture(scope="module")
def mouse_kidney():
    from kgl._settings import settings

    try:
        return settings.find_data("visium-mouse-kidney")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.realdata
def test_real_mouse_kidney_folder(mouse_kidney, kgl_log):
    adata = read_visium(mouse_kidney)
    assert "No count matrix" in kgl_log.text
    assert adata.n_obs == 1443 and adata.n_vars == 0
    assert list(adata.uns["spatial"]) == ["V1_Mouse_Kidney"]
    lib = adata.uns["spatial"]["V1_Mouse_Kidney"]
    assert lib["images"]["lowres"].shape == (600, 600, 3)
    sf = lib["scalefactors"]
    # Space Ranger: spot_diameter_fullres spans "a theoretical 65 µm spot"; 65/89.458 = 0.7266 µm/px, which
    # puts neighbouring spots 100 µm apart (with 55 µm they would be 84.8 µm apart)
    assert 65.0 / sf["spot_diameter_fullres"] == pytest.approx(0.7266, abs=0.001)
    assert (adata.obs["in_tissue"] == 1).all()
    # obsm["spatial"] is (x, y) = (pxl_col, pxl_row), as squidpy and scanpy store it
    pos = pd.read_csv(mouse_kidney / "spatial" / "tissue_positions.csv", index_col=0)
    np.testing.assert_array_equal(
        adata.obsm["spatial"][0], pos.loc[adata.obs_names[0], ["pxl_col_in_fullres", "pxl_row_in_fullres"]]
    )
    everything = read_visium(mouse_kidney, in_tissue_only=False)
    assert everything.n_obs == 4992


@pytest.mark.realdata
def test_positions_list_without_header(mouse_kidney, tmp_path):
    spatial = tmp_path / "outs" / "spatial"
    shutil.copytree(mouse_kidney / "spatial", spatial)
    pos = pd.read_csv(spatial / "tissue_positions.csv")
    (spatial / "tissue_positions.csv").unlink()
    pos.to_csv(spatial / "tissue_positions_list.csv", header=False, index=False)
    a = read_visium(tmp_path / "outs", library_id="x")
    b = read_visium(mouse_kidney)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert list(a.uns["spatial"]) == ["x"]
    # the spatial/ folder itself is accepted too
    assert read_visium(spatial).n_obs == 1443


def _write_visium(root, n=30, with_counts=True, barcodes_extra=0):
    spatial = root / "spatial"
    spatial.mkdir(parents=True)
    bcs = [f"AAAC{i:04d}-1" for i in range(n)]
    rows, cols = np.divmod(np.arange(n), 6)
    cols = cols * 2 + rows % 2
    pos = pd.DataFrame(
        {
            "barcode": bcs,
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": 100 + rows * 173,
            "pxl_col_in_fullres": 100 + cols * 100,
        }
    )
    pos.to_csv(spatial / "tissue_positions.csv", index=False)
    (spatial / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": 130.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1})
    )
    if with_counts:
        genes = ["Nphs1", "Podxl", "Umod"]
        m = sp.csc_matrix(np.arange(3 * (n + barcodes_extra)).reshape(3, -1) % 5, dtype=np.int32)
        with h5py.File(root / "filtered_feature_bc_matrix.h5", "w") as f:
            g = f.create_group("matrix")
            g["barcodes"] = np.array(bcs + [f"ZZZZ{i}-1" for i in range(barcodes_extra)], dtype="S")
            g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
            g["shape"] = np.array(m.shape)
            ft = g.create_group("features")
            ft["id"] = np.array([f"ENS{i}" for i in range(3)], dtype="S")
            ft["name"] = np.array(genes, dtype="S")
            ft["feature_type"] = np.array(["Gene Expression"] * 3, dtype="S")
            ft["genome"] = np.array(["mm10"] * 3, dtype="S")
            ft["_all_tag_keys"] = np.array(["genome"], dtype="S")
            f.attrs["library_ids"] = np.array(["sampleA"], dtype="S")
    return root


def test_counts_and_library_id_from_h5(tmp_path):
    root = _write_visium(tmp_path / "outs")
    adata = read_visium(root)
    assert adata.shape == (30, 3)
    assert list(adata.uns["spatial"]) == ["sampleA"]
    assert adata.var_names.tolist() == ["Nphs1", "Podxl", "Umod"]
    assert adata.obsm["spatial"][0].tolist() == [100.0, 100.0]


def test_counts_from_other_run_is_an_error(tmp_path):
    root = _write_visium(tmp_path / "outs", barcodes_extra=2)
    with pytest.raises(ValueError, match="not in the tissue positions"):
        read_visium(root)


def test_fullres_tiff_and_mpp_crosscheck(tmp_path, kgl_log):
    root = _write_visium(tmp_path / "outs", with_counts=False)
    img = np.full((1200, 1400, 3), 200, np.uint8)
    write_tiff_pyramid(root / "image.tif", img, mpp=0.5)  # agrees: 65 µm / 130 px
    adata = read_visium(root, fullres_image_file="image.tif")
    meta = adata.uns["spatial"][next(iter(adata.uns["spatial"]))]["metadata"]
    assert meta["source_image_path"].endswith("image.tif")
    assert "disagreement" not in kgl_log.text
    write_tiff_pyramid(root / "wrong.tif", img, mpp=0.8)
    read_visium(root, fullres_image_file=root / "wrong.tif")
    assert "disagreement" in kgl_log.text


def test_missing_folder_and_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_visium(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Space Ranger output folder"):
        read_visium(tmp_path / "empty")
    root = _write_visium(tmp_path / "outs", with_counts=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_visium(root, fullres_image_file="missing.tif")


def test_malformed_positions_and_scalefactors_name_the_file_and_place(tmp_path):
    root = _write_visium(tmp_path / "outs", with_counts=False)
    pos_file = root / "spatial" / "tissue_positions.csv"
    good = pos_file.read_text()
    pos = pd.read_csv(pos_file, dtype=str)
    pos.loc[4, "pxl_col_in_fullres"] = "def"
    pos.to_csv(pos_file, index=False)
    with pytest.raises(ValueError, match=r"tissue_positions\.csv' line 6 \(barcode 'AAAC0004-1'\): pxl_col_in_fullres"):
        read_visium(root)
    pos.loc[4, "pxl_col_in_fullres"] = ""
    pos.to_csv(pos_file, index=False)
    with pytest.raises(ValueError, match=r"pxl_col_in_fullres is empty"):
        read_visium(root)
    pos.loc[4, "pxl_col_in_fullres"] = "500"
    pos.loc[7, "array_row"] = "1.5"
    pos.to_csv(pos_file, index=False)
    with pytest.raises(ValueError, match=r"line 9 .*array_row is '1\.5', not an integer"):
        read_visium(root)
    pd.read_csv(pos_file).drop(columns="in_tissue").to_csv(pos_file, index=False)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['in_tissue'\]"):
        read_visium(root)
    pos_file.write_text(good)
    sf = root / "spatial" / "scalefactors_json.json"
    sf.write_text(json.dumps({"spot_diameter_fullres": 130.0, "tissue_lowres_scalef": None}))
    with pytest.raises(ValueError, match=r"scalefactors_json\.json': field 'tissue_lowres_scalef' is None"):
        read_visium(root)
    sf.write_text('{"spot_diameter_fullres": 130.0,')
    with pytest.raises(ValueError, match=r"scalefactors_json\.json' is not valid JSON"):
        read_visium(root)
