"""The downstream project's conftest: where its implementation lives, and the plugin.

The implementation under test is the worked example ``examples/torchfunc_maml.py``; its folder
goes on ``sys.path`` so that ``pytest.ini`` can name it ``torchfunc_maml:IMPL`` from anywhere.
The maml-parity plugin is loaded by its ``pytest11`` entry point once maml-parity is installed;
without an install, run ``python -m pytest -p parity.pytest_plugin``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
