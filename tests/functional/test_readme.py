"""The README's commands, run as written against a stack configured like `make run`'s.

README.md marks what is run with HTML comments (invisible on GitHub), each
right above a fenced block:

    <!-- readme-test: run -->
        a ```bash block: every command in it runs and must exit 0; an enum
        value (ROUTING_DECISION_..., MODEL_VERSION_STATE_..., ...) named in
        the comment lines just above a command must be in that command's output
    <!-- readme-test: answer [varies="field, ..."] -->
        the output of the last command of the run block before it
    <!-- readme-test: session [exit=N] [varies="field, ..."] -->
        a ```console block of `$ command` lines, each followed by its output
        (stdout, then stderr); every command must exit N (default 0)
    <!-- readme-test: skip: why -->
        a block of commands that is not run (placeholders, TLS, make targets)

A block that runs grpcurl or `forecast` must carry one of them. Commands run
from the repository root with `localhost:50051` pointed at the test's gateway
(and FORECAST_TARGET set for `forecast`); `grpcurl`, `forecast` and their
`.venv/bin/` spellings are the venv's executables.

An answer is compared with the output: JSON by field names (the same set at
every level), list lengths, strings, enum values and numbers (within one unit
of the last digit shown: the README rounds); text line by line, cell by cell
(cells are separated by two spaces or more) and word by word, numbers the
same way. A field (JSON key or table column header) named in `varies` is only
checked for its type. Forecast ids are UUIDs: a shown id matches any id, and
a later command that uses a shown id gets the real one instead.

The gateway is started like `make run`'s (config/gateway.toml and its
routing.toml: lstm_timeseries split 10/90, shadow, fallback) on free ports,
in front of the session's Triton, with a fresh A/B store. Blocks run in README
order, once; selecting one block (-k) runs the blocks above it first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation

import pytest

from tests.conftest import ROOT, VENV_BIN, GatewayProcess, start_gateway, stop_process
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

README = ROOT / "README.md"
README_TARGET = "localhost:50051"
PROGRAMS = {
    "grpcurl": VENV_BIN / "grpcurl",
    ".venv/bin/grpcurl": VENV_BIN / "grpcurl",
    "forecast": VENV_BIN / "forecast",
    ".venv/bin/forecast": VENV_BIN / "forecast",
}
COMMAND_TIMEOUT_S = 60
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>[a-z]+)(?P<options>.*?)\s*-->\s*$")
OPTION = re.compile(r'(?P<name>[a-z]+)=(?:"(?P<quoted>[^"]*)"|(?P<bare>\S+))')
ENUM = re.compile(
    r"\b(?:ROUTING_DECISION|UNCERTAINTY_STATUS|MODEL_VERSION_STATE|SCORE_ROLE)_[A-Z_]+"
)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CELL_GAP = re.compile(r"\s{2,}")
# A command line of a block that has to be marked: a README command of this project.
COMMAND_LINE = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?(?:grpcurl|forecast) ")
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
FILE_SUFFIXES = (".csv", ".sh", ".py", ".toml", ".json", ".md")


class ReadmeError(Exception):
    """README.md's markers or blocks cannot be read."""


@dataclass(frozen=True)
class Command:
    """One README command: its words, the comments above it, the output shown for it."""

    line: int
    argv: tuple[str, ...]
    comments: tuple[str, ...] = ()
    shown: str | None = None
    varies: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Block:
    """A marked run or session block."""

    kind: str
    line: int
    commands: tuple[Command, ...]
    exit_status: int = 0


@dataclass(frozen=True)
class Fence:
    """A fenced block: its language, its first content line (1-based), its lines."""

    language: str
    line: int
    lines: tuple[str, ...]


@dataclass
class Readme:
    """Everything the README marks, and the command blocks it does not."""

    blocks: list[Block] = field(default_factory=list)
    unmarked: list[Fence] = field(default_factory=list)
    skipped: int = 0


# ---- reading README.md -------------------------------------------------------------------


