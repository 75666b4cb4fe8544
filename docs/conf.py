"""Sphinx configuration of kgl's documentation (myst-nb, autosummary, sphinx-book-theme).

Build with ``bash scripts/docs.sh`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``,
with ``KGL_SMALL=1`` so the tutorial notebooks run in their CI-sized mode). The build needs no
network: no intersphinx, and the notebooks use the offline data in ``../shared``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from datetime import date

import kgl

# -- Project -------------------------------------------------------------------------------------
project = "kgl"
author = "kgl developers"
copyright = f"{date.today().year}, {author}"
version = release = kgl.__version__

# -- General -------------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_copybutton",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}  # .rst first: autosummary stubs
master_doc = "index"

# -- API reference: one page per room, members from each module's __all__ --------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # document exactly what __all__ exports
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
autodoc_typehints = "description"  # types next to the parameter descriptions, not in long signatures
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_use_ivar = True
# kgl's Returns sections are prose ("``None``, or the annotated copy ..."), as in scanpy, not
# ``name : type`` fields: render them as written.
napoleon_custom_sections = ["Returns"]

# -- MyST / notebooks ------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
# Execute every notebook at build time ("force"); KGL_DOCS_EXECUTE=off skips execution (quick prose
# edits) and =cache reuses unchanged notebooks' outputs from docs/_build/.jupyter_cache.
nb_execution_mode = os.environ.get("KGL_DOCS_EXECUTE", "force")
nb_execution_timeout = 900  # seconds per cell
nb_execution_raise_on_error = True  # a failing notebook fails the build
nb_execution_show_tb = True
nb_execution_in_temp = True  # notebooks write their files into a temporary folder, not the checkout
nb_merge_streams = True
nb_output_stderr = "remove"  # logging and progress bars go to stderr: keep the pages readable

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "kgl"
html_theme_options = {
    "repository_url": "https://github.com/kgl-spatial/kgl",
    "use_repository_button": True,
    "path_to_docs": "docs",
    "navigation_with_keys": False,
}
html_static_path: list[str] = []
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


# -- Data constants re-exported by the rooms --------------------------------------------------------
def _constant_docs() -> dict[str, list[str]]:
    """``#:`` comments of module-level constants, keyed by their public name (``kgl.recipes.DEFAULT_RECIPE``).

    The rooms re-export constants from private modules (``kgl/recipes/_train.py``); autodoc looks for
    the comment only in the module it documents, so it would show the value type's docstring (``dict``).
    """
    from sphinx.pycode import ModuleAnalyzer

    docs: dict[str, list[str]] = {}
    for room in ("io", "im", "tl", "pl", "models", "datasets", "recipes"):
        mod = importlib.import_module(f"kgl.{room}")
        public = set(getattr(mod, "__all__", []))
        for info in pkgutil.iter_modules(mod.__path__, f"kgl.{room}."):
            try:
                attr_docs = ModuleAnalyzer.for_module(info.name).find_attr_docs()
            except Exception:  # a module the analyzer cannot parse: no comments from it
                continue
            for (namespace, name), lines in attr_docs.items():
                if not namespace and name in public:
                    docs[f"kgl.{room}.{name}"] = list(lines)
    return docs


_CONSTANT_DOCS = _constant_docs()


def _constant_docstring(app, what, name, obj, options, lines) -> None:
    if what not in ("data", "attribute"):
        return
    if name in _CONSTANT_DOCS:
        lines[:] = list(_CONSTANT_DOCS[name])
    elif getattr(obj, "__doc__", None) == getattr(type(obj), "__doc__", None):
        lines[:] = []  # a constant without a #: comment: not the docstring of str/dict/tuple


def setup(app) -> None:
    """Register the constant-docstring hook."""
    app.connect("autodoc-process-docstring", _constant_docstring)
