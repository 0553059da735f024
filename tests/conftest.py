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
