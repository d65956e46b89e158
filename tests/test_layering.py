"""The packages' layering, read from their imports with `ast`: wire < broker < {edge, ledger}
< monitor < deploy. A package imports only packages below it (edge and ledger not each other), and
wire/, the pure protocol, imports no other project package and nothing that does I/O or reads
a clock: those belong to the adapters (broker.clock, ledger.service, edge.meter, ...).

A failure names each offending import by file, line and statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BELOW = {  # package: the project packages it may import (itself aside)
    "wire": set(),
    "broker": {"wire"},
    "edge": {"wire", "broker"},
    "ledger": {"wire", "broker"},
    "monitor": {"wire", "broker", "edge", "ledger"},
    "deploy": {"wire", "broker", "edge", "ledger", "monitor"},
}
PROJECT = {*BELOW, "tests", "bench"}  # top-level names that are this repository's own code
# What wire/ may not import: the network, threads, processes, files, databases, clocks and
# hidden randomness. Its callers pass bytes, keys and the time in; hashlib, cbor2 and nacl are fine.
NOT_IN_WIRE = frozenset(
    {
        "asyncio",
        "datetime",
        "multiprocessing",
        "os",
        "pathlib",
        "random",
        "secrets",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "sqlite3",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "time",
    }
)


def imports(path: Path, package: str) -> list[tuple[int, str, str]]:
    """(line, top-level module, the statement) of every import in a file, at any depth
    (inside functions too); a relative import counts as its own package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0], ast.unparse(node)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = package if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, module, ast.unparse(node)))
    return found


def violations(package: str, allowed: set[str], forbidden: frozenset[str] = frozenset()) -> list[str]:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module, statement in imports(path, package):
            if module in PROJECT - allowed - {package}:
                why = f"{package} may import only {sorted(allowed) or 'no other project package'}"
            elif module in forbidden:
                why = f"{package} does no I/O and reads no clock"
            else:
                continue
            bad.append(f"{path.relative_to(REPO)}:{line}: `{statement}`: {why}")
    return bad


@pytest.mark.parametrize("package", sorted(BELOW))
def test_a_package_imports_only_packages_below_it(package):
    bad = violations(package, BELOW[package])
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_wire_does_no_io_and_reads_no_clock():
    bad = violations("wire", BELOW["wire"], NOT_IN_WIRE)
    assert not bad, "I/O or a clock in the pure protocol:\n" + "\n".join(bad)


def test_every_package_is_read():
    """A new top-level package needs its place in BELOW; each one has files to check."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(BELOW)
    assert all(any((REPO / p).rglob("*.py")) for p in BELOW)
