import os

import pytest
import torch

# Tests must be deterministic and not fight over the 2 CI cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread():
    """Per-image ops are tiny: on 2 shared cores, intra-op threads spin against each other (measured
    ~2 ms vs ~130 ms per sample under load), so such tests run single-threaded and restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
