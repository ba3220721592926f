"""Apache Kafka's broker as jars from Maven Central: resolved once into a cache, then reused.

A Kafka release's ``bin/kafka-server-start.sh`` runs ``java -cp 'libs/*' kafka.Kafka server.properties``;
``libs/`` is ``org.apache.kafka:kafka_2.13`` with its runtime dependencies plus the log4j2 SLF4J binding
the release tarball adds (it is not in the published POM: without it the broker logs nothing). We ask
Maven for exactly that set and copy it into ``<cache>/<version>/libs``; a later start finds it there and
downloads nothing. The cache is outside the repository (``~/.cache/mindstream/kafka`` unless
``kafka.embedded_cache_dir`` or ``XDG_CACHE_HOME`` says otherwise); Maven's own repository
(``~/.m2``) keeps the downloaded artifacts too. Concurrent resolutions (parallel test sessions) are
serialised by a lock file; the ``libs`` directory appears atomically (rename) once complete.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["MIN_JAVA", "JavaMissing", "KafkaDist", "java_binary", "java_major", "resolve_kafka"]

MIN_JAVA: Final = 17
# log4j2 version of each Kafka line's release tarball (its gradle/dependencies.gradle)
_LOG4J: Final = {"4.0": "2.24.3", "4.1": "2.24.3"}  # checked lines only: add one after reading its build
_SLF4J: Final = "1.7.36"  # log4j-slf4j-impl binds SLF4J 1.7: a 2.x slf4j-api would ignore it
_RESOLVE_TIMEOUT_S: Final = 900.0
_INSTALL_HINT: Final = (
    "install Java {java}+ and Maven (Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven), "
    "or set MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS to an existing Kafka cluster"
)


class JavaMissing(RuntimeError):
    """Java (17+) or, for the first start, Maven is not available."""


@dataclass(frozen=True)
class KafkaDist:
    """A resolved broker: its version, the ``libs`` directory and the Java that runs it."""

    version: str
    libs: Path
    java: Path

    @property
    def classpath(self) -> str:
        return str(self.libs / "*")


def _hint() -> str:
    return _INSTALL_HINT.format(java=MIN_JAVA)


def java_binary() -> Path:
    """``$JAVA_HOME/bin/java`` when set, else ``java`` on PATH; :class:`JavaMissing` if neither."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return Path(home) / "bin" / "java"
    found = shutil.which("java")
    if found is None:
        raise JavaMissing(f"the embedded Kafka broker needs Java {MIN_JAVA}+, and no `java` was found: {_hint()}")
    return Path(found)


def java_major(java: Path) -> int:
    """The major version ``java -version`` reports (``1.8.0_x`` -> 8, ``17.0.15`` -> 17)."""
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise JavaMissing(f"could not read the version of {java}: {(out.stderr or out.stdout).strip()[:200]}")
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    return minor if major == 1 else major


def _pom(version: str) -> str:
    line = ".".join(version.split(".")[:2])
    log4j = _LOG4J.get(line)
    if log4j is None:
        raise ValueError(f"Kafka {version}: no known log4j2 version for the {line} line (known: {sorted(_LOG4J)})")
    deps = [
        ("org.apache.kafka", "kafka_2.13", version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", log4j),
        ("org.apache.logging.log4j", "log4j-core", log4j),
        ("org.apache.logging.log4j", "log4j-api", log4j),
        ("org.slf4j", "slf4j-api", _SLF4J),
    ]
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mindstream.embedded</groupId><artifactId>kafka-broker</artifactId><version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mindstream" / "kafka"


def resolve_kafka(version: str, cache_dir: Path | None = None) -> KafkaDist:
    """The broker's jars for ``version``: from the cache, else resolved by Maven into it (first start)."""
    java = java_binary()
    major = java_major(java)
    if major < MIN_JAVA:
        raise JavaMissing(f"the embedded Kafka broker needs Java {MIN_JAVA}+, found Java {major} at {java}: {_hint()}")
    root = (cache_dir or default_cache_dir()) / version
    libs = root / "libs"
    if _complete(libs, version):
        return KafkaDist(version, libs, java)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be resolving the same version
        if not _complete(libs, version):
            _download(version, root, libs)
    return KafkaDist(version, libs, java)


def _complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file()


def _download(version: str, root: Path, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JavaMissing(f"the first start of the embedded Kafka {version} needs Maven to fetch it: {_hint()}")
    work = root / "resolve"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / "pom.xml").write_text(_pom(version))
    staged = work / "libs"
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(work / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staged}",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_RESOLVE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"Maven did not resolve Kafka {version} within {_RESOLVE_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0 or not _complete(staged, version):
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise RuntimeError(f"Maven could not resolve org.apache.kafka:kafka_2.13:{version}:\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    os.replace(staged, libs)
    shutil.rmtree(work, ignore_errors=True)
