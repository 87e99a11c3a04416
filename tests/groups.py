"""Which tests pytest-xdist keeps together on one worker under `make test` (--dist loadgroup): the tests that share a
costly fixture, which is then made once and no worker waits for another's. Read by tests/conftest.py (the scheduler)
and tests/integration/conftest.py (the check that every test of the shared dvc run is in its group)."""

from __future__ import annotations

# nodeid prefix -> group (the first prefix that matches); every other test is balanced on its own. Prefixes, not
# xdist_group marks: pytest 9.2 ignores the node id suffix by which pytest-xdist 3.8 groups marked tests.
XDIST_GROUPS = {
    "tests/integration/test_pipeline.py::": "dvc_run",
    "tests/integration/test_bad_input.py::test_a_mistake_inside_dvc_loses_nothing": "dvc_run",
    "tests/integration/test_evaluation_only.py::": "dvc_run",
    "tests/integration/test_reproduction.py::": "dvc_run",
    "tests/integration/test_sharing.py::": "dvc_run",
    # the tokenized project (tests/integration/conftest.py `tokenized`) and the resume tests' uninterrupted run
    "tests/integration/test_distributed.py::test_dvc_repro_pretrain_with_fsdp": "tokenized",
    "tests/integration/test_resume.py::": "tokenized",
    "tests/integration/test_distributed.py::": "distributed",  # the references and the one torchrun launch
}


def xdist_group(nodeid: str) -> str | None:
    return next((group for prefix, group in XDIST_GROUPS.items() if nodeid.startswith(prefix)), None)
