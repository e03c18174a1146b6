import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# Under pytest-xdist each of the two workers gets one core; alone, the suite uses both.
_default = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("MORPHNAS_TEST_THREADS", _default)))
