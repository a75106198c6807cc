"""Test-suite settings shared by every test file."""

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run, so CI never passes or fails by chance;
# run `pytest --hypothesis-seed=N` (with the profile's derandomize off) to explore new examples.
settings.register_profile("clipmini", derandomize=True, database=None)
settings.load_profile("clipmini")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: on 2 shared cores, OpenMP threads spinning against other
    processes make tiny ops ~50x slower. Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
