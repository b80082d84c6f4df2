"""The documents checked against the code, so they cannot drift from it silently.

In README.md, docs/*.md, edge_container/README.md and model_build/README.md:

- every relative link resolves to a file, and its `#anchor` to a heading of that file (GitHub's slugs);
- every `--option` of a command `model_build <command>` / `edge_container serve|feedback export` /
  `infra.stack up` (in a code block, or in one inline code span) exists in that command's argparse parser,
  built by the modules themselves; a table preceded by `<!-- cli: model_build build -->` has each option of
  its first column checked against that command;
- every `EDGE_*` name is one `edge_container.settings.Settings.from_env` reads (recorded by handing it a
  mapping that notes each key asked for), or one of RESERVED below; `EDGE_MAX_*`-style globs must match one;
- every HTTP route written `GET /path` / `POST /path` is served by the edge (its app and its mutual-TLS
  debug listener) or by the cloud's Lambda handler.

The checks run on a deliberately broken document too, so a checker that stopped finding anything fails.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = (REPO / "README.md", REPO / "edge_container" / "README.md", REPO / "model_build" / "README.md",
        *sorted((REPO / "docs").glob("*.md")))

# EDGE_* names the documents may mention that Settings does not read, each with its reason.
RESERVED = {
    "EDGE_CLIENT_ID": "infra.stack's constant naming the one client `make up` configures, not a variable",
    "EDGE_ENV": "Kubernetes' base/edge.env file name, not a variable",
}

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE = re.compile(r"`([^`\n]+)`")
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_EDGE_NAME = re.compile(r"\bEDGE_[A-Z0-9_]*[A-Z0-9*]\b\*?|\bEDGE_\*")
_ROUTE = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE)\s+(/[A-Za-z0-9_./{}\-]*)")
_CLI_MARK = re.compile(r"<!--\s*cli:\s*(.+?)\s*-->")
# A command and the words after it that name its sub-command (none: the options follow at once).
_COMMANDS = re.compile(r"\b(model_build|model-build)\s+(build|evaluate|publish|data\s+fetch)\b"
                       r"|\b(edge_container|edge-container)\s+(serve|feedback\s+export)\b"
                       r"|\b(infra\.stack)\s+(up)\b")


@dataclass(frozen=True)
class Problem:
    doc: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.what}"


# --------------------------------------------------------------------------- what the code has


def _capture_parser(main: object, argv: list[str]) -> argparse.ArgumentParser:
    """The parser a `main(argv)` builds inline, caught at its parse_args (nothing runs past it)."""

    class Caught(Exception):
        def __init__(self, parser: argparse.ArgumentParser) -> None:
            self.parser = parser

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Caught(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        try:
            main(argv)  # type: ignore[operator]
        except Caught as caught:
            return caught.parser
    raise AssertionError("main() never parsed its arguments")


def _sub(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(parser: argparse.ArgumentParser) -> frozenset[str]:
    return frozenset(s for a in parser._actions for s in a.option_strings if s.startswith("--"))


@cache
def cli_options() -> dict[str, frozenset[str]]:
    """Each documented command's options, from the parsers the modules build."""
    from edge_container.__main__ import main as edge_main
    from infra.stack.__main__ import _parser as stack_parser
    from model_build.cli import _parser as build_parser

    build = build_parser()
    edge = _capture_parser(edge_main, ["serve"])
    return {
        "model_build build": _options(_sub(build, "build")),
        "model_build evaluate": _options(_sub(build, "evaluate")),
        "model_build publish": _options(_sub(build, "publish")),
        "model_build data fetch": _options(_sub(build, "data", "fetch")),
        "edge_container serve": _options(_sub(edge, "serve")),
        "edge_container feedback export": _options(_sub(edge, "feedback", "export")),
        "infra.stack up": _options(_sub(stack_parser(), "up")),
    }


class _Recorder(Mapping[str, str]):
    """An empty environment that notes every key asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@cache
def edge_variables() -> frozenset[str]:
    from edge_container.settings import Settings

    recorder = _Recorder()
    Settings.from_env(recorder)
    return frozenset(recorder.asked)


@cache
def routes() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(method, path pattern) of every route the edge, its debug listener and the Lambda serve."""
    from cloud_functions.handler import app as cloud_app
    from edge_container.app import create_app
    from edge_container.debug import LogRing, create_debug_app
    from edge_container.settings import Settings

    edge = create_app(Settings())  # builds the routes; nothing is loaded before the lifespan
    debug = create_debug_app(edge.state.stack, LogRing())
    found = [(m, r.path) for app in (edge, debug) for r in app.routes for m in (r.methods or ())]
    found += [(r.method, r.path) for r in [*cloud_app._static_routes, *cloud_app._dynamic_routes]]
    return tuple((m, re.compile(re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(p)) + "/?")) for m, p in found)


