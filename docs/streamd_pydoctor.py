"""
What pydoctor needs to know about streamd that its options cannot say (as Twisted keeps
C{twisted.python._pydoctor}): C{docs/build.sh} passes
C{--system-class=streamd_pydoctor.StreamdSystem} with C{docs/} on C{PYTHONPATH}.

These warnings are noise here, not mistakes in a docstring, so they are shown with
C{-v} but do not fail the C{--warnings-as-errors} build:

  - a link to a package that publishes no pydoctor inventory we can read offline
    (treq, txredisapi, klein, pika, botocore, ...): CI reaches package registries only, so
    C{--intersphinx=URL} cannot fetch one. Twisted's inventory is built from the installed
    Twisted by C{build.sh}, so links into Twisted do resolve, and a wrong one still fails;
  - C{@param} on a class made by C{attrs.define} (or C{frozen}, C{mutable}): pydoctor
    25 derives constructor parameters for C{attr.s} only, so it reports every documented
    field of such a class as a parameter that does not exist. L{AttrsDefineClass} gives it
    the annotated fields as parameters, as C{attrs} does.

Any other warning (a syntax error, a link to a streamd name that does not exist, a
parameter that really is not there) still fails the build.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

from pydoctor import astutils, extensions, model

#: Top-level packages whose names may be linked without an inventory.
EXTERNAL = ("treq", "txredisapi", "klein", "pika", "botocore", "attrs", "attr", "zope",
            "prometheus_client", "crochet", "jwt", "werkzeug", "h2", "OpenSSL", "hyperlink")

_UNRESOLVED = re.compile(r'Cannot find link target for "([^"]+)"')

_ATTRS_DEFINE = {f"{m}.{d}" for m in ("attrs", "attr") for d in ("define", "frozen", "mutable")}


def _is_noise(message: str) -> bool:
    found = _UNRESOLVED.search(message)
    if found is None:
        return False
    return found.group(1).split(".")[0] in EXTERNAL


class StreamdSystem(model.System):
    """pydoctor's system, with the noise above not counted as a violation."""

    custom_extensions = ["streamd_pydoctor"]

    def msg(self, section: str, msg: str, thresh: int = 0, topthresh: int = 100,
            nonl: bool = False, wantsnl: bool = True, once: bool = False) -> None:
        if thresh < 0 and section == "resolve_identifier_xref" and _is_noise(msg):
            thresh = 1
        super().msg(section, msg, thresh, topthresh, nonl, wantsnl, once)


class AttrsDefineClass(extensions.ClassMixin, model.Class):
    """A class whose constructor C{attrs.define} writes from its annotated fields."""

    @property
    def constructor_params(self) -> Mapping[str, ast.expr | None]:
        params = super().constructor_params
        if params or not any(
            astutils.node2fullname(d.func if isinstance(d, ast.Call) else d, self)
            in _ATTRS_DEFINE for d in self.raw_decorators
        ):
            return params
        return {
            name: member.annotation for name, member in self.contents.items()
            if isinstance(member, model.Attribute) and member.annotation is not None
        }


def setup_pydoctor_extension(r: extensions.ExtRegistrar) -> None:
    r.register_mixin(AttrsDefineClass)
