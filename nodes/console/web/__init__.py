"""The console's web page: an ASGI app served by `vv console` beside its service (see app.py)."""
