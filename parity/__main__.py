"""`python -m parity ...` is the same as the `maml-parity` console script."""

import sys

from parity.cli import main

sys.exit(main())
