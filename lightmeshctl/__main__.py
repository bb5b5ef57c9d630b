"""`python -m lightmeshctl`: the `lightmesh` command."""

import sys

from lightmeshctl.cli import main

sys.exit(main())
