"""Local web viewer (``xraysyn serve``): open a radiograph, sweep the view angle over the novel views, toggle the
3DPN view, the bone image and bone suppression, adjust window / level, download the results.

:func:`~xraysyn.viewer.app.create_app` builds the ASGI app around a loaded model; sessions and their temporary
folders are in :mod:`xraysyn.viewer.sessions`, the per-upload computation in :mod:`xraysyn.viewer.compute`.
"""

from xraysyn.viewer.app import create_app

__all__ = ["create_app"]
