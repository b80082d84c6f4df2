"""pyproject.toml: each deployable is an extra that is its requirements file pin for pin, each CLI a console
script with `--version`, and the one version every tier reports (`modelpack.version`).
tests/test_packaging_install.py installs the package into a clean venv and serves a request from it."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from starlette.testclient import TestClient

from edge_container.app import create_app
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack
from modelpack.version import DISTRIBUTION, UNKNOWN, package_version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The requirements files are the source: the image, `sam build` and the Makefile install them.
EXTRAS = {"edge": REPO / "edge_container" / "requirements.txt", "cloud": REPO / "cloud_functions" / "requirements.txt",
          "build": REPO / "requirements" / "build.txt", "dev": REPO / "requirements" / "dev.txt"}
SCRIPTS = {"edge-container": "edge_container.__main__:main", "model-build": "model_build.cli:main"}


def requirement_lines(path: Path) -> list[str]:
    """The file's requirements in order, `-r` files included where they stand."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += requirement_lines(path.parent / line[3:].strip())
        elif line:
            assert not line.startswith("-"), f"{path}: {line!r}: an option the extra cannot carry"
            lines.append(line)
    return lines


def pins(lines: list[str]) -> dict[str, str]:
    """{name[extras]: specifier}, names normalised: `aws_lambda_powertools` and `aws-lambda-powertools` agree."""
    out = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name) + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        assert name not in out, f"{name} twice"
        out[name] = str(req.specifier)
    return out


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_extra_is_its_requirements_file_pin_for_pin(extra: str) -> None:
    lines = requirement_lines(EXTRAS[extra])
    declared = PYPROJECT["project"]["optional-dependencies"].get(extra)
    expected = "\n".join([f"{extra} = ["] + [f'    "{line}",' for line in lines] + ["]"])
    assert declared is not None and pins(declared) == pins(lines), (
        f"pyproject.toml's extra {extra!r} has drifted from {EXTRAS[extra].relative_to(REPO)}; "
        f"its [project.optional-dependencies] entry should read:\n{expected}")
    assert all(spec.startswith("==") for spec in pins(lines).values()), "exact pins only"


def test_the_package_itself_pulls_nothing_and_builds_with_setuptools() -> None:
    assert PYPROJECT["project"]["dependencies"] == []  # a deployable's dependencies come with its extra
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert PYPROJECT["project"]["name"] == DISTRIBUTION


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_console_script_is_a_cli_that_says_its_version(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert PYPROJECT["project"]["scripts"][script] == SCRIPTS[script]
    module, _, function = SCRIPTS[script].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f"({DISTRIBUTION}) {PYPROJECT['project']['version']}")


def test_the_version_comes_from_metadata_then_the_source_tree_then_says_unknown(tmp_path: Path) -> None:
    # Installed: the distribution's metadata (any installed one shows the lookup works).
    assert package_version("packaging", tmp_path) == importlib.import_module("packaging").__version__
    # A source tree that is not installed: the pyproject.toml the metadata would be built from.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "not-installed-here"\nversion = "3.1.4"\n')
    assert package_version("not-installed-here", tmp_path) == "3.1.4"
    # Another project's file, or none: no number it cannot know.
    assert package_version("something-else", tmp_path) == UNKNOWN
    assert package_version("not-installed-here", tmp_path / "absent") == UNKNOWN
    # This checkout, installed or not: pyproject.toml's version.
    assert package_version() == PYPROJECT["project"]["version"]


def test_v2_and_the_openapi_document_report_the_package_version(tmp_path: Path) -> None:
    app = create_app(stack=EdgeStack.create(Settings(model_dir=tmp_path, workers=0)))
    client = TestClient(app)  # no lifespan: neither route needs the model
    assert client.get("/v2").json()["version"] == package_version()
    assert client.get("/openapi.json").json()["info"]["version"] == package_version()


def test_the_edge_installed_without_its_extra_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_container.__main__ import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` fails, as after a bare `pip install .`
    assert main(["serve"]) == 2
    assert "edge-cloud-inference[edge]" in capsys.readouterr().err
