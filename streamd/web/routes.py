"""
The one klein app of the HTTP API. Every route module registers its routes on it the
same way: module-level functions decorated with C{@routes.route(...)}, whose first
argument is the L{streamd.web.app.StreamdApp} serving the request (klein passes the
instance its app is bound to). L{streamd.web.app} imports every route module.
"""

from __future__ import annotations

from klein import Klein

from streamd.web.errors import install_error_handler

routes = Klein()
install_error_handler(routes)
