"""Image embeddings per spot from any backbone, for clustering beside the glomerulus calls."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kgl._docs import d
from kgl._spatialdata import accepts_spatialdata
from kgl._types import Precision
from kgl._validators import check_int, check_key, save_data

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["embed_spots"]


def _default_key(net: Any, model: Any) -> str:
    """``X_<name>``: the model's registry name or backbone, in characters safe for an obsm key."""
    name = net.spec.name or (model if isinstance(model, str) else None) or net.spec.backbone
    return "X_" + re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_")


@accepts_spatialdata("annotate")
@d.dedent
def embed_spots(
    adata: AnnData | SpatialData,
    model: Any,
    *,
    library_id: str | Sequence[str] | None = None,
    patch_um: float | None = None,
    input_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: Any = "auto",
    precision: Precision = "auto",
    img_key: str | None = None,
    allow_upsampling: bool = False,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    table_name: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
    show_progress: bool = True,
) -> Any:
    """One image embedding per spot from any backbone: ``obsm[key_added]``, for neighbours, clustering, UMAP.

    The engine of :func:`kgl.tl.classify_spots` (the same µm-sized patches, libraries, µm/px
    checks, batching, precision and SpatialData handling), keeping only the features: a
    torchvision or timm backbone's pooled features, a trained kgl classifier's, or a map model's
    encoder features pooled over each spot's window.

    Parameters
    ----------
    adata
        As in :func:`kgl.tl.classify_spots`.
    model
        A torchvision backbone name (``"resnet50"``, ``"mobilenet_v2:IMAGENET1K_V1"``), a timm model
        (``"timm:convnext_nano"``; pathology foundation models as ``"timm:hf-hub:<repo>"``, see
        docs/embeddings.md), a kgl checkpoint or registry name, or a :class:`~kgl.models.GlomClassifier`.
    %(library_ids)s
    patch_um, input_size
        Patch side in µm and px; the model's by default: a kgl model's recorded patch, the
        backbone's input size and 110 µm for a torchvision or timm backbone. For a pathology
        foundation model pass ``patch_um = input px × its µm/px`` (docs/embeddings.md).
    batch_size, num_workers, device, precision
        As in :func:`kgl.tl.classify_spots`.
    %(img_key)s
    allow_upsampling
        As in :func:`kgl.tl.classify_spots`.
    %(spatial_key)s
    %(library_key)s
    %(table_name)s
    key_added
        ``obsm`` key; ``f"X_{name}"`` of the model (registry name or backbone) by default. Its
        parameters go to ``uns[key_added]["params"]``.
    %(copy)s
    %(show_progress)s

    Returns
    -------
    ``None``, or the annotated copy when ``copy=True``. Spots of libraries not embedded get ``NaN``.

    """
    from kgl.models import resolve_model
    from kgl.tl._classify import make_run
    from kgl.tl._device import resolve_device

    check_int(batch_size, "batch_size")
    check_int(num_workers, "num_workers", minimum=0)
    if key_added is not None:
        check_key(key_added)
    resolve_device(device)  # a bad device fails before any model is loaded or downloaded, as in classify_spots
    net = resolve_model(model)
    key = key_added or _default_key(net, model)
    if key in (spatial_key, "spatial"):
        raise ValueError(f"key_added={key!r} would overwrite the spot coordinates / uns['spatial']; pass another.")
    run, sets = make_run(adata, net, library_id=library_id, patch_um=patch_um, input_size=input_size,
                         batch_size=batch_size, num_workers=num_workers, device=device, precision=precision,
                         adapt_bn=False, stain_norm=None, img_key=img_key, allow_upsampling=allow_upsampling,
                         spatial_key=spatial_key, library_key=library_key, show_progress=show_progress)  # fmt: skip
    if any(s.bin_um is not None for s in sets):
        raise ValueError("Visium HD bins have no embedding of their own (a bin is smaller than a feature cell).")
    res = run.classify(sets, n_obs=adata.n_obs, threshold=0.5, threshold_rule=None, key_added=key)
    params = run.params(res, threshold=0.5, threshold_rule=None, threshold_given=False, uncertain=None)
    params = {k: v for k, v in params.items() if "threshold" not in k and k != "uncertain"}
    params["dim"] = int(res.emb.shape[1])
    if copy:
        adata = adata.copy()
    save_data(adata, attr="obsm", key=key, data=np.asarray(res.emb, dtype=np.float32))
    adata.uns[key] = {"params": params}
    return adata if copy else None
