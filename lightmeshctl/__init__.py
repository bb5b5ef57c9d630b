"""The `lightmesh` command line: runs the daemons (with their flags), the demo, and the inspection
commands. The top layer: it may import both daemons; nothing imports it."""
