import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# Under pytest-xdist each of the two workers gets one core; alone, the suite uses both.
_default = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("MORPHNAS_TEST_THREADS", _default)))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny nets, which a second thread only slows down
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    from morphnas.train import pinned_threads

    with pinned_threads(1):
        yield
