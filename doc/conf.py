"""Sphinx configuration of the sklearn-ugmm documentation.

Build with ``sphinx-build -W -b html doc doc/_build/html`` (or
``.ci/build_docs``). The build is offline: no intersphinx inventories are
fetched.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sklearn_ugmm  # noqa: E402

project = "sklearn-ugmm"
author = "The sklearn-ugmm developers"
copyright = "2025, The sklearn-ugmm developers"
version = release = sklearn_ugmm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
root_doc = "index"

# -- autodoc / autosummary / numpydoc ---------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# numpydoc would turn every type word into a cross-reference; targets outside
# this project (numpy, torch, matplotlib) cannot be resolved offline.
#
# Types are still rendered as cross-references (this also keeps names such as
# ``n_features_in_`` in a type from being read as reST link targets), but
# numpydoc's default aliases to numpy/python glossary terms are replaced by
# plain names, which do not warn when unresolved.
from numpydoc.xref import DEFAULT_LINKS  # noqa: E402

numpydoc_xref_param_type = True
numpydoc_xref_aliases = {name: name for name in DEFAULT_LINKS}
numpydoc_xref_ignore = {"of", "or", "shape", "default", "optional", "instance", "like", "and", "to"}
numpydoc_validation_checks = set()  # validated by tests/test_docstrings.py

# no intersphinx: the build must work without network access
intersphinx_mapping = {}

# -- sphinx-gallery ----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # only plot_*.py are executed; quickstart.py (a plain script, shown in
    # quickstart.rst) and benchmarks/ (shown in benchmarks.rst: they need data
    # sets and minutes to hours of CPU) are not part of the gallery
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(__init__\.py|benchmarks|[\\/]data[\\/]|quickstart\.py)",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "matplotlib_animations": False,
    "reference_url": {"sklearn_ugmm": None},
    "doc_module": ("sklearn_ugmm",),
    "backreferences_dir": "gen_modules/backreferences",
    "plot_gallery": "True",
}

# -- HTML ----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-ugmm {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"install": [], "quickstart": [], "changelog": [], "citing": []}


# -- docstring fixes -----------------------------------------------------------
import re  # noqa: E402

_TRAILING_UNDERSCORE = re.compile(r"(?<=[\s(,])([A-Za-z][A-Za-z0-9_]*[A-Za-z0-9])_(?=[,)])")


def _escape_shape_names(app, what, name, obj, options, lines):
    """``(n_features_in_,)`` in a type would be read as a reST link target."""
    for i, line in enumerate(lines):
        if "shape (" in line and "``" not in line:
            lines[i] = _TRAILING_UNDERSCORE.sub(r"\1\\_", line)


def setup(app):
    app.connect("autodoc-process-docstring", _escape_shape_names, priority=400)
