"""Developer sessions: ``nox -s tests lint typecheck docs bench slow``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The fast test suite, as CI runs it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The long tests: soaks, big floods, thousands of peers."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, including the ASYNC rules."""
    session.install("ruff")
    session.run("ruff", "check", "trio_dtlsmux", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, and pyright's view of the public API."""
    # Not editable: pyright cannot see a package behind an editable
    # install's import hook, and would score an empty API.
    session.install(".[metrics]", "mypy>=1.10", "pyright")
    session.run("mypy", "--strict", "trio_dtlsmux")
    session.run("pyright", "--verifytypes", "trio_dtlsmux", "--ignoreexternal")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors."""
    session.install("-e", ".", "-r", "docs/requirements.txt")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite; ``nox -s bench -- --quick`` for a smoke run."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks.run", *session.posargs)
