"""transformers' own model test battery (``ModelTesterMixin``, ``ConfigTester``), from the
source distribution of the *installed* transformers, for ``test_transformers_suite.py``.

Nothing of it is kept in this repository. On first use, ``pip download`` fetches the sdist of
the installed version from the package index, and the few test files needed are extracted into
``<depthattn cache>/transformers-tests/<version>/tests/`` (``$DEPTHATTN_CACHE`` or the user cache
directory, as for prepared data), atomically: they are written into a hidden sibling folder
that is renamed into place when complete. Later runs read the cache. ``$DEPTHATTN_TRANSFORMERS_
SDIST`` may name a local copy of the sdist (an offline machine); ``SuiteUnavailable`` says why
none could be had, and the test module skips with that reason.

The sdist's ``tests/`` holds only the top-level common files: not ``tests/generation/`` nor
``tests/exporters/`` nor ``tests/utils/``, which ``test_modeling_common.py`` and
``test_configuration_common.py`` import from. Stand-ins of our own (``standins/``) take those
modules' places. The files are imported as the package ``depthattn_transformers_tests`` (their
imports are relative), so they never meet this repository's own ``tests`` package.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

from depthattn.data.prepared import cache_dir
from depthattn.utils.atomic import atomic_dir
from depthattn.utils.file_manifest import sha256_file

SDIST_ENV = "DEPTHATTN_TRANSFORMERS_SDIST"  # a local transformers-<version>.tar.gz to use
PACKAGE = "depthattn_transformers_tests"  # the import name of the sdist's tests/ folder
# the sdist's files that the battery runs (the package's __init__.py is written empty)
FILES = ("test_modeling_common.py", "test_configuration_common.py")
STANDINS_DIR = Path(__file__).with_name("standins")
# modules that FILES import and the sdist lacks -> our stand-in for each
STANDINS = {
    "generation.test_utils": "generation_test_utils.py",
    "exporters.test_export": "exporters_test_export.py",
    "utils.test_configuration_utils": "configuration_test_utils.py",
}
PIP_TIMEOUT_S = 600


class SuiteUnavailable(RuntimeError):
    """The battery cannot be had here; the message says why (the tests skip with it)."""


def installed_version() -> str:
    return importlib.metadata.version("transformers")


def suite_dir(version: str | None = None) -> Path:
    return cache_dir() / "transformers-tests" / (version or installed_version())


def _download_sdist(version: str, into: Path) -> Path:
    local = os.environ.get(SDIST_ENV)
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise SuiteUnavailable(f"${SDIST_ENV} names {path}, which is not a file")
        return path
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
               "-d", str(into), f"transformers=={version}"]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SuiteUnavailable(f"pip download of the transformers {version} sdist failed: {e}")
    found = sorted(into.glob("transformers-*.tar.gz"))
    if done.returncode or not found:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise SuiteUnavailable(f"no sdist of transformers {version} could be downloaded "
                               f"(pip exited {done.returncode}: {tail}); set ${SDIST_ENV} to "
                               f"a local copy to run the battery offline")
    return found[0]


def _extract(sdist: Path, version: str, staging: Path) -> None:
    tests = staging / "tests"
    tests.mkdir()
    with tarfile.open(sdist, "r:gz") as tar:
        for name in FILES:
            member = f"transformers-{version}/tests/{name}"
            try:
                source = tar.extractfile(member)
            except KeyError:
                source = None
            if source is None:
                raise SuiteUnavailable(f"{sdist.name} has no {member}: this transformers "
                                       f"version ships another test layout")
            (tests / name).write_bytes(source.read())
    # the package's own module (also what test_configuration_common's
    # direct_transformers_import(Path(__file__).parent) executes)
    (tests / "__init__.py").write_text("")
    (staging / "SOURCE.json").write_text(json.dumps(
        {"transformers": version, "sdist": sdist.name, "sha256": sha256_file(sdist),
         "files": [f"tests/{name}" for name in FILES]}, indent=2) + "\n")


def fetch(version: str | None = None) -> Path:
    """The folder holding ``tests/`` (the battery's files) for ``version`` (default: the
    installed one), downloading and extracting it the first time."""
    version = version or installed_version()
    if ".dev" in version or "+" in version:
        raise SuiteUnavailable(f"transformers {version} is a development or local build: the "
                               f"package index has no sdist of it")
    final = suite_dir(version)
    if all((final / "tests" / name).is_file() for name in FILES):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".download-") as tmp:
        sdist = _download_sdist(version, Path(tmp))

        def write(staging: Path) -> None:
            _extract(sdist, version, staging)

        try:
            atomic_dir(final, write)
        except OSError:
            # another process renamed its complete copy into place first
            if not all((final / "tests" / name).is_file() for name in FILES):
                raise
    return final


def _module_from_file(name: str, path: Path, package_path: Path | None = None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=None if package_path is None
        else [str(package_path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _empty_package(name: str) -> ModuleType:
    module = ModuleType(name)
    module.__path__ = []  # a package with nothing to find on disk: only what is put in it
    sys.modules[name] = module
    return module


def load() -> tuple[ModuleType, ModuleType]:
    """``(test_modeling_common, test_configuration_common)`` of the installed transformers.
    Raises ``SuiteUnavailable`` if they cannot be had or imported here."""
    if f"{PACKAGE}.test_modeling_common" in sys.modules:
        return (sys.modules[f"{PACKAGE}.test_modeling_common"],
                sys.modules[f"{PACKAGE}.test_configuration_common"])
    for needed in ("parameterized",):  # imported by test_modeling_common; the `test` extra
        if importlib.util.find_spec(needed) is None:
            raise SuiteUnavailable(f"transformers' test battery needs the {needed!r} package "
                                   f"(pip install -e '.[test]')")
    tests = fetch() / "tests"
    _module_from_file(PACKAGE, tests / "__init__.py", package_path=tests)
    for dotted, filename in STANDINS.items():
        parent, _, leaf = dotted.rpartition(".")
        package = sys.modules.get(f"{PACKAGE}.{parent}") or _empty_package(f"{PACKAGE}.{parent}")
        setattr(sys.modules[PACKAGE], parent, package)
        setattr(package, leaf, _module_from_file(f"{PACKAGE}.{dotted}", STANDINS_DIR / filename))
    try:
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except ImportError as e:
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        raise SuiteUnavailable(f"transformers {installed_version()}'s test files import what "
                               f"this environment lacks: {e}") from e
    return modeling, configuration