# --------------------------------------------------------------------------- what the documents say


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*_<>]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose_and_code(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a fenced block)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        yield number, line, fenced


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line, fenced in _prose_and_code(path.read_text(encoding="utf-8")):
        match = None if fenced else _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def _commands(text: str) -> Iterator[tuple[str, str]]:
    """(command, the text after it) for each command named in `text`."""
    matches = list(_COMMANDS.finditer(text))
    for i, match in enumerate(matches):
        words = [w for w in match.groups() if w]
        tool, sub = words[0].replace("-", "_"), " ".join(words[1].split())
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        yield f"{tool} {sub}", text[match.end():end]


def _code_commands(text: str) -> Iterator[tuple[int, str]]:
    """Fenced commands, `\\`-continued lines joined, comments dropped: (first line, command)."""
    pending, start = "", 0
    for number, line, fenced in _prose_and_code(text):
        if not fenced:
            continue
        code = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not pending:
            start = number
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        yield start, pending + code
        pending = ""


def check(path: Path) -> list[Problem]:
    text = path.read_text(encoding="utf-8")
    doc = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    problems: list[Problem] = []
    options = cli_options()

    def option_problems(line: int, command: str, rest: str) -> None:
        known = options[command]
        for option in _OPTION.findall(rest):
            if option not in known and option not in ("--help", "--version"):
                problems.append(Problem(doc, line, f"`{command}` has no option {option}"))

    marked: str | None = None
    for number, line, fenced in _prose_and_code(text):
        if fenced:
            continue
        if mark := _CLI_MARK.search(line):
            marked = mark.group(1)
            if marked not in options:
                problems.append(Problem(doc, number, f"unknown command in cli mark: {marked}"))
                marked = None
            continue
        if marked and line.startswith("|"):
            first = line.split("|")[1]
            option_problems(number, marked, first)
        elif marked and line.strip():
            marked = None
        for span in _INLINE.findall(line):
            for command, rest in _commands(span):
                option_problems(number, command, rest)
        for target in _LINK.findall(line):
            problems += _link_problems(path, doc, number, target)
    for number, command_line in _code_commands(text):
        for command, rest in _commands(command_line):
            option_problems(number, command, rest)

    variables = edge_variables()
    known_routes = routes()
    for number, line in enumerate(text.splitlines(), 1):
        for name in set(_EDGE_NAME.findall(line)):
            if name in RESERVED or name in variables:
                continue
            if name.endswith("*"):
                prefix = name.rstrip("*")
                if any(v.startswith(prefix) for v in variables):
                    continue
            problems.append(Problem(doc, number, f"{name}: edge_container.settings reads no such variable"))
        for method, route in _ROUTE.findall(line):
            route = route.split("?")[0].rstrip(".")
            if not any(m == method and p.fullmatch(route) for m, p in known_routes):
                problems.append(Problem(doc, number, f"{method} {route}: no such route"))
    return problems


def _link_problems(path: Path, doc: str, line: int, target: str) -> list[Problem]:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
        return []
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    if not resolved.exists():
        return [Problem(doc, line, f"link to a missing file: {target}")]
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return [Problem(doc, line, f"link to a missing heading: {target}")]
    return []


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_a_document_names_only_what_the_code_has(path: Path) -> None:
    assert check(path) == [], "\n".join(map(str, check(path)))


def test_the_readme_is_a_front_door() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme  # CI runs the command README shows


def test_a_broken_document_is_caught(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Present heading\n", encoding="utf-8")
    broken = tmp_path / "broken.md"
    broken.write_text(
        "# Title\n\n"
        "[gone](missing.md) and [no heading](other.md#absent-heading) and [fine](other.md#present-heading)\n\n"
        "```bash\n"
        "python -m model_build build --data x.csv \\\n"
        "    --no-such-build-option --out a   # --in-a-comment is not checked\n"
        "python -m edge_container serve --model-dir a --no-such-serve-option\n"
        "```\n\n"
        "Set `EDGE_NO_SUCH_VARIABLE=1` and call `GET /v1/no-such-route`.\n\n"
        "<!-- cli: model_build build -->\n"
        "| option | meaning |\n|---|---|\n| `--no-such-table-option` | x |\n",
        encoding="utf-8")
    found = {p.what for p in check(broken)}
    assert found == {
        "link to a missing file: missing.md",
        "link to a missing heading: other.md#absent-heading",
        "`model_build build` has no option --no-such-build-option",
        "`edge_container serve` has no option --no-such-serve-option",
        "EDGE_NO_SUCH_VARIABLE: edge_container.settings reads no such variable",
        "GET /v1/no-such-route: no such route",
        "`model_build build` has no option --no-such-table-option",
    }


def test_what_the_code_has_is_read_from_the_code() -> None:
    assert "--negatives" in cli_options()["model_build build"]
    assert "--ood" in cli_options()["model_build evaluate"]
    assert {"--model-dir", "--port"} <= cli_options()["edge_container serve"]
    assert {"EDGE_CLOUD_URL", "EDGE_PROCESS_INDEX", "EDGE_DEBUG_TLS_CERT"} <= edge_variables()
    assert any(m == "POST" and p.fullmatch("/v2/models/edge/infer") for m, p in routes())
    assert any(m == "POST" and p.fullmatch("/v1/infer") for m, p in routes())
