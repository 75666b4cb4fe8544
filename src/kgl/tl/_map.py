"""The dense glomerulus map: one segmentation over the tissue, then per-spot fractions and calls.

:func:`predict_map` is the one inference loop over map tiles (:class:`kgl.im.MapTiles`): tiles
overlap by two halos and are blended with a ramp (:func:`kgl.im.blend_window`), so the map has no
seams. :func:`glomerulus_map` stores the map as an image of the sample (``uns["spatial"][lib]
["images"][key]``, uint8 probability × 255, with ``scalefactors[f"tissue_{key}_scalef"]``), and
:func:`kgl.tl.classify_spots` with a map model (``task="segment"``) reads per-spot fractions off it
through :class:`_MapRun`, which shares everything else of the patch classifier's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kgl._docs import d
from kgl._geometry import SPOT_DIAMETER_UM, SPOT_PITCH_UM, disk_means, disk_pixel_weights, square_means
from kgl._logging import logger, no_bar
from kgl._spatialdata import accepts_spatialdata
from kgl._types import Precision
from kgl._validators import check_int, check_key
from kgl.tl._classify import _prefetch, _Run

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["MapPrediction", "glomerulus_map", "predict_map", "spot_fractions"]

#: Fractions are clipped to ``[_EPS, 1 - _EPS]`` before their logit is calibrated.
_EPS = 1e-4


@dataclass
class MapPrediction:
    """A map over one image region (:class:`kgl.im.MapGrid`): glomerulus probability per map pixel.

    ``features`` (optional) are the encoder's deepest features blended the same way, one cell per
    32 map pixels, ``(C, ceil(rows / 32), ceil(cols / 32))``.
    """

    proba: np.ndarray
    grid: Any
    features: np.ndarray | None = None


def predict_map(
    model: Any,
    image: Any,
    grid: Any,
    *,
    tile_size: int = 512,
    halo: int = 64,
    batch_size: int = 4,
    device: Any,
    amp: Any,
    features: bool = False,
    use_dask: bool = False,
    show_progress: bool = False,
    desc: str = "map",
) -> MapPrediction:
    """Run a :class:`~kgl.models.GlomSegmenter` over every tile of ``grid`` and blend the tiles.

    ``device``/``amp`` as :func:`kgl.tl._device.resolve_device` / ``autocast_dtype`` give them. Tiles
    go through the model in runs of ``batch_size`` along each tile row (:meth:`kgl.im.MapTiles.runs`).
    Serially (default), the next run is read in a thread while the model works
    (:func:`kgl.tl._classify._prefetch`). With ``use_dask``, each run is one task of a Dask graph
    (:func:`_dask_map`) that the active scheduler computes (threads, or a ``dask.distributed``
    client); the tiles' blend is then :func:`kgl.im.blend_block` under ``map_overlap``. Both paths
    batch the same tiles and add the same numbers in the same order: their maps are equal.
    """
    import copy

    from kgl.im import MapTiles

    tiles = MapTiles(image, grid, size=tile_size, halo=halo)
    runs = tiles.runs(batch_size)
    model = copy.deepcopy(model).eval().to(device)  # the caller's model keeps its device and mode
    if use_dask:
        return _dask_map(model, tiles, runs, device=device, amp=amp, features=features, show_progress=show_progress)
    from tqdm.auto import tqdm

    from kgl.im import blend_window

    rows, cols = grid.shape
    acc = np.zeros((rows, cols), dtype=np.float32)
    wsum = np.zeros((rows, cols), dtype=np.float32)
    win = blend_window(tile_size, halo)
    fwin = win[16::32, 16::32]
    facc: np.ndarray | None = None
    fsum = np.zeros(((rows + 31) // 32, (cols + 31) // 32), dtype=np.float32)
    reads = ((run, np.stack([tiles[k][2] for k in run])) for run in runs)
    for run, x in tqdm(_prefetch(reads), total=len(runs), desc=desc, unit="batch", disable=no_bar(show_progress)):
        p, f = _forward(model, x, device=device, amp=amp, features=features)
        for b, k in enumerate(run):
            r, c = tiles.starts[k]
            _accumulate(acc, wsum, p[b] * win, win, r, c)
            if f is not None:
                if facc is None:
                    facc = np.zeros((f.shape[1], *fsum.shape), dtype=np.float32)
                _accumulate(facc, fsum, f[b] * fwin, fwin, r // 32, c // 32)
    np.divide(acc, np.maximum(wsum, 1e-12, out=wsum), out=acc)  # in place: a map is the largest array here
    if facc is not None:
        np.divide(facc, np.maximum(fsum, 1e-12, out=fsum), out=facc)
    return MapPrediction(acc, grid, facc)


def _forward(model: Any, x: np.ndarray, *, device: Any, amp: Any, features: bool) -> tuple[np.ndarray, Any]:
    """A forward pass of uint8 tiles ``(B, H, W, 3)``: probabilities ``(B, H, W)``, features ``(B, C, H/32, W/32)``."""
    import torch

    from kgl.tl._device import normalise_uint8, normaliser

    prep = model.spec.preprocessing
    mean, std = normaliser(prep, device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        x = normalise_uint8(torch.as_tensor(x).to(device), mean, std, greyscale=prep.greyscale)
        if features:
            logits, f = model.forward_with_features(x)
            f = f.float().cpu().numpy()
        else:
            logits, f = model(x), None
        return torch.sigmoid(logits.float())[:, 0].cpu().numpy(), f


def _dask_run(model: Any, tiles: Any, run: list[int], *, device: Any, amp: Any, features: bool) -> tuple[Any, Any]:
    """One Dask task: read a run of tiles, predict, and lay out ``(p·w, w)`` (and features) side by side."""
    from kgl.im import blend_window

    win = blend_window(tiles.size, tiles.halo)
    p, f = _forward(model, np.stack([tiles[k][2] for k in run]), device=device, amp=amp, features=features)
    return _side_by_side(p[:, None], win), None if f is None else _side_by_side(f, win[16::32, 16::32])


def _side_by_side(values: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Tiles ``(B, C, h, w)`` weighted by ``win`` ``(h, w)``, laid out along x, with the weights as a last channel.

    ``(C + 1, h, B·w)``: what :func:`kgl.im.blend_block` overlap-adds.
    """
    n, c, h, w = values.shape
    out = np.empty((c + 1, h, n * w), dtype=np.float32)
    out[:-1] = (values * win).transpose(1, 2, 0, 3).reshape(c, h, n * w)
    out[-1] = np.tile(win, (1, n))
    return out


