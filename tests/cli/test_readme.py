"""The README runs word for word, so it cannot drift from the code again.

Every fenced block of README.md runs, in order, against one fleet started the way ``./dev.sh run`` starts it
(``adapterfleet demo``, which keeps serving), except blocks marked ``<!-- readme-test: skip (why) -->`` on the line
before them: ``bash`` blocks run in bash (-e, pipefail), ``python`` blocks in this interpreter, ``yaml`` blocks are
checked as ``--config`` files. They run in a fresh directory holding ``.venv/bin/adapterfleet`` (this
interpreter's CLI) and the demo's data directory ``.adapterfleet``, as a reader's checkout would after
``./dev.sh run``. The one liberty taken: the fleet listens on free ports, and the README's default addresses
(127.0.0.1:50051 ...) are replaced by them, so the test never collides with a fleet already running here.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapterfleet.cli.flags import parse_layered
from adapterfleet.cli.main import build_parser
from tests.cli.test_cli import CLI, REPO

README = REPO / "README.md"
MARK = re.compile(r"^<!-- readme-test: skip \((?P<why>.+)\) -->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
RUNNABLE = ("bash", "python", "yaml")
FLEET_TIMEOUT_S = 400.0  # the demo trains three adapters on a fresh data directory
BLOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    skip: str | None  # why it is not run, from its marker


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARK.match(lines[i - 1]) if i else None
        blocks.append(Block(fence["lang"], "\n".join(lines[i + 1:end]) + "\n", i + 1,
                            marker["why"] if marker else None))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_every_block_runs_or_says_why_not():
    assert BLOCKS, "no code blocks found in README.md"
    for b in BLOCKS:
        assert b.skip is not None or b.lang in RUNNABLE, f"README.md:{b.line}: a ```{b.lang} block neither runs " \
                                                         "nor carries <!-- readme-test: skip (why) -->"
    assert BLOCKS[0].code == "./dev.sh run\n./dev.sh test\n"  # the first two commands, exactly


def test_the_parser_finds_markers_and_fences():
    text = "x\n<!-- readme-test: skip (needs S3) -->\n```bash\necho no\n```\n\n```python\nprint(1)\n```\n"
    assert readme_blocks(text) == [Block("bash", "echo no\n", 3, "needs S3"), Block("python", "print(1)\n", 7, None)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``adapterfleet demo`` serving from a reader's checkout: {the README's address: the fleet's}."""
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv" / "bin").mkdir(parents=True)
    shim = work / ".venv" / "bin" / "adapterfleet"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m adapterfleet.cli.main "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERFLEET_")}
    env["HOME"] = str(work / "home")  # the SDK's pull cache, the libraries' caches: not the user's
    proc = subprocess.Popen([*CLI, "demo", "--port", "0", "--json", "--data-dir", str(work / ".adapterfleet")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], FLEET_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            pytest.fail(f"the demo did not get ready:\n{proc.stderr.read()}")
        fleet = json.loads(line)["fleet"]
        workers = fleet["workers"]
        addresses = {"127.0.0.1:50051": fleet["store"], "127.0.0.1:50061": workers[0],
                     "127.0.0.1:50062": workers[-1], "127.0.0.1:50071": fleet["router"],
                     "127.0.0.1:50072": fleet["http"].removeprefix("http://").removesuffix("/v1")}
        yield work, env, addresses
    finally:
        proc.send_signal(signal.SIGTERM)  # how a serving demo ends: it stops its fleet
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def _localize(code: str, addresses: dict[str, str]) -> str:
    for default, actual in addresses.items():
        code = code.replace(default, actual)
    return code


def _check_config(path: Path, code: str) -> None:
    """A yaml block is a --config file: every section must parse for its command, with no unknown setting."""
    import yaml

    path.write_text(code)
    for section in yaml.safe_load(code):
        args = parse_layered(build_parser(), ["--config", str(path), section, "serve"], {})
        assert args.command == section


def test_the_readme_runs_word_for_word(demo):
    work, env, addresses = demo
    outputs = []
    for n, block in enumerate(BLOCKS):
        if block.skip is not None:
            continue
        code = _localize(block.code, addresses)
        where = f"README.md:{block.line} (```{block.lang})"
        if block.lang == "yaml":
            _check_config(work / f"block{n}.yaml", code)
            continue
        script = work / f"block{n}.{'sh' if block.lang == 'bash' else 'py'}"
        script.write_text(code)
        argv = ["bash", "-e", "-o", "pipefail", str(script)] if block.lang == "bash" else [sys.executable, str(script)]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=work, env=env, timeout=BLOCK_TIMEOUT_S)
        assert out.returncode == 0, f"{where} failed:\n{code}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
        outputs.append((block, out.stdout))
    # and what the README says they print
    quickstart = next(o for b, o in outputs if "adapterfleet generate --adapter shout@prod" in b.code)
    assert '"text": "CAT!"' in quickstart  # the demo's shout adapter, through the router
    peft = next(o for b, o in outputs if "push_from_peft(model" in b.code)
    assert peft.splitlines()[-1] == "3 True"  # the next version (after the Quickstart's 1 and 2), its parent
