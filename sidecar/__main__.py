"""`python -m sidecar`: same as `lightmesh sidecar`."""

import sys

from lightmesh.cli import main

sys.exit(main(["sidecar", *sys.argv[1:]]))
