"""Sphinx configuration for the trio_dtlsmux documentation.

Build it as CI does::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Cross-references to trio, pyOpenSSL, cryptography and Python need their
intersphinx inventories, fetched over the network. The build must stay clean
under ``-W`` without a network too, so:

* ``DOCS_OFFLINE=1`` skips intersphinx altogether (no fetch is tried);
* otherwise each inventory is tried online first and, if that fails, an empty
  local inventory (``_intersphinx/empty.inv``) stands in for it. Sphinx then
  reports the failed fetch as information, not as a warning, and the links
  into that project are simply left as plain text.

``DOCS_NITPICKY=1`` turns on nitpicky mode, which reports every reference
that does not resolve; useful online when editing docstrings.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Let autodoc and the examples find the package when it is not installed.
sys.path.insert(0, str(HERE.parent))

import trio_dtlsmux  # noqa: E402

# -- Project -----------------------------------------------------------------

project = "trio_dtlsmux"
author = "The trio_dtlsmux developers"
copyright = "the trio_dtlsmux developers"
release = trio_dtlsmux.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
root_doc = "index"
highlight_language = "python3"
pygments_style = "friendly"
pygments_dark_style = "monokai"

# -- autodoc / napoleon ------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
# The package's docstrings are Google style ("Args:", "Attributes:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections become attribute entries, so that fields such as
# EndpointConfig.idle_timeout can be linked to.
napoleon_use_ivar = False
napoleon_use_rtype = False

# -- intersphinx -------------------------------------------------------------

_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "trio": "https://trio.readthedocs.io/en/stable/",
    "pyopenssl": "https://www.pyopenssl.org/en/stable/",
    "cryptography": "https://cryptography.io/en/latest/",
}
_EMPTY_INVENTORY = "_intersphinx/empty.inv"

if os.environ.get("DOCS_OFFLINE", "").strip() not in ("", "0"):
    intersphinx_mapping: dict[str, tuple[str, tuple[str | None, ...]]] = {}
else:
    # Online first; the empty inventory is the fallback that keeps an offline
    # build free of warnings.
    intersphinx_mapping = {
        name: (url, (None, _EMPTY_INVENTORY)) for name, url in _INVENTORIES.items()
    }
intersphinx_timeout = 10
# Re-fetch on every build rather than reuse an inventory cached by an earlier
# (perhaps offline) build.
intersphinx_cache_limit = 0

nitpicky = os.environ.get("DOCS_NITPICKY", "").strip() not in ("", "0")

# -- Docstring touch-ups -------------------------------------------------------
#
# cryptography defines its X.509 classes in a private Rust module and exports
# them as cryptography.x509.*; annotations resolve to the private path, which
# neither reads well nor matches cryptography's inventory.
_PRIVATE_PATHS = {"cryptography.hazmat.bindings._rust.x509.": "cryptography.x509."}
# Annotations written as ``SSL.Context`` under ``from __future__ import
# annotations`` reach Sphinx as plain strings.
_SHORT_TARGETS = {"SSL.": "OpenSSL.SSL."}


def _public_paths(app, what, name, obj, options, lines):
    for index, line in enumerate(lines):
        for private, public in _PRIVATE_PATHS.items():
            line = line.replace(private, public)
        lines[index] = line


# napoleon reads "Words: more words" on the first line of an attribute's or
# property's docstring as "type: description". Our docstrings never use that
# form (types come from annotations), but some begin with a label and a
# colon ("Client role: ..."). So napoleon's result for these is thrown away
# and the docstring kept as written.
_ATTRIBUTE_KINDS = ("attribute", "property", "data")
_attribute_docstrings: dict[str, list[str]] = {}


def _remember_attribute_docstring(app, what, name, obj, options, lines):
    if what in _ATTRIBUTE_KINDS:
        _attribute_docstrings[name] = list(lines)


def _restore_attribute_docstring(app, what, name, obj, options, lines):
    if what in _ATTRIBUTE_KINDS and name in _attribute_docstrings:
        lines[:] = _attribute_docstrings.pop(name)


def _public_targets(app, env, node, contnode):
    target = node.get("reftarget", "")
    for private, public in [*_PRIVATE_PATHS.items(), *_SHORT_TARGETS.items()]:
        if target.startswith(private):
            node["reftarget"] = public + target[len(private) :]
    # Returning None lets intersphinx, which runs after us, resolve it.


# Public names report the public module as theirs (trio_dtlsmux.contexts
# re-exports what _identity and _verification define), which is what readers
# should see but not where viewcode finds the source. Follow the code instead:
# a function's code object, or for a class the code of its own methods, knows
# the file it came from.
def _defining_module(app, modname, fullname):
    obj = sys.modules.get(modname)
    for part in fullname.split("."):
        obj = getattr(obj, part, None)
    candidates = vars(obj).values() if isinstance(obj, type) else [obj]
    package = HERE.parent.resolve()
    for candidate in candidates:
        code = getattr(inspect.unwrap(candidate), "__code__", None)
        # attrs writes __init__ and friends with a "<attrs generated ...>" name.
        if code is None or not code.co_filename.endswith(".py"):
            continue
        try:
            relative = Path(code.co_filename).resolve().relative_to(package)
        except ValueError:
            continue
        return ".".join(relative.with_suffix("").parts)
    return None


def setup(app):
    # napoleon handles docstrings at the default priority (500).
    app.connect("autodoc-process-docstring", _remember_attribute_docstring, priority=400)
    app.connect("autodoc-process-docstring", _restore_attribute_docstring, priority=550)
    app.connect("autodoc-process-docstring", _public_paths, priority=600)
    app.connect("missing-reference", _public_targets, priority=400)
    app.connect("viewcode-follow-imported", _defining_module)


# -- HTML --------------------------------------------------------------------

html_theme = "furo"
html_title = f"trio_dtlsmux {release}"
html_static_path: list[str] = []
