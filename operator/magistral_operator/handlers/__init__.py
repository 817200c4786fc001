"""kopf handlers: gather state, call the pure layers, apply.

Importing `handlers.operator` registers them with kopf.
"""