def _shared(obj: Any) -> Any:
    """``obj`` as one node of a Dask graph: scattered to every worker once under a distributed client, else delayed."""
    import dask

    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):  # no distributed, or no client: the local schedulers share memory
        return dask.delayed(obj, pure=False)  # a random key: tokenising would pickle the model and the image
    return dask.delayed(client.scatter(obj, broadcast=True, hash=False))


def _dask_map(model: Any, tiles: Any, runs: list[list[int]], *, device: Any, amp: Any, features: bool,
              show_progress: bool) -> MapPrediction:  # fmt: skip
    """:func:`dask_map_arrays` computed with the active scheduler (:func:`dask.compute`)."""
    import dask

    proba, feats = dask_map_arrays(model, tiles, runs, device=device, amp=amp, features=features)
    if show_progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="map (dask)", disable=None):  # local schedulers; a distributed client has its own
            proba, feats = dask.compute(proba, feats)
    else:
        proba, feats = dask.compute(proba, feats)
    return MapPrediction(proba, tiles.grid, feats)


def dask_map_arrays(model: Any, tiles: Any, runs: list[list[int]], *, device: Any, amp: Any,
                    features: bool) -> tuple[Any, Any]:  # fmt: skip
    """The map (and features) as lazy Dask arrays: one task per run of tiles, then their overlap-add.

    The model and the tiles (with the image's picklable reader: a file-backed image travels as its
    path) enter the graph once each; a task reads its own tiles through
    :meth:`kgl.io.SlideImage.read_window`. The blend is :func:`kgl.im.blend_block` under
    :func:`dask.array.map_overlap` (depth = the halo, zeros beyond the outer tiles).
    """
    import dask
    import dask.array as da

    from kgl.im import blend_block

    size, halo = tiles.size, tiles.halo
    if size < 4 * halo:  # blend_block adds the 8 neighbours only: a core pixel must be within reach of no others
        raise ValueError(f"On Dask, tile_size ({size}) must be at least 4 × halo ({halo}); raise it or lower halo.")
    n_r = tiles.tile_shape[0]
    per_row = len(runs) // n_r
    model_d, tiles_d = _shared(model), _shared(tiles)
    n_feat = model.feature_channels if features else 0
    grid_p, grid_f = [], []
    for i in range(n_r):
        row_p, row_f = [], []
        for run in runs[i * per_row : (i + 1) * per_row]:
            task = dask.delayed(_dask_run, pure=False, nout=2)(model_d, tiles_d, run, device=device, amp=amp,
                                                               features=features)  # fmt: skip
            row_p.append(da.from_delayed(task[0], shape=(2, size, len(run) * size), dtype=np.float32))
            if features:
                row_f.append(da.from_delayed(task[1], shape=(n_feat + 1, size // 32, len(run) * size // 32),
                                             dtype=np.float32))  # fmt: skip
        grid_p.append(row_p)
        grid_f.append(row_f)
    rows, cols = tiles.grid.shape

    def blend(t: Any, s: int, h: int, keep: tuple[int, int]) -> Any:
        core = s - 2 * h
        out = da.map_overlap(
            lambda e: blend_block(e, size=s, halo=h, n_tiles=(e.shape[2] - 2 * h) // s),
            t, depth={0: 0, 1: h, 2: h}, boundary=0, trim=False, dtype=np.float32,
            chunks=(t.chunks[0][0] - 1, *(tuple(c // s * core for c in ax) for ax in t.chunks[1:])),
        )  # fmt: skip
        return out[:, : keep[0], : keep[1]]

    proba = blend(da.block(grid_p), size, halo, (rows, cols))[0]
    if not features:
        return proba, None
    return proba, blend(da.block(grid_f), size // 32, halo // 32, ((rows + 31) // 32, (cols + 31) // 32))


def _accumulate(acc: np.ndarray, wsum: np.ndarray, values: np.ndarray, weight: np.ndarray, r: int, c: int) -> None:
    """Add a weighted tile (its top-left at region pixel ``(r, c)``, maybe negative) into the canvases, clipped."""
    h, w = wsum.shape
    th, tw = weight.shape
    ra, rb, ca, cb = max(r, 0), min(r + th, h), max(c, 0), min(c + tw, w)
    if ra >= rb or ca >= cb:
        return
    acc[..., ra:rb, ca:cb] += values[..., ra - r : rb - r, ca - c : cb - c]
    wsum[ra:rb, ca:cb] += weight[ra - r : rb - r, ca - c : cb - c]


def spot_fractions(pred: MapPrediction, centers: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Each spot's glomerulus fraction: the map's exact mean over its 55-µm disk, and the disk's share on the map.

    ``centers`` are full-resolution ``(x, y)``, ``mpp`` µm per full-resolution pixel. The disk mean
    weights each map pixel by its area inside the disk (:func:`kgl._geometry.disk_means`): the
    geometry of :func:`kgl._geometry.spot_coverage`, which defines the ground truth. (spatialdata's
    ``aggregate`` takes image values by labels, not by shapes, so a vectorised disk mean it is.)
    """
    xy = pred.grid.to_map(centers)
    radius = SPOT_DIAMETER_UM / 2 / pred.grid.mpp
    return disk_means(pred.proba, xy, radius, pixel=1.0, origin=-0.5)


def bin_fractions(pred: MapPrediction, centers: np.ndarray, bin_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Each Visium HD bin's glomerulus fraction (the map's exact mean over its square) and its share on the map.

    :func:`kgl._geometry.square_means` (a summed-area table: four lookups per bin, so 2-µm squares
    cost what 16-µm bins do). ``spatialdata.aggregate`` would take the map by labels from
    ``rasterize_bins``, resampled to the bins' grid; the exact square mean needs neither.
    """
    return square_means(pred.proba, pred.grid.to_map(centers), bin_um / pred.grid.mpp, pixel=1.0, origin=-0.5)


def spot_features(pred: MapPrediction, centers: np.ndarray, window_um: float) -> np.ndarray:
    """Encoder features pooled over a disk of diameter ``window_um`` around each spot (area-weighted cells)."""
    feats = pred.features
    if feats is None:
        raise ValueError("The map was predicted without features (features=True).")
    xy = pred.grid.to_map(centers)
    radius = max(window_um / 2 / pred.grid.mpp, 16.0)  # at least half a feature cell
    c, h, w = feats.shape
    out = np.empty((len(xy), c), dtype=np.float32)
    for s in range(0, len(xy), 64):
        rows, cols, wt = disk_pixel_weights(xy[s : s + 64], radius, pixel=32.0, origin=-0.5)
        ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        wt = np.where(ok, wt, 0.0)
        wt /= np.maximum(wt.sum(axis=(1, 2), keepdims=True), 1e-12)
        cells = feats[:, np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]  # (C, n, k, k)
        out[s : s + 64] = np.einsum("cnij,nij->nc", cells, wt)
    return out


def fraction_logits(fraction: np.ndarray) -> np.ndarray:
    """Two-class logits ``(0, logit(f))`` of map fractions (clipped to ``[_EPS, 1 - _EPS]``): what calibration fits."""
    f = np.clip(np.asarray(fraction, dtype=np.float64), _EPS, 1 - _EPS)
    return np.column_stack((np.zeros(len(f)), np.log(f) - np.log1p(-f)))


def fraction_proba(fraction: np.ndarray, calibration: Any) -> np.ndarray:
    """Calibrated probability of a spot from its map fraction: ``sigmoid(logit(f) / T + b)`` (fitted on validation)."""
    from kgl.tl._calibration import calibrated_proba

    return calibrated_proba(fraction_logits(fraction), calibration.temperature, calibration.logit_bias)


def library_map(
    net: Any,
    spots: Any,
    *,
    tile_size: int = 512,
    halo: int = 64,
    batch_size: int = 4,
    device: Any,
    amp: Any,
    features: bool = False,
    use_dask: bool = False,
    show_progress: bool = False,
) -> MapPrediction:
    """The map of one library (:class:`kgl.im.SpotSet`) over its spots' bounding box plus one spot pitch."""
    from kgl.im import map_grid

    margin = (SPOT_PITCH_UM + SPOT_DIAMETER_UM / 2) / spots.mpp
    (x0, y0), (x1, y1) = spots.centers.min(axis=0) - margin, spots.centers.max(axis=0) + margin
    grid = map_grid(spots.image, image_mpp=spots.mpp, model_mpp=net.spec.mpp, bbox=(x0, y0, x1, y1))
    return predict_map(
        net,
        spots.image,
        grid,
        tile_size=tile_size,
        halo=halo,
        batch_size=batch_size,
        device=device,
        amp=amp,
        features=features,
        use_dask=use_dask,
        show_progress=show_progress,
        desc=f"map {spots.library_id}",
    )


class _MapRun(_Run):
    """:class:`kgl.tl._classify._Run` for a map model: per-spot fractions from the map instead of patches."""

    def __init__(self, net: Any, spec: Any, *, batch_size: int, device: Any, amp: Any, show_progress: bool,
                 tile_size: int = 512, halo: int = 64) -> None:  # fmt: skip
        from kgl.models import state_dict_sha256

        self.base, self.spec = net, spec
        self.patch_um, self.input_size = spec.preprocessing.patch_um, spec.preprocessing.input_size
        self.batch_size, self.num_workers, self.show_progress = batch_size, 0, show_progress
        self.device, self.amp = device, amp
        self.adapt_bn, self.stain_norm = False, None
        self.tile_size, self.halo = tile_size, halo
        self.model_sha256 = state_dict_sha256(net)
        self.folded = net

    def library(self, spots: Any, threshold_rule: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict]:
        """Calibrated probabilities, pooled features, in-image shares, params and ``{"fraction": ...}``."""
        from kgl.tl._classify import apply_threshold_rule

        pred = library_map(
            self.folded,
            spots,
            tile_size=self.tile_size,
            halo=self.halo,
            batch_size=max(1, self.batch_size // 16),  # a batch of spots ≈ 16 patches per tile
            device=self.device,
            amp=self.amp,
            features=spots.bin_um is None,  # an HD bin (2–16 µm) is smaller than one feature cell: no embedding
            show_progress=self.show_progress,
        )
        if spots.bin_um is None:
            frac, inside = spot_fractions(pred, spots.centers, spots.mpp)
            emb = spot_features(pred, spots.centers, self.spec.preprocessing.patch_um / 2)
        else:
            frac, inside = bin_fractions(pred, spots.centers, spots.bin_um)
            emb = None
        frac = np.nan_to_num(frac, nan=0.0)
        p = fraction_proba(frac, self.spec.calibration).astype(np.float32)
        info: dict[str, Any] = {}
        if threshold_rule is not None:
            p, thr, info = apply_threshold_rule(p, threshold_rule, self.spec)
            p = p.astype(np.float32)
            info["threshold"] = thr
        g = pred.grid
        info.update({
            "img_key": spots.img_key,
            **(spots.mpp_info.as_params() if spots.mpp_info is not None else {"mpp": spots.mpp}),
            "img_mpp": spots.image_mpp,
            "map_mpp": g.mpp,
            "map_level": g.level,
            "level_downsample": spots.image.levels[g.level].downsample,
            "n_spots": len(spots.index),
            **({} if spots.bin_um is None else {"bin_um": spots.bin_um}),
            "n_partly_outside": int((inside < 1.0 - 1e-6).sum()),
        })  # fmt: skip
        return p, emb, inside.astype(np.float32), info, {"fraction": frac.astype(np.float32)}

    def params(self, res: Any, **kwargs: Any) -> dict[str, Any]:
        """The patch run's params, plus the map's architecture, resolution and tiling."""
        out = super().params(res, **kwargs)
        out.update({"task": "segment", "arch": self.spec.arch, "map_mpp": self.spec.mpp, "tile_size": self.tile_size,
                    "halo": self.halo, "adapt_bn": False, "stain_norm": "none"})  # fmt: skip
        return out


@accepts_spatialdata("map")
@d.dedent
def glomerulus_map(
    adata: AnnData | SpatialData,
    model: Any = None,
    *,
    library_id: str | Sequence[str] | None = None,
    tile_size: int = 512,
    halo: int = 64,
    batch_size: int = 4,
    device: Any = "auto",
    precision: Precision = "auto",
    use_dask: bool = False,
    img_key: str | None = None,
    allow_upsampling: bool = False,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    table_name: str | None = None,
    key_added: str = "glomerulus",
    copy: bool = False,
    show_progress: bool = True,
) -> Any:
    """Segment glomeruli densely over the tissue under the spots: a probability map per library.

    The map model (``task="segment"``, e.g. ``"kgl-glom-map-v1"``) runs on overlapping tiles of the
    pyramid level nearest its µm/px, over the spots' bounding box plus one spot pitch (the image is
    never read whole), and the tiles are blended seamlessly.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` in the squidpy Visium layout, or a :class:`~spatialdata.SpatialData`
        (the map becomes an image element ``f"{region}_{key_added}"`` aligned with the tissue image).
    model
        A map model: registry name, checkpoint path or :class:`~kgl.models.GlomSegmenter`. Default:
        ``"kgl-glom-map-v1"``.
    %(library_ids)s
    tile_size, halo
        Tile side and overlap margin in map pixels (multiples of 32).
    batch_size
        Tiles per forward pass.
    device, precision
        As in :func:`kgl.tl.classify_spots`.
    use_dask
        Build the map as a Dask graph, one task per ``batch_size`` tiles, and compute it with the
        active scheduler: Dask's threads by default, or the workers of a :class:`dask.distributed.Client`
        when one is active. Each task reads its own tiles, so no image array enters the graph. The map
        equals the serial one exactly (same batches, same sums in the same order).
    %(img_key)s
    allow_upsampling
        As in :func:`kgl.tl.classify_spots`.
    %(spatial_key)s
    %(library_key)s
    %(table_name)s
    key_added
        The map goes to ``uns[spatial_key][lib]["images"][key_added]`` (``uint8``, probability ×
        255), its scale to ``scalefactors[f"tissue_{key_added}_scalef"]`` (map px per full-res px,
        so ``squidpy.pl.spatial_scatter(img_res_key=key_added)`` shows it) and its parameters to
        ``uns[f"{key_added}_map"]["params"]``.
    %(copy)s
    %(show_progress)s

    Returns
    -------
    ``None``, or the annotated copy when ``copy=True``. Everything is computed before anything is written.

    """
    from kgl.im import check_resolution, spot_sets
    from kgl.tl._device import autocast_dtype, resolve_device

    if table_name is not None:
        raise ValueError("table_name is only for a SpatialData object; adata is an AnnData.")
    check_int(batch_size, "batch_size")
    check_key(key_added)
    net = resolve_map_model(model)
    spec = net.spec
    dev = resolve_device(device)
    _check_map_key(adata, key_added, spatial_key)
    amp = autocast_dtype(dev, precision)
    sets = spot_sets(adata, library_id=library_id, img_key=img_key, spatial_key=spatial_key, library_key=library_key)
    check_resolution(sets, patch_um=spec.preprocessing.patch_um, size=spec.preprocessing.input_size,
                     allow_upsampling=allow_upsampling, trained_mpp=spec.coarsest_training_mpp)  # fmt: skip
    maps = {}
    for spots in sets:
        pred = library_map(net, spots, tile_size=tile_size, halo=halo, batch_size=batch_size, device=dev, amp=amp,
                           use_dask=use_dask, show_progress=show_progress)  # fmt: skip
        maps[spots.library_id] = (pred, spots)
    if copy:
        adata = adata.copy()
    from kgl import __version__
    from kgl.models import state_dict_sha256

    libraries = {}
    for lib, (pred, spots) in maps.items():
        image, g = _full_frame(pred), pred.grid
        meta = adata.uns[spatial_key][lib]
        meta.setdefault("images", {})[key_added] = image
        meta.setdefault("scalefactors", {})[f"tissue_{key_added}_scalef"] = 1.0 / g.downsample
        libraries[lib] = {"map_mpp": g.mpp, "downsample": g.downsample, "level": g.level, "img_key": spots.img_key,
                          "region": list(g.region), "shape": list(image.shape)}  # fmt: skip
    adata.uns[f"{key_added}_map"] = {
        "params": {
            "model": spec.name or spec.arch,
            "model_sha256": state_dict_sha256(net),
            "arch": spec.arch,
            "encoder": spec.backbone,
            "map_mpp": spec.mpp,
            "tile_size": tile_size,
            "halo": halo,
            "batch_size": batch_size,
            "use_dask": use_dask,
            "precision": "fp32" if amp is None else str(amp).replace("torch.", ""),
            "device": str(dev),
            "libraries": libraries,
            "kgl_version": __version__,
        }
    }
    return adata if copy else None


def _check_map_key(adata: Any, key_added: str, spatial_key: str) -> None:
    """Refuse a ``key_added`` that names an image kgl did not write (the tissue image itself, say)."""
    if f"{key_added}_map" in adata.uns:  # an earlier map under this key: overwritten
        return
    for lib, meta in (adata.uns.get(spatial_key) or {}).items():
        if key_added in (meta.get("images") or {}):
            raise ValueError(
                f"uns[{spatial_key!r}][{lib!r}]['images'] already holds an image {key_added!r} that is not a kgl map "
                f"(no uns[{key_added + '_map'!r}]); pass another key_added."
            )


def _full_frame(pred: MapPrediction) -> np.ndarray:
    """The region's map as ``uint8`` (probability × 255) in an image starting at the full-res origin (0 before)."""
    r0, r1, c0, c1 = pred.grid.region
    out = np.zeros((r1, c1), dtype=np.uint8)
    out[r0:r1, c0:c1] = np.clip(np.rint(pred.proba * 255.0), 0, 255).astype(np.uint8)
    return out


def resolve_map_model(model: Any) -> Any:
    """The :class:`~kgl.models.GlomSegmenter` of ``model`` (``None``: ``"kgl-glom-map-v1"``); refuses classifiers."""
    from kgl.models import resolve_model

    net = resolve_model("kgl-glom-map-v1" if model is None else model)
    if net.spec.task != "segment":
        raise ValueError(
            f"{net.spec.name or net.spec.backbone!r} is a patch classifier (task={net.spec.task!r}); a glomerulus map "
            "needs a map model (task='segment'), e.g. model='kgl-glom-map-v1' (`kgl train --name kgl-glom-map-v1`)."
        )
    logger.debug("map model %s (%s/%s) at %.3g µm/px", net.spec.name, net.spec.arch, net.spec.backbone, net.spec.mpp)
    return net