def fences(lines: Sequence[str]) -> Iterator[tuple[int, Fence]]:
    """Each fenced block with the index of its opening line."""
    index = 0
    while index < len(lines):
        if lines[index].startswith("```"):
            start = index
            index += 1
            while index < len(lines) and lines[index] != "```":
                index += 1
            if index == len(lines):
                raise ReadmeError(f"line {start + 1}: the fence is never closed")
            yield start, Fence(lines[start][3:].strip(), start + 2, tuple(lines[start + 1 : index]))
        index += 1


def marker_above(lines: Sequence[str], opening: int) -> tuple[str, dict[str, str]] | None:
    """The marker on the last non-blank line above a fence, if there is one."""
    index = opening - 1
    while index >= 0 and not lines[index].strip():
        index -= 1
    match = MARKER.match(lines[index]) if index >= 0 else None
    if match is None:
        return None
    options = {
        m["name"]: m["quoted"] if m["quoted"] is not None else m["bare"]
        for m in OPTION.finditer(match["options"])
    }
    return match["kind"], options


def parse_readme(text: str) -> Readme:
    """Read the marked blocks of README text, in order."""
    lines = text.split("\n")
    readme = Readme()
    marked = set()
    for opening, fence in fences(lines):
        marker = marker_above(lines, opening)
        if marker is None:
            if any(COMMAND_LINE.match(line) for line in fence.lines):
                readme.unmarked.append(fence)
            continue
        marked.add(opening)
        kind, options = marker
        if kind == "skip":
            readme.skipped += 1
        elif kind == "run":
            readme.blocks.append(Block("run", fence.line, run_commands(fence)))
        elif kind == "answer":
            attach_answer(readme, fence, varies_option(options))
        elif kind == "session":
            commands = session_commands(fence, varies_option(options))
            exit_status = int(options.get("exit", "0"))
            readme.blocks.append(Block("session", fence.line, commands, exit_status))
        else:
            raise ReadmeError(f"line {fence.line - 1}: unknown marker kind {kind!r}")
    dangling = [
        i + 1 for i, line in enumerate(lines) if MARKER.match(line) and not _marks(lines, i, marked)
    ]
    if dangling:
        raise ReadmeError(f"markers not followed by a fenced block: lines {dangling}")
    return readme


def varies_option(options: dict[str, str]) -> frozenset[str]:
    """The names in `varies="a, b c"`: comma-separated (a column header may hold a space)."""
    return frozenset(name.strip() for name in options.get("varies", "").split(",") if name.strip())


def _marks(lines: Sequence[str], index: int, fence_openings: set[int]) -> bool:
    following = index + 1
    while following < len(lines) and not lines[following].strip():
        following += 1
    return following in fence_openings


def attach_answer(readme: Readme, fence: Fence, varies: frozenset[str]) -> None:
    """Make the fence the shown output of the last command of the run block just above."""
    if not readme.blocks or readme.blocks[-1].kind != "run":
        raise ReadmeError(f"line {fence.line}: an answer must follow a run block")
    block = readme.blocks[-1]
    last = block.commands[-1]
    if last.shown is not None:
        raise ReadmeError(f"line {fence.line}: the run block above already has an answer")
    shown = replace(last, shown="\n".join(fence.lines), varies=varies)
    readme.blocks[-1] = replace(block, commands=(*block.commands[:-1], shown))


def split_command(text: str, line: int) -> tuple[str, ...] | None:
    """The words of a shell command, or None while its quotes are still open."""
    try:
        return tuple(shlex.split(text, comments=True))
    except ValueError as error:
        if "closing quotation" in str(error):
            return None
        raise ReadmeError(f"line {line}: {error}") from None


def run_commands(fence: Fence) -> tuple[Command, ...]:
    """The commands of a bash block, each with the comment lines above it."""
    commands: list[Command] = []
    comments: list[str] = []
    pending, start = "", 0
    for offset, line in enumerate(fence.lines):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            comments.append(line.strip())
            continue
        start = start if pending else fence.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        argv = split_command(pending + line, start)
        if argv is None:
            pending += line + "\n"
            continue
        commands.append(Command(start, argv, tuple(c for c in comments if c.startswith("#"))))
        comments, pending = [], ""
    if pending or not commands:
        raise ReadmeError(f"line {fence.line}: a command is not finished, or there is none")
    return tuple(commands)


