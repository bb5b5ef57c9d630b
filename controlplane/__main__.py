"""`python -m controlplane`: same as `lightmesh controlplane`."""

import sys

from lightmeshctl.cli import main

sys.exit(main(["controlplane", *sys.argv[1:]]))
