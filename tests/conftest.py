"""Test-suite settings shared by every test file."""

import contextlib

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


@pytest.fixture(scope="session")
def bpe_inputs():
    """`with bpe_inputs(tokenizer, most) as sizes:` records the length of every word the tokenizer
    hands to BPE, the measure of its work, and fails at once on a word longer than `most` bytes
    (before a BPE of it, quadratic in its length, could run)."""

    @contextlib.contextmanager
    def record(tokenizer, most: int):
        sizes, real = [], tokenizer._bpe

        def spy(word):
            sizes.append(len(word))
            assert len(word) <= most, f"BPE was handed a {len(word)}-byte word; at most {most} expected"
            return real(word)

        tokenizer._bpe = spy  # the instance attribute hides the method
        try:
            yield sizes
        finally:
            del tokenizer._bpe

    return record
