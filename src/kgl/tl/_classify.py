"""Classify Visium spots as glomerulus / other from the tissue image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._docs import d
from kgl._logging import logger, no_bar
from kgl._spatialdata import accepts_spatialdata
from kgl._types import Precision, StainNorm, ThresholdRule, options
from kgl._validators import check_int, check_key, check_patch_args, save_data

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["classify_spots"]

_COLORS = {"other": "#d9d9d9", "glomerulus": "#d62728"}
_THRESHOLD_RULES = options(ThresholdRule)


def _one_threshold(per_lib: dict[str, dict[str, Any]]) -> float:
    values = [v["threshold"] for v in per_lib.values()]
    return float(values[0]) if len(values) == 1 else float("nan")


def apply_threshold_rule(proba: np.ndarray, rule: str, spec: Any) -> tuple[np.ndarray, float, dict[str, Any]]:
    """``(probabilities, threshold, info)`` of one sample's calibrated probabilities under a threshold rule.

    ``"validation"``: the model's threshold; ``"expected-f1"``: :func:`kgl.tl.expected_f1_threshold`
    of the sample; ``"prior-shift"``: the probabilities re-estimated for the sample's prior
    (:func:`kgl.tl.prior_shift`, ``info`` holds ``prior`` and ``train_prior``), then expected-F1.
    """
    from kgl.tl._adapt import expected_f1_threshold, prior_shift

    if rule == "validation":
        return proba, spec.calibration.threshold, {}
    info: dict[str, Any] = {}
    if rule == "prior-shift":
        train_prior = validation_prior(spec)
        proba, prior = prior_shift(proba, train_prior)
        info = {"prior": prior, "train_prior": train_prior}
    elif rule != "expected-f1":
        raise ValueError(f"Unknown threshold rule {rule!r}; use 'validation' or one of {_THRESHOLD_RULES}.")
    return proba, expected_f1_threshold(proba), info


def validation_prior(spec: Any) -> float:
    """Share of glomerulus patches in a model's validation set: the prior its calibration was fitted under.

    ``spec`` is the model's :class:`kgl.models.ModelConfig`.
    """
    try:
        counts = spec.training["class_counts"]["val"]
        pos = float(counts[spec.positive_class])
        total = float(sum(counts.values()))
    except (KeyError, TypeError) as e:
        raise ValueError(
            "threshold='prior-shift' needs the validation class counts the model was calibrated on "
            "(config['training']['class_counts']['val']); this model has none. Use threshold='expected-f1'."
        ) from e
    if not 0 < pos < total:
        raise ValueError(f"The model's validation class counts {counts} do not give a prior in (0, 1).")
    return pos / total


def _prefetch(items: Any, depth: int = 2) -> Any:
    """Iterate ``items`` in a background thread (:mod:`concurrent.futures`), ``depth`` items ahead.

    Patch reading (tile decoding and resampling release the GIL) overlaps the model's forward pass
    without extra processes. One worker pulls the items in order; an error in it is raised here.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it, end = iter(items), object()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kgl-prefetch")
    try:
        pending = deque(pool.submit(next, it, end) for _ in range(depth))
        while (item := pending.popleft().result()) is not end:
            pending.append(pool.submit(next, it, end))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _predict(
    model: Any,
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int,
    device: Any,
    amp: Any,
    show_progress: bool,
    desc: str,
    transform: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the model over a patch dataset; returns probabilities, embeddings and in-image fractions.

    ``transform`` maps each uint8 batch ``(B, H, W, 3)`` before normalisation (stain normalisation).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from kgl.im import SpotChunkDataset
    from kgl.tl._calibration import calibrated_proba
    from kgl.tl._device import normalise_uint8, normaliser

    spec = model.spec  # the typed contract (kgl.models.ModelConfig); two classes are checked there
    mean, std = normaliser(spec.preprocessing, device)
    pos = spec.positive_index
    # calibration fitted on validation data (kgl.tl.train), applied by kgl.tl.calibrated_proba
    calib = spec.calibration
    greyscale = spec.preprocessing.greyscale
    # spatially compact chunks of spots: each chunk's image region is decoded once (kgl.im.SpotChunkDataset)
    chunks = SpotChunkDataset(dataset, batch_size)
    if num_workers > 0:
        loader: Any = DataLoader(
            chunks, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
        )
    else:
        loader = _prefetch(chunks[k] for k in range(len(chunks)))
    n = len(dataset)
    margin = np.empty(n, dtype=np.float32)
    inside = np.empty(n, dtype=np.float32)
    feats: np.ndarray | None = None
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for idx, x, f in tqdm(loader, total=len(chunks), desc=desc, unit="batch", disable=no_bar(show_progress)):
            x = torch.as_tensor(x)
            if transform is not None:
                x = transform(x)
            if device.type == "cuda" and num_workers == 0:
                x = x.pin_memory()
            x = normalise_uint8(x.to(device, non_blocking=True), mean, std, greyscale=greyscale)
            emb = model.forward_features(x)
            logits = model.head(emb)
            idx = np.asarray(idx)
            margin[idx] = (logits[:, pos].float() - logits[:, 1 - pos].float()).cpu().numpy()  # logit margin
            if feats is None:
                feats = np.empty((n, emb.shape[1]), dtype=np.float32)
            feats[idx] = emb.float().cpu().numpy()
            inside[idx] = np.asarray(f)
    # in float64 on the host: elementwise and exact whatever the batch layout (SIMD tails round differently);
    # the margin l_pos - l_neg is taken above, so as 2-class logits it is (0, margin)
    proba = calibrated_proba(
        np.column_stack((np.zeros(n), margin.astype(np.float64))), calib.temperature, calib.logit_bias
    )
    return (proba.astype(np.float32), feats, inside)


@accepts_spatialdata("annotate")
@d.dedent
def classify_spots(
    adata: AnnData | SpatialData,
    model: Any = None,
    *,
    library_id: str | Sequence[str] | None = None,
    patch_um: float | None = None,
    input_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: Any = "auto",
    precision: Precision = "auto",
    threshold: float | ThresholdRule | None = None,
    uncertain: tuple[float, float] | None = (0.2, 0.8),
    adapt_bn: bool = False,
    stain_norm: StainNorm | None = None,
    img_key: str | None = None,
    allow_upsampling: bool = False,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    table_name: str | None = None,
    key_added: str = "glomerulus",
    copy: bool = False,
    show_progress: bool = True,
) -> Any:
    """Call every spot glomerulus / other from the tissue image around it.

    A square patch of side ``patch_um`` µm centred on each spot is cut from the tissue image
    (lazily, from the highest-resolution image available), resampled to the model's input size
    and passed through the model in batches.

    Parameters
    ----------
    adata
        :class:`~anndata.AnnData` in the squidpy Visium layout (e.g. from :func:`kgl.io.read_visium`),
        or a :class:`~spatialdata.SpatialData` with an image element, circle shapes and a table.
    model
        A kgl checkpoint path, a registry name (:func:`kgl.models.available_models`), a torchvision
        backbone name with ImageNet weights (``"resnet50"``, ``"mobilenet_v2:IMAGENET1K_V1"``; untrained
        head), or a :class:`torch.nn.Module`. Default: :data:`kgl.models.DEFAULT_MODEL`.
    library_id
        Sample(s) to classify; all by default. Spots of other samples get missing values.
    patch_um
        Patch side in µm; the model's own (``model.spec.preprocessing.patch_um``) by default.
    input_size
        Model input side in pixels; the model's own by default.
    batch_size
        Patches per forward pass.
    num_workers
        :class:`~torch.utils.data.DataLoader` worker processes reading patches.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision
        ``"auto"`` (AMP on CUDA, bf16 autocast on CPUs with native bf16, else fp32), ``"fp32"``,
        ``"bf16"`` or ``"fp16"``.
    threshold
        Probability above which a spot is called ``glomerulus``: a number, ``None`` (the model's
        own, chosen on its validation set), ``"expected-f1"`` (per library, the threshold that
        maximises the F1 expected under the calibrated probabilities of that library's spots:
        :func:`kgl.tl.expected_f1_threshold`) or ``"prior-shift"`` (per library, the probabilities
        are first re-estimated for that library's glomerulus prior by EM, :func:`kgl.tl.prior_shift`,
        then thresholded as ``"expected-f1"``; ``obs[f"{key_added}_proba"]`` holds the adjusted values).
    uncertain
        Band of calibrated probabilities flagged in ``obs[f"{key_added}_uncertain"]``: calls worth a
        manual review (the threshold chosen on in-domain validation may move under a stain/site
        shift). ``None``: no flag.
    adapt_bn
        Test-time adaptation per library (AdaBN): re-estimate the BatchNorm statistics on that
        library's own patches before classifying it (:func:`kgl.tl.adapt_batchnorm`; one extra pass,
        no labels; the caller's model is not changed).
    stain_norm
        ``"macenko"``: per library, estimate the stains once on (up to 256 of) that library's own
        patches and map every patch onto a reference H&E (:class:`kgl.im.MacenkoNormalizer`, with
        torchstain) before classifying; applied before AdaBN when both are asked for. ``None``: the
        patches as they are (the default: see the comparison in docs/training.md).
    %(img_key)s
    allow_upsampling
        Classify even when the image is more than 2× coarser than the model needs
        (``patch_um / input_size`` µm/px) and coarser than the coarsest image the model was trained
        on (:attr:`~kgl.models.ModelConfig.coarsest_training_mpp`); by default that raises a
        :class:`ValueError`, because patches upsampled from a few pixels give confident, meaningless
        calls.
    %(spatial_key)s
    %(library_key)s
    %(table_name)s
    key_added
        Results go to ``obs[key_added]``, ``obs[f"{key_added}_proba"]``,
        ``obs[f"{key_added}_in_image"]``, ``obsm[f"X_{key_added}"]`` and ``uns[key_added]["params"]``.
    %(copy)s
    %(show_progress)s

    Returns
    -------
    ``None``, or the annotated copy when ``copy=True``. Written:

    - ``obs[key_added]``: categorical ``glomerulus`` / ``other``;
    - ``obs[f"{key_added}_proba"]``: probability of ``glomerulus``;
    - ``obs[f"{key_added}_uncertain"]``: probability inside ``uncertain``;
    - ``obs[f"{key_added}_in_image"]``: fraction of the patch inside the image (patches leaving the
      image are padded with white, never cropped or dropped);
    - ``obsm[f"X_{key_added}"]``: the backbone's pooled features (2048-d for ResNet50);
    - ``uns[key_added]["params"]``: model name and sha256, patch_um, µm/px, threshold, device, ...

    Everything is computed before anything is written: on error ``adata`` is unchanged.

    """
    from kgl.models import resolve_model
    from kgl.tl._device import resolve_device

    check_int(batch_size, "batch_size")
    check_int(num_workers, "num_workers", minimum=0)
    check_key(key_added)
    if uncertain is not None and not (len(uncertain) == 2 and 0.0 <= uncertain[0] <= uncertain[1] <= 1.0):
        raise ValueError(f"uncertain must be a (low, high) band inside [0, 1], got {uncertain!r}.")
    resolve_device(device)  # a bad device fails before any model is loaded or downloaded
    net = resolve_model(model)
    threshold_given = threshold is not None
    threshold, threshold_rule = _check_threshold(threshold, net.spec)
    _check_stain_norm(stain_norm)
    run, sets = make_run(adata, net, library_id=library_id, patch_um=patch_um, input_size=input_size,
                         batch_size=batch_size, num_workers=num_workers, device=device, precision=precision,
                         adapt_bn=adapt_bn, stain_norm=stain_norm, img_key=img_key, allow_upsampling=allow_upsampling,
                         spatial_key=spatial_key, library_key=library_key, show_progress=show_progress)  # fmt: skip
    spec = run.spec
    res = run.classify(sets, n_obs=adata.n_obs, threshold=threshold, threshold_rule=threshold_rule, key_added=key_added)
    params = run.params(res, threshold=threshold, threshold_rule=threshold_rule, threshold_given=threshold_given,
                        uncertain=uncertain)  # fmt: skip
    if copy:  # nothing above touched adata
        adata = adata.copy()
    _write(adata, res, spec, params, key_added=key_added, uncertain=uncertain)
    return adata if copy else None


def make_run(
    adata: Any,
    net: Any,
    *,
    library_id: Any,
    patch_um: float | None,
    input_size: int | None,
    batch_size: int,
    num_workers: int,
    device: Any,
    precision: Any,
    adapt_bn: bool,
    stain_norm: Any,
    img_key: str | None,
    allow_upsampling: bool,
    spatial_key: str,
    library_key: str,
    show_progress: bool,
) -> tuple[_Run, list[Any]]:
    """The one engine behind :func:`classify_spots` and :func:`kgl.tl.embed_spots`: a run and its spot sets.

    Resolves the device and precision, the patch size in µm and px (the model's unless given), the
    libraries, images and µm/px, and checks the resolution, all before any pixel is read; a map model
    gets a :class:`kgl.tl._map._MapRun`, a classifier a :class:`_Run`.
    """
    from kgl.im import check_resolution, spot_sets
    from kgl.tl._device import autocast_dtype, resolve_device

    dev = resolve_device(device)
    amp = autocast_dtype(dev, precision)
    spec = net.spec
    patch_um = float(spec.preprocessing.patch_um if patch_um is None else patch_um)
    input_size = int(spec.preprocessing.input_size if input_size is None else input_size)
    check_patch_args(patch_um, input_size)
    sets = spot_sets(adata, library_id=library_id, img_key=img_key, spatial_key=spatial_key, library_key=library_key)
    check_resolution(sets, patch_um=patch_um, size=input_size, allow_upsampling=allow_upsampling,
                     trained_mpp=spec.coarsest_training_mpp)  # fmt: skip
    hd = [s for s in sets if s.bin_um is not None]
    if hd and spec.task != "segment":
        raise ValueError(
            f"Library {hd[0].library_id!r} holds Visium HD bins ({hd[0].bin_um:g} µm): a patch classifier such as "
            f"{spec.name or spec.backbone!r} sees a {patch_um:g}-µm patch per bin, which says nothing about the bin "
            "itself. Use a map model (model='kgl-glom-map-v1'): each bin gets the map's mean over its square."
        )
    if spec.task == "segment":  # a dense map: per-spot fractions, the rest of the contract unchanged
        from kgl.tl._map import _MapRun

        _check_map_args(spec, adapt_bn=adapt_bn, stain_norm=stain_norm, patch_um=patch_um, input_size=input_size)
        return _MapRun(net, spec, batch_size=batch_size, device=dev, amp=amp, show_progress=show_progress), sets
    run = _Run(net, spec, patch_um=patch_um, input_size=input_size, batch_size=batch_size, num_workers=num_workers,
               device=dev, amp=amp, adapt_bn=adapt_bn, stain_norm=stain_norm, show_progress=show_progress)  # fmt: skip
    return run, sets


def _check_threshold(threshold: Any, spec: Any) -> tuple[float, str | None]:
    """``(threshold, rule)``: the number recorded and the per-sample rule (``None``: one fixed threshold)."""
    if isinstance(threshold, str):
        if threshold not in _THRESHOLD_RULES:
            raise ValueError(f"threshold must be a number, None or one of {_THRESHOLD_RULES}, got {threshold!r}.")
        if threshold == "prior-shift":
            validation_prior(spec)  # fails before any patch is read when the model lacks the counts
        return spec.calibration.threshold, threshold  # recorded; each library gets its own
    value = float(spec.calibration.threshold if threshold is None else threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {value!r}.")
    return value, None


def _check_map_args(spec: Any, *, adapt_bn: bool, stain_norm: Any, patch_um: float, input_size: int) -> None:
    """Refuse the patch-only options for a map model, before any pixel is read."""
    if adapt_bn or stain_norm is not None:
        raise ValueError(
            f"adapt_bn / stain_norm are patch-classifier options; {spec.name or spec.arch!r} is a map model "
            "(task='segment'). Call classify_spots without them, or pass a patch classifier such as 'kgl-glom-v2'."
        )
    if abs(patch_um / input_size - spec.mpp) > 1e-6 * spec.mpp:
        raise ValueError(
            f"A map model reads the image at its own {spec.mpp:.3g} µm/px; patch_um={patch_um:g} / input_size="
            f"{input_size} asks for {patch_um / input_size:.3g}. Leave patch_um and input_size unset."
        )


def _check_stain_norm(stain_norm: Any) -> None:
    from kgl.im import STAIN_NORMS

    if stain_norm is not None and stain_norm not in STAIN_NORMS:
        raise ValueError(f"stain_norm must be None or one of {STAIN_NORMS}, got {stain_norm!r}.")


@dataclass
class _Result:
    """Everything a classification computed, before anything is written."""

    proba: np.ndarray
    thresholds: np.ndarray
    inside: np.ndarray
    emb: np.ndarray | None
    per_lib: dict[str, dict[str, Any]]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more obs columns: suffix -> per-spot values


class _Run:
    """One classification call: the folded model and its settings; :meth:`classify` scores every library."""

    def __init__(
        self,
        net: Any,
        spec: Any,
        *,
        patch_um: float,
        input_size: int,
        batch_size: int,
        num_workers: int,
        device: Any,
        amp: Any,
        adapt_bn: bool,
        stain_norm: str | None,
        show_progress: bool,
    ) -> None:
        import torch

        from kgl.models import fold_batchnorm, state_dict_sha256

        self.base, self.spec = net, spec
        self.patch_um, self.input_size = patch_um, input_size
        self.batch_size, self.num_workers, self.show_progress = batch_size, num_workers, show_progress
        self.device, self.amp = device, amp
        self.adapt_bn, self.stain_norm = adapt_bn, stain_norm
        self.model_sha256 = state_dict_sha256(net)
        # a folded copy: the caller's model keeps its BatchNorm layers, device and mode
        self.folded = None if self.adapt_bn else fold_batchnorm(net).to(self.device, memory_format=torch.channels_last)

    def classify(
        self, sets: Sequence[Any], *, n_obs: int, threshold: float, threshold_rule: str | None, key_added: str
    ) -> _Result:
        res = _Result(
            proba=np.full(n_obs, np.nan, dtype=np.float32),
            thresholds=np.full(n_obs, threshold, dtype=np.float64),
            inside=np.full(n_obs, np.nan, dtype=np.float32),
            emb=None,
            per_lib={},
        )
        for spots in sets:
            p, e, f, info, extra = self.library(spots, threshold_rule)
            for suffix, values in extra.items():
                res.extra.setdefault(suffix, np.full(n_obs, np.nan, dtype=np.float32))[spots.index] = values
            if "threshold" in info:
                res.thresholds[spots.index] = info["threshold"]
            if res.emb is None and e is not None:  # HD bins have none (a bin is smaller than a feature cell)
                res.emb = np.full((n_obs, e.shape[1]), np.nan, dtype=np.float32)
            if e is not None:
                res.emb[spots.index] = e
            res.proba[spots.index], res.inside[spots.index] = p, f
            res.per_lib[spots.library_id] = info
            if (f < 1.0).any():
                logger.info(
                    "%d %s of %r lie partly outside the image (padded; see obs[%r]).",
                    int((f < 1.0).sum()),
                    "spots' patches" if getattr(spots, "bin_um", None) is None else "bins",
                    spots.library_id,
                    f"{key_added}_in_image",
                )
        return res

    def library(
        self, spots: Any, threshold_rule: str | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, dict[str, np.ndarray]]:
        """Probabilities, embeddings, in-image fractions, the params and more per-spot columns of one library."""
        from kgl.im import SpotPatchDataset

        ds = SpotPatchDataset(spots, patch_um=self.patch_um, size=self.input_size)
        stain = self._fit_stain(ds) if self.stain_norm is not None else None
        net = self._adapted(ds, stain) if self.adapt_bn else self.folded
        p, e, f = _predict(
            net,
            ds,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            amp=self.amp,
            show_progress=self.show_progress,
            desc=f"classify {spots.library_id}",
            transform=stain,
        )
        info: dict[str, Any] = {}
        if threshold_rule is not None:
            p, thr, info = apply_threshold_rule(p, threshold_rule, self.spec)
            p = p.astype(np.float32)
            info["threshold"] = thr
        level = spots.image.levels[ds.level]
        return (
            p,
            e,
            f,
            {
                **info,
                "adapted_bn": bool(self.adapt_bn),
                **({"stain_norm": stain.as_params()} if stain is not None else {}),
                "img_key": spots.img_key,
                **(spots.mpp_info.as_params() if spots.mpp_info is not None else {"mpp": spots.mpp}),
                "img_mpp": spots.image_mpp,  # µm per pixel of the finest level of the image read
                "level_downsample": level.downsample,
                "n_spots": len(spots.index),
                "n_partly_outside": int((f < 1.0).sum()),
            },
            {},
        )

    def _fit_stain(self, ds: Any) -> Any:
        """The sample's stains from a spread subsample of its spots (≤ 256), read one by one."""
        from kgl.im import MacenkoNormalizer

        take = np.unique(np.linspace(0, len(ds) - 1, min(256, len(ds))).round().astype(int))
        return MacenkoNormalizer().fit([np.stack([ds[int(i)][0] for i in take])])

    def _adapted(self, ds: Any, stain: Any) -> Any:
        """AdaBN on this library's own patches (no labels), then folded."""
        import torch

        from kgl.models import fold_batchnorm
        from kgl.tl._adapt import adapt_batchnorm

        patches = (
            stain(p) if stain is not None else p for p in (ds.read_chunk(i)[0] for i in ds.chunks(self.batch_size))
        )
        net = fold_batchnorm(adapt_batchnorm(self.base, patches, device=self.device, amp=self.amp))
        return net.to(self.device, memory_format=torch.channels_last)

    def params(
        self, res: _Result, *, threshold: float, threshold_rule: str | None, threshold_given: bool, uncertain: Any
    ) -> dict[str, Any]:
        """``uns[key_added]["params"]``: the model, the call's settings and each library's details."""
        from kgl import __version__

        spec = self.spec
        return {
            "model": spec.name or spec.backbone,
            "backbone": spec.backbone,
            "weights": spec.weights or "none",
            "head_trained": spec.head_trained,
            "model_sha256": self.model_sha256,
            "patch_um": self.patch_um,
            "input_size": self.input_size,
            # one number per call; with a per-library rule, that library's (NaN for several libraries)
            "threshold": threshold if threshold_rule is None else _one_threshold(res.per_lib),
            "threshold_rule": threshold_rule or ("given" if threshold_given else "validation"),
            "adapt_bn": bool(self.adapt_bn),
            "stain_norm": self.stain_norm or "none",
            "uncertain": None if uncertain is None else [float(u) for u in uncertain],
            "temperature": spec.calibration.temperature,
            "logit_bias": spec.calibration.logit_bias,
            "device": str(self.device),
            "precision": "fp32" if self.amp is None else str(self.amp).replace("torch.", ""),
            "library_id": list(res.per_lib),
            "libraries": res.per_lib,
            "kgl_version": __version__,
            # which H&E cases the model saw in training (kgl.recipes.train_default_model with he_repeat > 0)
            "training_he_cases": list((spec.extra.get("training_data") or {}).get("he_biopsy", {}).get("cases", [])),
        }


def _write(adata: Any, res: _Result, spec: Any, params: dict[str, Any], *, key_added: str, uncertain: Any) -> None:
    """The only step that writes: labels, probabilities, flags, embeddings, params and colours."""
    positive, negative = spec.positive_class, spec.negative_class
    proba = res.proba
    done = ~np.isnan(proba)
    labels = np.where(proba > res.thresholds, positive, negative).astype(object)
    labels[~done] = np.nan
    cat = pd.Categorical(labels, categories=[negative, positive])
    save_data(adata, attr="obs", key=key_added, data=pd.Series(cat, index=adata.obs_names))
    save_data(adata, attr="obs", key=f"{key_added}_proba", data=proba)
    if uncertain is not None:
        uncertain_mask = done & (proba >= uncertain[0]) & (proba <= uncertain[1])
        save_data(adata, attr="obs", key=f"{key_added}_uncertain", data=uncertain_mask)
    save_data(adata, attr="obs", key=f"{key_added}_in_image", data=res.inside)
    for suffix, values in res.extra.items():  # a map model's obs[f"{key_added}_fraction"]
        save_data(adata, attr="obs", key=f"{key_added}_{suffix}", data=values)
    if "fraction" not in res.extra and f"{key_added}_fraction" in adata.obs:  # an earlier map run's: now stale
        logger.info("obs[%r] of an earlier map run is dropped: these calls come from patches.", f"{key_added}_fraction")
        del adata.obs[f"{key_added}_fraction"]
    if res.emb is not None:
        save_data(adata, attr="obsm", key=f"X_{key_added}", data=res.emb)
    elif f"X_{key_added}" in adata.obsm:  # an earlier run's embedding: stale next to these calls
        del adata.obsm[f"X_{key_added}"]
    adata.uns[key_added] = {"params": params}
    adata.uns[f"{key_added}_colors"] = [_COLORS.get(c, "#1f77b4") for c in (negative, positive)]