def session_commands(fence: Fence, varies: frozenset[str]) -> tuple[Command, ...]:
    """The `$ command` lines of a console block, each with the output lines below it."""
    commands: list[Command] = []
    lines = list(fence.lines)
    index = 0
    while index < len(lines):
        if not lines[index].startswith("$ "):
            raise ReadmeError(f"line {fence.line + index}: output before the first `$ ` command")
        start, text = fence.line + index, lines[index][2:]
        argv = None
        while True:
            if text.endswith("\\"):
                text = text[:-1] + " "
            elif (argv := split_command(text, start)) is not None:
                break
            else:
                text += "\n"
            index += 1
            if index == len(lines):
                raise ReadmeError(f"line {start}: the command is not finished")
            text += lines[index]
        index += 1
        output_start = index
        while index < len(lines) and not lines[index].startswith("$ "):
            index += 1
        shown = "\n".join(lines[output_start:index])
        commands.append(Command(start, argv, shown=shown, varies=varies))
    return tuple(commands)


def _blocks_or_none() -> list[Block]:
    try:
        return parse_readme(README.read_text()).blocks
    except ReadmeError:
        return []  # test_readme_markers says why


BLOCKS = _blocks_or_none()


# ---- comparing an answer with the one shown --------------------------------------------


@dataclass
class Comparison:
    """One answer's comparison: the fields that vary, the differences found, the ids seen.

    `ids` maps each forecast id shown in the README to the real one, across answers.
    """

    ids: dict[str, str]
    varies: frozenset[str] = frozenset()
    differences: list[str] = field(default_factory=list)

    def same_id(self, where: str, shown: str, actual: str) -> None:
        """A shown forecast id stands for the real one; once mapped, it must stay the same."""
        if self.ids.setdefault(shown, actual) != actual:
            self.differences.append(
                f"{where}: {actual!r}, but {shown!r} stood for {self.ids[shown]!r} above"
            )

    def word(self, where: str, shown: str, actual: str) -> None:
        """Compare one word of text or one JSON string."""
        if UUID.match(shown) and UUID.match(actual):
            self.same_id(where, shown, actual)
            return
        number = _decimal(shown)
        if number is not None and _decimal(actual) is not None:
            self.number(where, number, float(actual))
        elif shown != actual:
            self.differences.append(f"{where}: shown {shown!r}, answered {actual!r}")

    def number(self, where: str, shown: Decimal, actual: float) -> None:
        """Equal within one unit of the last digit shown (0 for an integer)."""
        exponent = shown.as_tuple().exponent
        assert isinstance(exponent, int)
        tolerance = 10.0**exponent if exponent < 0 else 0.0
        if abs(actual - float(shown)) > tolerance * (1 + 1e-9):
            self.differences.append(f"{where}: shown {shown}, answered {actual!r}")


