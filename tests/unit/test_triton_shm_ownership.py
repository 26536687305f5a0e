"""A server owns the shared-memory regions its own processes map, not every region that appeared while it
started: two servers starting together (a test beside a running benchmark) must not remove each other's."""

from __future__ import annotations

import mmap
import os
import uuid

import pytest

from lipsync.client.triton_server import SHM_DIR, SHM_PREFIX, _shm_mapped_by

pytestmark = pytest.mark.unit


@pytest.mark.skipif(not SHM_DIR.is_dir() or not os.path.isdir("/proc/self"), reason="needs Linux /dev/shm and /proc")
def test_only_regions_mapped_by_the_processes_are_theirs() -> None:
    mapped = SHM_DIR / f"{SHM_PREFIX}{uuid.uuid4()}"
    other = SHM_DIR / f"{SHM_PREFIX}{uuid.uuid4()}"  # another server's: present, not mapped here
    try:
        for path in (mapped, other):
            path.write_bytes(b"\0" * mmap.PAGESIZE)
        with open(mapped, "r+b") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE) as region:
            region[0] = 1
            owned = _shm_mapped_by([os.getpid()])
            assert mapped.name in owned
            assert other.name not in owned
        assert mapped.name not in _shm_mapped_by([os.getpid()])  # unmapped again
        assert _shm_mapped_by([2**22 + 7]) == set()  # a pid that does not exist
    finally:
        for path in (mapped, other):
            path.unlink(missing_ok=True)
