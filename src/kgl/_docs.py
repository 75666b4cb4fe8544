"""Shared parameter docs, written once (docrep, as squidpy's ``_docs.py``).

A public function says ``%(spatial_key)s`` in its numpydoc ``Parameters`` and is decorated with
``@d.dedent``; the text below is inserted at import time, so every function describes a shared
argument the same way.
"""

from __future__ import annotations

from docrep import DocstringProcessor

__all__ = ["d"]

_spatial_key = """\
spatial_key
    Key of the spot centres (full-resolution pixels) in ``adata.obsm``, and of the Visium metadata
    (images, scale factors) in ``adata.uns``."""
_library_key = """\
library_key
    Column of ``adata.obs`` naming each spot's library when ``adata`` holds several."""
_library_id = """\
library_id
    The library (sample) to use; may be omitted when ``adata`` holds only one."""
_library_ids = """\
library_id
    Library or libraries (samples) to use; all by default."""
_img_key = """\
img_key
    The image: ``"fullres"`` (the file named in
    ``uns["spatial"][library_id]["metadata"]["source_image_path"]``), or a key of
    ``uns["spatial"][library_id]["images"]`` (``"hires"``, ``"lowres"``) with a matching
    ``tissue_<img_key>_scalef``. Default: the highest resolution available."""
_table_name = """\
table_name
    For :class:`spatialdata.SpatialData` input: the table to use (and annotate); the only table
    by default."""

_copy = """\
copy
    Return a modified copy instead of writing into ``adata``."""
_show_progress = """\
show_progress
    Show a progress bar."""

d = DocstringProcessor(
    spatial_key=_spatial_key,
    library_key=_library_key,
    library_id=_library_id,
    library_ids=_library_ids,
    img_key=_img_key,
    table_name=_table_name,
    copy=_copy,
    show_progress=_show_progress,
)