def _decimal(token: str) -> Decimal | None:
    try:
        number = Decimal(token)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _json_kind(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    if isinstance(value, int | float | Decimal):
        return "number"
    return type(value).__name__


def compare_json(c: Comparison, where: str, shown: object, actual: object) -> None:
    """Compare a JSON value shown in the README (floats as Decimal) with the answer's."""
    if _json_kind(shown) != _json_kind(actual):
        c.differences.append(f"{where}: shown {shown!r}, answered {actual!r}")
    elif isinstance(shown, dict) and isinstance(actual, dict):
        compare_objects(c, where, shown, actual)
    elif isinstance(shown, list) and isinstance(actual, list):
        if len(shown) != len(actual):
            c.differences.append(f"{where}: {len(shown)} items shown, {len(actual)} answered")
        for index, (s, a) in enumerate(zip(shown, actual, strict=False)):
            compare_json(c, f"{where}[{index}]", s, a)
    elif isinstance(shown, str) and isinstance(actual, str):
        c.word(where, shown, actual)
    elif isinstance(shown, int | Decimal) and not isinstance(shown, bool):
        assert isinstance(actual, int | float)
        c.number(where, Decimal(shown), float(actual))
    elif shown != actual:
        c.differences.append(f"{where}: shown {shown!r}, answered {actual!r}")


def compare_objects(
    c: Comparison, where: str, shown: dict[str, object], actual: dict[str, object]
) -> None:
    """The same field names; the values compared unless the field varies."""
    if missing := sorted(shown.keys() - actual.keys()):
        c.differences.append(f"{where}: shown but not in the answer: {missing}")
    if extra := sorted(actual.keys() - shown.keys()):
        c.differences.append(f"{where}: in the answer but not shown: {extra}")
    for key in shown.keys() & actual.keys():
        if key in c.varies:
            if _json_kind(shown[key]) != _json_kind(actual[key]):
                c.differences.append(
                    f"{where}.{key}: shown {shown[key]!r}, answered a different type"
                )
        else:
            compare_json(c, f"{where}.{key}", shown[key], actual[key])


def compare_text(c: Comparison, shown: str, actual: str) -> None:
    """Line by line, cell by cell, word by word; a `varies` column is not compared."""
    shown_lines, actual_lines = _lines(shown), _lines(actual)
    if len(shown_lines) != len(actual_lines):
        c.differences.append(
            f"{len(shown_lines)} lines shown, {len(actual_lines)} answered:\n{actual}"
        )
        return
    varying: set[int] = set()
    for number, (s, a) in enumerate(zip(shown_lines, actual_lines, strict=True), start=1):
        shown_cells, actual_cells = CELL_GAP.split(s.strip()), CELL_GAP.split(a.strip())
        if not s.strip():
            varying = set()
        header = {i for i, cell in enumerate(shown_cells) if cell in c.varies}
        if len(shown_cells) != len(actual_cells):
            c.differences.append(f"line {number}: shown {s.strip()!r}, answered {a.strip()!r}")
            continue
        for index, (shown_cell, actual_cell) in enumerate(
            zip(shown_cells, actual_cells, strict=True)
        ):
            if index in varying and index not in header:
                continue
            compare_words(c, f"line {number}", shown_cell, actual_cell)
        varying |= header


def compare_words(c: Comparison, where: str, shown: str, actual: str) -> None:
    """Compare one cell word by word."""
    shown_words, actual_words = shown.split(), actual.split()
    if len(shown_words) != len(actual_words):
        c.differences.append(f"{where}: shown {shown!r}, answered {actual!r}")
        return
    for s, a in zip(shown_words, actual_words, strict=True):
        c.word(where, s, a)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def compare_answer(
    ids: dict[str, str], shown: str, actual: str, varies: frozenset[str]
) -> list[str]:
    """The differences between the answer shown and the real one (JSON or text)."""
    c = Comparison(ids, varies=varies)
    if shown.lstrip().startswith(("{", "[")):
        try:
            real = json.loads(actual)
        except json.JSONDecodeError:
            return [f"the README shows JSON, the answer is not JSON:\n{actual}"]
        compare_json(c, "$", json.loads(shown, parse_float=Decimal), real)
    else:
        compare_text(c, shown, actual)
    return c.differences


# ---- running the blocks ------------------------------------------------------------------


class ReadmeRun:
    """Runs the README's blocks in order, once each, and keeps what went wrong with each."""

    def __init__(self, gateway: GatewayProcess, blocks: Sequence[Block]) -> None:
        self.gateway = gateway
        self.blocks = blocks
        self.ids: dict[str, str] = {}
        self.failures: list[str | None] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env["FORECAST_TARGET"] = gateway.target

    def failure(self, index: int) -> str | None:
        """What went wrong with block `index` (None: nothing), running the blocks up to it."""
        while len(self.failures) <= index:
            block = self.blocks[len(self.failures)]
            self.failures.append(self.run_block(block))
        return self.failures[index]

    def run_block(self, block: Block) -> str | None:
        """Run every command of the block; the differences found, or None."""
        problems = []
        for command in block.commands:
            problems += [
                f"README line {command.line}: `{shlex.join(command.argv)[:160]}`: {problem}"
                for problem in self.run_command(block, command)
            ]
        return "\n".join(problems) or None

    def run_command(self, block: Block, command: Command) -> list[str]:
        """Run one command and compare what it did with what the README says."""
        argv = self.real_argv(command.argv)
        result = subprocess.run(
            argv,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if result.returncode != block.exit_status:
            return [
                f"exit status {result.returncode}, the README expects {block.exit_status}:\n"
                f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
            ]
        output = result.stdout + result.stderr if block.kind == "session" else result.stdout
        named = sorted({e for comment in command.comments for e in ENUM.findall(comment)})
        problems = [f"its comment says {e}, the answer does not" for e in named if e not in output]
        if command.shown is not None:
            problems += compare_answer(self.ids, command.shown, output, command.varies)
        return problems

    def real_argv(self, argv: Sequence[str]) -> list[str]:
        """The program in the venv, the test's gateway, the real forecast ids."""
        program = PROGRAMS.get(argv[0])
        if program is None:
            raise AssertionError(f"{argv[0]!r} is not a program this test runs: {list(PROGRAMS)}")
        words = []
        for word in argv[1:]:
            word = word.replace(README_TARGET, self.gateway.target)
            for shown, real in self.ids.items():
                word = word.replace(shown, real)
            words.append(word)
        return [str(program), *words]


@pytest.fixture(scope="module")
def make_run_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway configured as `make run`'s: config/gateway.toml with its routing.toml."""
    log_path = tmp_path_factory.mktemp("readme") / "gateway.log"
    process = start_gateway(triton.grpc_url, log_path)
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def readme_run(make_run_gateway: GatewayProcess) -> ReadmeRun:
    """The README's blocks, run on demand in order."""
    return ReadmeRun(make_run_gateway, BLOCKS)


# ---- the tests ---------------------------------------------------------------------------


def test_readme_markers() -> None:
    readme = parse_readme(README.read_text())  # a ReadmeError says what is wrong
    kinds = [block.kind for block in readme.blocks]
    assert kinds.count("run") >= 5 and kinds.count("session") >= 5, kinds
    answers = [c for block in readme.blocks for c in block.commands if c.shown is not None]
    assert len(answers) >= 10
    unmarked = [f"line {fence.line}: {fence.lines[0]}" for fence in readme.unmarked]
    assert not unmarked, (
        "README blocks with grpcurl/forecast commands need a readme-test marker "
        f"(run, session or skip: why): {unmarked}"
    )


@pytest.mark.parametrize(
    "index", range(len(BLOCKS)), ids=[f"line{b.line}-{b.kind}" for b in BLOCKS]
)
def test_readme_block(readme_run: ReadmeRun, index: int) -> None:
    failure = readme_run.failure(index)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def test_referenced_files_exist() -> None:
    text = README.read_text()
    links = [m["target"].split("#")[0] for m in LINK.finditer(text)]
    local = [t for t in links if t and not re.match(r"^[a-z]+:", t)]
    words = [word for block in BLOCKS for c in block.commands for word in c.argv[1:]]
    files = [w for w in words if w.endswith(FILE_SUFFIXES) and not w.startswith(("-", "{"))]
    assert "clients/python/examples/co2_weekly.csv" in files
    missing = sorted({path for path in local + files if not (ROOT / path).exists()})
    assert not missing, f"README.md names files the repository does not have: {missing}"


def test_grpcurl_examples_script(make_run_gateway: GatewayProcess) -> None:
    script = ROOT / "clients" / "grpcurl" / "examples.sh"
    env = {**os.environ, "GRPCURL": str(VENV_BIN / "grpcurl")}
    result = subprocess.run(
        [str(script), make_run_gateway.target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Every enum value the script's comments promise is in some answer.
    named = set(ENUM.findall(script.read_text()))
    assert named, "the script's comments name no routing decision"
    assert not named - set(ENUM.findall(result.stdout)), result.stdout[-3000:]


def test_python_example(make_run_gateway: GatewayProcess) -> None:
    script = ROOT / "clients" / "python" / "examples" / "forecast_co2.py"
    result = subprocess.run(
        [str(VENV_BIN / "python"), str(script), make_run_gateway.target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["week", "actual", "v1", "(w10)", "v2", "(w52)"]
    assert len(lines) == 1 + 12 + 1 and lines[-1].split()[0] == "MAE"
