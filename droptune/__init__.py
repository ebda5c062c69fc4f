"""droptune: find the dropout rate that generalises best.

The packages live at the repository's top level (`storage/`, `service/`, `worker/`, `client/`)
and are installed, and imported, as `droptune.storage`, `droptune.service`, `droptune.worker`
and `droptune.client`, so they never clash with a user's own modules of those names. In a
checkout the links in this folder point at them.
"""
