"""Which tests pytest-xdist keeps together on one worker under `make test` (--dist loadgroup): the tests that share a
costly fixture, which is then made once and no worker waits for another's. Read by tests/conftest.py (the scheduler)
and tests/integration/conftest.py (the check that every test of the shared dvc run is in its group)."""

from __future__ import annotations

# nodeid prefix -> group; every other test is balanced on its own. Prefixes, not xdist_group marks: pytest 9.2 ignores
# the node id suffix by which pytest-xdist 3.8 groups marked tests.
XDIST_GROUPS = {
    "tests/integration/test_pipeline.py::": "dvc_run",
    "tests/integration/test_bad_input.py::test_a_mistake_inside_dvc_loses_nothing": "dvc_run",
    "tests/integration/test_evaluation_only.py::": "dvc_run",
    "tests/integration/test_reproduction.py::": "dvc_run",
    "tests/integration/test_sharing.py::": "dvc_run",
    "tests/integration/test_distributed.py::": "distributed",  # the references and the one torchrun launch
    "tests/integration/test_resume.py::": "resume",  # the tokenized project and the uninterrupted runs
}


def xdist_group(nodeid: str) -> str | None:
    return next((group for prefix, group in XDIST_GROUPS.items() if nodeid.startswith(prefix)), None)
