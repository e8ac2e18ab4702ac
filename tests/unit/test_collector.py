"""Collection paused while outbox starts, and given back (outbox/collector.py; the relay's
settle_garbage_collector).

What concerns a whole process runs in a fresh interpreter: pytest's own state would hide it.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from outbox import collector


@pytest.fixture
def collecting() -> Iterator[None]:
    """The test starts with collection on, and leaves it on."""
    gc.enable()
    yield
    gc.enable()


def in_a_fresh_interpreter(code: str) -> Any:
    """What ``code`` leaves in ``result``, run by a new interpreter."""
    probe = f"{code}\nimport json\nprint(json.dumps(result))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_paused_turns_collection_off_for_the_block_and_back_on(collecting: None) -> None:
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_paused_gives_collection_back_when_the_block_fails(collecting: None) -> None:
    with pytest.raises(ImportError), collector.paused():
        raise ImportError("no module named 'app'")
    assert gc.isenabled()


def test_paused_moves_what_the_block_created_to_the_oldest_generation() -> None:
    """In a fresh interpreter: this one may have frozen objects (a relay run in-process
    freezes its heap), and then the move is skipped."""
    code = (
        "import gc\nfrom outbox import collector\ngc.collect()\n"
        "with collector.paused():\n    made = [[index] for index in range(5_000)]\n"
        "young = len(gc.get_objects(generation=0)) + len(gc.get_objects(generation=1))\n"
        "result = [young, made[-1]]"
    )
    young, last = in_a_fresh_interpreter(code)
    assert young < 1_000
    assert last == [4_999]


def test_paused_leaves_off_a_collector_that_was_off(collecting: None) -> None:
    with collector.paused():
        with collector.paused():
            pass
        assert not gc.isenabled()
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_importing_outbox_leaves_the_collector_as_it_found_it(enabled: bool) -> None:
    code = f"import gc\nif not {enabled}: gc.disable()\nimport outbox\nresult = gc.isenabled()"
    assert in_a_fresh_interpreter(code) is enabled


def test_importing_outbox_pauses_collection_while_it_imports() -> None:
    """Without the pause, importing outbox ran 115 collections (9 of them over the older
    generations). With it: at most the one due before the pause and the one due after."""
    code = (
        "import gc\nruns = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and runs.append(info))\n"
        "import outbox\nresult = [[run['generation'] for run in runs], gc.isenabled()]"
    )
    generations, enabled = in_a_fresh_interpreter(code)
    assert len(generations) <= 2
    assert set(generations) <= {0}
    assert enabled is True


def test_importing_outbox_leaves_its_objects_with_the_long_lived_ones() -> None:
    """The young generations hold next to nothing after the import: the collector does not
    walk the 80,000 objects of SQLAlchemy and psycopg twice more on their way to the oldest."""
    code = (
        "import gc\nimport outbox\nresult = [len(gc.get_objects(generation=g)) for g in (0, 1, 2)]"
    )
    young, middle, old = in_a_fresh_interpreter(code)
    assert young + middle < 2_000
    assert old > 50_000


def test_importing_outbox_keeps_what_the_process_froze_frozen() -> None:
    """A pre-forking server may freeze its heap before it imports outbox: it stays frozen
    (a frozen object that is freed leaves the count; none is added, none given back)."""
    code = (
        "import gc\ngc.freeze()\nfrozen = gc.get_freeze_count()\nimport outbox\n"
        "result = [frozen, gc.get_freeze_count(), gc.isenabled()]"
    )
    before, after, enabled = in_a_fresh_interpreter(code)
    assert before * 0.9 <= after <= before
    assert enabled is True


def test_settle_after_a_paused_start_freezes_the_heap_and_collects_again() -> None:
    code = (
        "import gc\ngc.disable()\nfrom outbox_relay import worker\n"
        "worker.settle_garbage_collector()\n"
        "result = [gc.isenabled(), gc.get_freeze_count(), gc.get_threshold()[0], "
        "worker.GC_YOUNG_THRESHOLD]"
    )
    enabled, frozen, threshold, wanted = in_a_fresh_interpreter(code)
    assert enabled is True
    assert frozen > 20_000
    assert threshold == wanted


def test_settle_where_collection_ran_frees_the_garbage_before_freezing() -> None:
    """A relay run inside another program: its garbage is collected, not frozen for good."""
    code = (
        "import gc, weakref\nfrom outbox_relay import worker\n"
        "class Node: pass\nnode = Node(); node.me = node; alive = weakref.ref(node); del node\n"
        "worker.settle_garbage_collector()\nresult = [alive() is None, gc.isenabled()]"
    )
    assert in_a_fresh_interpreter(code) == [True, True]


def test_a_supervisor_freezes_its_heap_before_it_forks_and_collects_again() -> None:
    """The supervisor's own process collects while it supervises, and its first processes
    are forked from a frozen heap (Python's advice for forked processes)."""
    code = (
        "import gc\ngc.disable()\nfrom outbox_relay import supervisor\nresult = []\n"
        "def supervise(*args):\n"
        "    result.extend([gc.isenabled(), gc.get_freeze_count() > 20000])\n"
        "    return 0\n"
        "supervisor._supervise = supervise\n"
        "supervisor.run_processes(['-m', 'outbox'], 2, 1.0, 'postgresql://h/db', None)\n"
    )
    assert in_a_fresh_interpreter(code) == [True, True]
