"""
Sphinx's settings for streamd's manual (docs/). Build with C{docs/build.sh}, which also
writes the API reference (pydoctor, into C{_build/html/api/}) first: its inventory is
what C{:py:class:} and friends link to here, so a name that is not in streamd fails
the build.
"""

import pathlib
import re

HERE = pathlib.Path(__file__).parent

project = "streamd"
author = "the streamd developers"
copyright = "the streamd developers"  # noqa: A001 (Sphinx's name for it)
# Read, not imported: building the manual needs none of streamd's dependencies.
release = version = re.search(
    r'__version__ = "([^"]+)"', (HERE.parent / "streamd" / "__init__.py").read_text()
).group(1)

extensions = ["sphinx.ext.intersphinx"]
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
# Every cross-reference must resolve (a py: role to a streamd name that does not exist).
nitpicky = True

# The API reference, from the epytext docstrings: pydoctor writes it beside the manual.
intersphinx_mapping = {
    "streamd": ("api/", str(HERE / "_build" / "html" / "api" / "objects.inv")),
}
default_role = "code"

html_theme = "furo"
html_title = f"streamd {release}"
html_static_path: list[str] = []
