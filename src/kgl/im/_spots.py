"""Patches of tissue around Visium spots, defined in µm."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kgl._docs import d
from kgl._geometry import SpotMpp
from kgl._logging import logger
from kgl._utils import _spatial_uns, library_mask, library_mpp, resolve_library_ids, scalefactors
from kgl._validators import check_int, check_patch_args, one_library
from kgl.io import SlideImage

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = [
    "SpotChunkDataset",
    "SpotPatchDataset",
    "SpotSet",
    "check_resolution",
    "spot_image",
    "spot_patches",
    "spot_sets",
]


@d.dedent
def spot_image(
    adata: AnnData, library_id: str | None = None, *, img_key: str | None = None, spatial_key: str = "spatial"
) -> tuple[SlideImage, str]:
    """The tissue image of a library as a lazy :class:`~kgl.io.SlideImage` in the full-res spot frame.

    Parameters
    ----------
    adata
        AnnData in the squidpy Visium layout.
    %(library_id)s
    %(img_key)s
    %(spatial_key)s

    Returns
    -------
    The image and the ``img_key`` used.

    """
    lib = one_library(adata, library_id, spatial_key=spatial_key)
    meta = _spatial_uns(adata, spatial_key)[lib]
    images = meta.get("images") or {}
    source = (meta.get("metadata") or {}).get("source_image_path")
    available = (["fullres"] if source else []) + list(images)
    if img_key is None:
        if not available:
            raise KeyError(
                f"Library {lib!r} has no tissue image: uns[{spatial_key!r}][{lib!r}]['images'] is empty and "
                "metadata has no 'source_image_path'. Read the folder with fullres_image_file= or add an image."
            )
        img_key = "fullres" if source else ("hires" if "hires" in images else next(iter(images)))
    if img_key == "fullres":
        if not source:
            raise KeyError(
                f"Library {lib!r} has no full-resolution image (metadata.source_image_path). Available: {available}."
            )
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"The full-resolution image of library {lib!r} is missing: {str(path)!r}. Fix "
                f"uns[{spatial_key!r}][{lib!r}]['metadata']['source_image_path'] or use img_key from {list(images)}."
            )
        img = SlideImage.open(path)
        img.name = f"{lib}/fullres ({path.name})"
        return img, img_key
    if img_key not in images:
        raise KeyError(f"Image {img_key!r} not found for library {lib!r}. Available: {available}.")
    if isinstance(images[img_key], SlideImage):  # already in the spot frame (SpatialData input)
        return images[img_key], img_key
    sf = scalefactors(adata, lib, spatial_key)
    factor = sf.get(f"tissue_{img_key}_scalef")
    if factor is None or not np.isfinite(factor) or factor <= 0:
        raise KeyError(
            f"scalefactors of library {lib!r} have no valid 'tissue_{img_key}_scalef' (got {factor!r}) to map "
            f"the {img_key!r} image to full-resolution coordinates."
        )
    img = SlideImage.from_array(images[img_key], downsample=1.0 / factor, name=f"{lib}/{img_key}")
    return img, img_key


@dataclass
class SpotSet:
    """The spots of one library with everything needed to cut their patches.

    Attributes
    ----------
    library_id
        Sample.
    index
        Positions of these spots in ``adata.obs`` (integers).
    centers
        ``(n, 2)`` spot centres, full-resolution ``x, y`` px.
    image
        The library's image.
    img_key
        Which image.
    mpp
        µm per full-resolution pixel (from the spot lattice, see :func:`kgl._utils.library_mpp`).
    mpp_info
        Where ``mpp`` came from and the values it was checked against.

    """

    library_id: str
    index: np.ndarray
    centers: np.ndarray
    image: SlideImage
    img_key: str
    mpp: float
    mpp_info: SpotMpp | None = None
    #: Visium HD: the side of the square bins in µm (``None``: Visium spots, 55-µm disks).
    bin_um: float | None = None

    @property
    def image_mpp(self) -> float:
        """µm per pixel of the finest level of the image (coarser than ``mpp`` for hires/lowres images)."""
        return self.mpp * self.image.levels[0].downsample

    def patch_size_px(self, patch_um: float) -> float:
        """Side of a ``patch_um`` patch in full-resolution pixels."""
        return patch_um / self.mpp


def spot_sets(
    adata: AnnData,
    *,
    library_id: str | Sequence[str] | None = None,
    img_key: str | None = None,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
) -> list[SpotSet]:
    """Resolve libraries, images, µm/px and spot centres; validates everything before any pixel is read."""
    all_libs = resolve_library_ids(adata, None, spatial_key=spatial_key)
    libs = resolve_library_ids(adata, library_id, spatial_key=spatial_key)
    if spatial_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{spatial_key!r}] not found (spot centres). Available: {list(adata.obsm.keys())}.")
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must be (n_spots, 2), got shape {coords.shape}.")
    if adata.n_obs == 0:
        raise ValueError("adata has no spots (n_obs == 0).")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()]
        raise ValueError(
            f"adata.obs_names has {len(dup)} duplicate barcodes (e.g. {dup[0]!r}): results could not be joined back "
            "to their spots. Call adata.obs_names_make_unique() first (or combine samples with "
            "anndata.concat(..., index_unique='-'))."
        )
    sets = []
    for lib in libs:
        mask = library_mask(adata, lib, all_libs, library_key)
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            raise ValueError(f"No spot of adata belongs to library {lib!r} (adata.obs[{library_key!r}]).")
        c = coords[idx, :2]
        bad = ~np.isfinite(c).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{bad.sum()} spots of library {lib!r} have non-finite coordinates in obsm[{spatial_key!r}] "
                f"(e.g. {adata.obs_names[idx[bad][0]]!r}); drop or fix them first."
            )
        image, key = spot_image(adata, lib, img_key=img_key, spatial_key=spatial_key)
        info = library_mpp(
            adata, lib, spatial_key=spatial_key, library_key=library_key, image_mpp=image.mpp, image_name=image.name
        )
        mpp = info.mpp
        h, w = image.shape
        off = (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] > w) | (c[:, 1] > h)
        if off.all():
            raise ValueError(
                f"All {len(c)} spots of library {lib!r} lie outside its {key!r} image ({w}x{h} full-res px): the "
                "scalefactors or coordinates do not belong to this image."
            )
        if off.mean() > 0.5:
            logger.warning(
                "%d of %d spots of library %r lie outside its %r image (%dx%d full-res px): check that the "
                "scalefactors (spot_diameter_fullres, tissue_<img_key>_scalef) and coordinates belong to this image.",
                int(off.sum()),
                len(c),
                lib,
                key,
                w,
                h,
            )
        bin_um = scalefactors(adata, lib, spatial_key).get("bin_size_um")
        sets.append(SpotSet(lib, idx, c, image, key, mpp, info, None if bin_um is None else float(bin_um)))
    return sets


def check_resolution(
    sets: Sequence[SpotSet],
    *,
    patch_um: float,
    size: int,
    allow_upsampling: bool = False,
    max_ratio: float = 2.0,
    trained_mpp: float | None = None,
) -> None:
    """Refuse images much coarser than a model needs, before any patch is read.

    A model that sees ``patch_um`` µm at ``size`` px needs ``patch_um / size`` µm/px. An image
    more than ``max_ratio`` times coarser would have every patch upsampled from a few pixels, and
    the calls would be confident and meaningless: a :class:`ValueError` names the image, both
    resolutions and the fixes. ``trained_mpp``, the coarsest µm/px the model was trained on
    (:attr:`kgl.models.ModelConfig.coarsest_training_mpp`), raises that limit: an image no coarser
    than the model's own training images is inside its training distribution, however many times
    its patches are upsampled. ``allow_upsampling=True`` only logs a warning.
    """
    need = float(patch_um) / int(size)
    limit = max(max_ratio * need, float(trained_mpp or 0.0))
    by_training = bool(trained_mpp) and limit == float(trained_mpp)  # the training images set the limit
    for spots in sets:
        have = spots.image_mpp
        if have <= limit:
            continue
        px = patch_um / have
        what = (
            f"The {spots.img_key!r} image of library {spots.library_id!r} has {have:.3g} µm/px, but the model needs "
            f"{need:.3g} µm/px ({patch_um:g}-µm patches at {size} px; it accepts up to {limit:.3g} µm/px"
            + (", the coarsest of its training images" if by_training else "")
            + f"): each patch would be {px:.0f} px wide, upsampled {size / px:.0f}× to {size} px"
        )
        if allow_upsampling:
            logger.warning("%s (allow_upsampling=True: classifying anyway).", what)
            continue
        raise ValueError(
            f"{what}, and the calls would be meaningless. Give kgl a finer image: the full-resolution image "
            "(kgl.io.read_visium(..., fullres_image_file='image.tif'), or `kgl classify --fullres-image`), a "
            f"SpatialData image at higher resolution, or a model trained for ~{have:.2g} µm/px. allow_upsampling=True "
            "(`kgl classify --allow-upsampling`) classifies anyway."
        )


class SpotPatchDataset:
    """Map-style dataset of spot patches (a :class:`torch.utils.data.DataLoader` accepts it as is).

    Item ``i`` is ``(patch, inside)``: a ``uint8`` RGB array ``(size, size, 3)`` of side ``patch_um`` µm
    centred on spot ``i`` and the fraction of that square inside the image; outside is padded with
    ``fill`` (white).
    """

    def __init__(self, spots: SpotSet, *, patch_um: float, size: int, fill: int = 255) -> None:
        check_patch_args(patch_um, size)
        self.spots = spots
        self.patch_um = float(patch_um)
        self.size = int(size)
        self.fill = fill
        self.size_px = spots.patch_size_px(patch_um)
        self.level = spots.image.select_level(self.size_px / self.size)

    def __len__(self) -> int:
        return len(self.spots.centers)

    def __getitem__(self, i: int) -> tuple[np.ndarray, float]:
        x, y = self.spots.centers[i]
        return self.spots.image.read_centered((x, y), self.size_px, self.size, level=self.level, fill=self.fill)

    def chunks(self, chunk_size: int) -> list[np.ndarray]:
        """Spatially compact groups of at most ``chunk_size`` spot positions.

        Spots are ordered along bands two patches high (serpentine), so each group's patches
        overlap and :meth:`read_chunk` decodes the image under them about once.
        """
        c = self.spots.centers
        band = np.floor(c[:, 1] / (2.0 * max(self.size_px, 1.0))).astype(np.int64)
        x = np.where(band % 2 == 0, c[:, 0], -c[:, 0])
        order = np.lexsort((x, band))
        return [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]

    def read_chunk(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patches ``(k, size, size, 3)`` and in-image fractions of the spots ``idx``, reading their region once."""
        return self.spots.image.read_regions(
            self.spots.centers[idx], self.size_px, self.size, level=self.level, fill=self.fill
        )


