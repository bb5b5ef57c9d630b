"""`python -m sidecar`: same as `lightmesh sidecar`."""

import sys

from lightmeshctl.cli import main

sys.exit(main(["sidecar", *sys.argv[1:]]))
