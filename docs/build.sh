#!/usr/bin/env bash
# Build streamd's manual (Sphinx) and API reference (pydoctor) into docs/_build/html, every
# warning an error, as CI does. Needs the docs extra in the venv:
#   .venv/bin/pip install -e '.[docs]' && docs/build.sh
# PYTHON picks another interpreter (default .venv/bin/python); open
# docs/_build/html/index.html, and api/index.html for the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=docs/_build
if ! "$py" -c 'import pydoctor, sphinx, towncrier, furo' 2>/dev/null; then
  echo "docs/build.sh: $py lacks the docs extra: $(dirname "$py")/pip install -e '.[docs]'" >&2
  exit 1
fi
mkdir -p "$out/inventories" docs/_generated

# Twisted's pydoctor inventory, built offline from the installed Twisted (CI reaches package
# registries only, not docs.twistedmatrix.com), so that L{twisted...} links resolve, and
# a wrong one fails. Kept per Twisted version: about 20 s the first time.
twisted_version=$("$py" -c 'import twisted; print(twisted.__version__)')
twisted_dir=$("$py" -c 'import os, twisted; print(os.path.dirname(twisted.__file__))')
twisted_inv="$out/inventories/twisted-$twisted_version.inv"
if [ ! -s "$twisted_inv" ]; then
  echo "+ pydoctor --make-intersphinx (Twisted $twisted_version)"
  "$py" -m pydoctor --make-intersphinx --project-name=Twisted --quiet \
    --html-output="$out/inventories/twisted" "$twisted_dir" >/dev/null
  mv "$out/inventories/twisted/objects.inv" "$twisted_inv"
  rm -rf "$out/inventories/twisted"
fi

# The API reference. docs/streamd_pydoctor.py says which warnings are noise and why.
echo "+ pydoctor streamd"
PYTHONPATH=docs "$py" -m pydoctor --quiet --warnings-as-errors \
  --project-name=streamd --project-version="$("$py" -c 'import re; print(re.search(r"__version__ = \"(.+)\"", open("streamd/__init__.py").read())[1])')" \
  --docformat=epytext --project-base-dir=. \
  --system-class=streamd_pydoctor.StreamdSystem \
  --intersphinx-file="$twisted_inv::https://docs.twistedmatrix.com/en/stable/api" \
  --html-output="$out/html/api" streamd

# What the next release's changelog section would say (the fragments in newsfragments/).
version=$("$py" -c 'import re; print(re.search(r"__version__ = \"(.+)\"", open("streamd/__init__.py").read())[1])')
"$py" -m towncrier build --draft --version "$version" --date "not released yet" \
  2>/dev/null > docs/_generated/unreleased.rst

# The manual; its links into the API reference go through pydoctor's objects.inv.
echo "+ sphinx-build"
"$py" -m sphinx -W --keep-going -q -b html docs "$out/html"
echo "docs: $out/html/index.html, API reference: $out/html/api/index.html"