class SpotChunkDataset:
    """Map-style dataset of spatially compact chunks of spots (for ``DataLoader(batch_size=None)``).

    Item ``k`` is ``(spot positions, patches, inside)`` for chunk ``k`` of :meth:`SpotPatchDataset.chunks`.
    """

    def __init__(self, dataset: SpotPatchDataset, chunk_size: int) -> None:
        self.dataset = dataset
        self.chunks = dataset.chunks(chunk_size)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = self.chunks[k]
        patches, inside = self.dataset.read_chunk(idx)
        return idx, patches, inside


@d.dedent
def spot_patches(
    adata: AnnData,
    *,
    library_id: str | Sequence[str] | None = None,
    patch_um: float = 110.0,
    size: int = 224,
    batch_size: int = 64,
    img_key: str | None = None,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Iterate over batches of RGB patches centred on the spots.

    Parameters
    ----------
    adata
        AnnData in the squidpy Visium layout.
    %(library_ids)s
    patch_um
        Side of the square patch in µm (converted with the µm/px of the spot lattice).
    size
        Side of the returned patches in pixels (the model's input size).
    batch_size
        Patches per batch.
    %(img_key)s
    %(spatial_key)s
    %(library_key)s

    Yields
    ------
    ``(obs_index, patches, inside)``: integer positions into ``adata.obs``, ``uint8`` array
    ``(B, size, size, 3)`` and the fraction of each patch inside the image ``(B,)``.

    """
    check_int(batch_size, "batch_size")
    check_patch_args(patch_um, size)
    for spots in spot_sets(
        adata, library_id=library_id, img_key=img_key, spatial_key=spatial_key, library_key=library_key
    ):
        ds = SpotPatchDataset(spots, patch_um=patch_um, size=size)
        for start in range(0, len(ds), batch_size):
            idx = np.arange(start, min(start + batch_size, len(ds)))
            patches, inside = ds.read_chunk(idx)
            yield spots.index[idx], patches, inside
