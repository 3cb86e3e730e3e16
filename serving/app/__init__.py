"""A framework service assembled: its settings (`settings`), the server that wires engine,
training and rpc kit together (`server`), the entry point a framework's `__main__` calls
(`main`) and worker processes sharing one port (`workers`).

May import: anything in `serving`. Nothing in `serving` imports it but the package's root.
"""
