import os
import tempfile

import numpy as np
import pytest
import torch

# Latent stores that training runs save for later runs go to a folder of this test session, not ~/.cache
# (set at import, before any test module copies the environment for its subprocesses).
os.environ.setdefault("KINEMA_CACHE", tempfile.mkdtemp(prefix="kinema-test-cache-"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for modules of tiny tensors and training runs: extra threads only add
    synchronisation, and on a busy 2-core machine two OpenMP threads per process are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
