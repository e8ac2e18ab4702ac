"""The docs test reads pages as a reader sees them: fences, markers and `$ outbox` lines."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import outbox
from tests.docs.markdown import ROOT, Block, blocks, commands
from tests.docs.test_snippets import expected_status, parses, stable

PAGE = """# A page

<!-- fragment -->
```python
session.commit()
```

Text.

<!-- signature -->

```python
def f(x, *, y=...) -> int
```

```console
$ OUTBOX_LEASE=1s outbox status
Usage: outbox [OPTIONS] COMMAND [ARGS]...

Error: lease must be at least 2 seconds
$ outbox status --help
Usage: outbox status
$ psql -c "SELECT 1"
$ outbox audit verify --json   # a comment
{"ok": true, "seals": 3}
```

- a list:

  ```python
  print("indented")
  ```
"""


@pytest.fixture
def page(tmp_path: Path) -> list[Block]:
    path = tmp_path / "page.md"
    path.write_text(PAGE)
    return list(blocks(path))


def test_blocks_carry_the_marker_above_their_fence(page: list[Block]) -> None:
    assert [(b.lang, b.marker) for b in page] == [
        ("python", "fragment"),
        ("python", "signature"),
        ("console", None),
        ("python", None),
    ]
    assert page[0].text == "session.commit()\n"
    assert page[3].text == 'print("indented")\n'  # dedented, as a list item's code
    assert page[0].where.endswith("page.md:4")


def test_commands_are_the_outbox_lines_with_their_output_and_no_help(page: list[Block]) -> None:
    found = list(commands(page[2]))
    assert [(c.env, c.argv) for c in found] == [
        ({"OUTBOX_LEASE": "1s"}, ["status"]),
        ({}, ["audit", "verify", "--json"]),
    ]
    assert found[1].output == '{"ok": true, "seals": 3}\n'


def test_the_status_a_sample_shows() -> None:
    assert expected_status("all fine\n") == 0
    assert expected_status("Error: no job\n") == 1
    assert expected_status("Usage: outbox x\n\nError: bad option\n") == 2


def test_stable_output_sets_aside_what_changes_between_runs() -> None:
    one = "job 01a21ed3-6487-72f1-aafc-4461dc062a7c at 2026-11-27T21:15:34.427513Z took 13.1s\n"
    two = "job 01a21edc-d269-701f-a10b-4a268813ffff at 2026-12-04 10:00:00+00:00 took 2s\n"
    assert stable(one) == stable(two)
    assert stable("digest c05a0c32c22bc570675d39ca72df668f\n") == ["digest <hex>"]
    assert stable("3 jobs\n") != stable("3 seals\n")


def test_a_fragments_command_must_still_parse(page: list[Block]) -> None:
    [_, verify] = commands(page[2])
    parses(page[2], verify)
    bad = type(verify)({}, ["audit", "verify", "--no-such-option"], "outbox audit verify", "")
    with pytest.raises(pytest.fail.Exception, match="does not parse: No such option"):
        parses(page[2], bad)


def test_the_api_reference_lists_every_settings_field() -> None:
    """Its `Settings` block is a signature, so nothing runs it: hold it to the dataclass."""
    api = ROOT / "docs" / "reference" / "api.md"
    [shown] = [b.text for b in blocks(api) if re.search(r"^class Settings:", b.text, re.M)]
    listed = re.findall(r"^    (\w+): ", shown, flags=re.MULTILINE)
    assert listed == [field.name for field in dataclasses.fields(outbox.Settings)]
