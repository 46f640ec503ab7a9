"""Installed the way users install it: the image's Python steps, outside Docker.

The Dockerfile is read with BuildKit's own parser (the ``dockerfile`` package). Its Python steps
(``scripts/package.sh build`` in the build stage, ``scripts/package.sh install`` in the final
one) run here as they run in the image, with the container's paths mapped to temporary
directories: the sdist and the wheel are built from a copy of the build context, and the wheel
is installed into a fresh virtual environment outside the checkout. The installed command then
runs the demo migration end to end against the local services.
"""

from __future__ import annotations

import email
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

from ..harness import KAFKA, MONGO_BASE, ROOT

# Each of these builds the wheel or installs it: slow, though no service is needed.
pytestmark = pytest.mark.package

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SCHEMA = (ROOT / "schemas" / "envelope.avsc").read_bytes()


@dataclass
class Image:
    """What the Dockerfile's Python steps produced, on the host."""

    root: Path
    paths: dict[str, Path]  # container path -> host path
    runs: list[str] = field(default_factory=list)  # the RUN commands executed
    output: str = ""  # what they printed

    def host(self, container_path: str) -> Path:
        for prefix in sorted(self.paths, key=len, reverse=True):
            if container_path == prefix or container_path.startswith(prefix.rstrip("/") + "/"):
                return self.paths[prefix] / container_path[len(prefix):].lstrip("/")
        raise AssertionError(f"no host directory for {container_path}")

    def map(self, command: str) -> str:
        for prefix in sorted(self.paths, key=len, reverse=True):
            command = re.sub(rf"(?<![\w/]){re.escape(prefix)}(?=[/\s]|$)",
                             str(self.paths[prefix]), command)
        return command

    @property
    def venv(self) -> Path:
        return self.host("/opt/cdc-migrator")

    @property
    def wheel(self) -> Path:
        (wheel,) = self.host("/dist").glob("cdc_migrator-*.whl")
        return wheel

    @property
    def sdist(self) -> Path:
        (sdist,) = self.host("/dist").glob("cdc_migrator-*.tar.gz")
        return sdist


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd.upper() == "FROM":
            stages.append([])
        stages[-1].append(command)
    return stages


def _copy_context(destination: Path) -> None:
    """The Docker build context: the checkout without what .dockerignore excludes.

    As Docker reads the file: a pattern matches a path or any of its parent directories,
    ``**/`` any depth, ``!`` takes an exception back in, and the last matching line wins.
    """
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def matches(pattern: str, rel: str) -> bool:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            candidate = "/".join(parts[:i])
            if fnmatch.fnmatch(candidate, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pattern[3:])):
                return True
        return False

    def ignored(rel: str) -> bool:
        verdict = False
        for rule in rules:
            if matches(rule.lstrip("!"), rel):
                verdict = not rule.startswith("!")
        return verdict

    exceptions = [rule[1:] for rule in rules if rule.startswith("!")]
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not ignored((here / d).as_posix())
                   or any(e.startswith((here / d).as_posix() + "/") for e in exceptions)]
        for name in files:
            rel = (here / name).as_posix()
            if ignored(rel):
                continue
            source, target = ROOT / rel, destination / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                shutil.copy2(source, target)


def _run(image: Image, command: str, cwd: Path) -> None:
    mapped = image.map(command)
    image.runs.append(command)
    done = subprocess.run(["sh", "-c", mapped], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    image.output += done.stdout + done.stderr
    assert done.returncode == 0, f"RUN {command}\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Run the Dockerfile's Python steps (the RUN lines calling scripts/package.sh)."""
    root = tmp_path_factory.mktemp("image")
    image = Image(root, {"/src": root / "src", "/dist": root / "dist",
                         "/tmp/dist": root / "tmp-dist", "/opt/cdc-migrator": root / "opt-venv",
                         "/app": root / "app"})
    build, final = _stages()
    workdir = Path("/")
    for stage in (build, final):
        for command in stage:
            cmd, value = command.cmd.upper(), command.value
            if cmd == "WORKDIR":
                workdir = Path(value[0])
                image.host(str(workdir)).mkdir(parents=True, exist_ok=True)
            elif cmd == "COPY" and value[0] == "." and value[-1] == "/src":
                _copy_context(image.host("/src"))
            elif cmd == "COPY" and any(f.startswith("--from=") for f in command.flags):
                target = image.host(value[-1])
                target.mkdir(parents=True, exist_ok=True)
                for source in value[:-1]:
                    host = image.host(source)
                    for item in (host.iterdir() if host.is_dir() else [host]):
                        shutil.copy2(item, target / item.name)
            elif cmd == "RUN" and "package.sh" in value[0]:
                _run(image, value[0], image.host(str(workdir)))
    return image


def test_the_image_installs_the_package_only_through_the_package_script(image: Image) -> None:
    assert [shlex.split(r)[:3] for r in image.runs] == [
        ["sh", "scripts/package.sh", "build"], ["sh", "/tmp/dist/package.sh", "install"]]
    for stage in _stages():
        for command in stage:
            if command.cmd.upper() == "RUN" and "package.sh" not in command.value[0]:
                assert not re.search(r"\b(pip|python)\b", command.value[0]), (
                    f"a Python step outside scripts/package.sh is not tested: {command.original}")


def test_building_prints_no_deprecation_warning(image: Image) -> None:
    assert not re.search(r"deprecat", image.output, re.IGNORECASE), image.output[-3000:]


def test_the_wheel_carries_the_envelope_schema_and_clean_metadata(image: Image) -> None:
    with zipfile.ZipFile(image.wheel) as wheel:
        names = wheel.namelist()
        assert wheel.read("cdc_migrator/envelope.avsc") == SCHEMA
        assert "cdc_migrator/py.typed" in names
        # The compiled hot path, built; its source is in the sdist only.
        assert [n for n in names if fnmatch.fnmatch(n, "cdc_migrator/core/_rawbson.*.so")]
        assert "cdc_migrator/core/_rawbson.pyi" in names
        assert not [n for n in names if n.endswith(".c")]
        metadata = email.message_from_bytes(
            wheel.read(f"cdc_migrator-{VERSION}.dist-info/METADATA"))
    assert not [n for n in names if n.startswith(("tests/", "schemas/", "transforms/"))]
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "Programming Language :: Python :: 3.11" in metadata.get_all("Classifier")
    assert {u.split(",")[0] for u in metadata.get_all("Project-URL")} >= {
        "Homepage", "Documentation", "Changelog", "Issues"}


def test_the_sdist_holds_the_schema_as_a_file(image: Image) -> None:
    with tarfile.open(image.sdist) as sdist:
        member = sdist.getmember(f"cdc_migrator-{VERSION}/cdc_migrator/envelope.avsc")
        assert member.isfile()
        extracted = sdist.extractfile(member)
        assert extracted is not None and extracted.read() == SCHEMA
        assert f"cdc_migrator-{VERSION}/LICENSE" in sdist.getnames()
        assert {f"cdc_migrator-{VERSION}/setup.py",
                f"cdc_migrator-{VERSION}/cdc_migrator/core/_rawbson.c"} <= set(sdist.getnames())


def test_the_installed_command_runs_outside_the_checkout(image: Image, tmp_path: Path) -> None:
    command = image.venv / "bin" / "cdc-migrator"
    version = subprocess.run([command, "--version"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
    assert version.returncode == 0, version.stderr
    # Built where a C compiler is at hand (as the image's build stage has): the compiled path.
    assert version.stdout.strip() == f"cdc-migrator, version {VERSION} (raw BSON: compiled)"
    module = subprocess.run([image.venv / "bin" / "python", "-I", "-m", "cdc_migrator",
                             "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert module.returncode == 0, module.stderr
    assert "cutover" in module.stdout
    where = subprocess.run([image.venv / "bin" / "python", "-I", "-c",
                            "import cdc_migrator; print(cdc_migrator.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(image.venv), where.stdout


def test_without_a_c_compiler_the_wheel_builds_without_the_extension_and_runs_python(
        image: Image, tmp_path: Path) -> None:
    # README: without a compiler the package builds and installs anyway, and runs the Python
    # path. The sdist the image built, built again with a compiler that always fails.
    with tarfile.open(image.sdist) as sdist:
        sdist.extractall(tmp_path, filter="data")
    source = tmp_path / f"cdc_migrator-{VERSION}"
    env = {**os.environ, "CC": "/bin/false"}
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir",
                            tmp_path / "dist", source], capture_output=True, text=True,
                           env=env, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "building extension \"cdc_migrator.core._rawbson\" failed" in built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("cdc_migrator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert not [n for n in names if n.endswith(".so")]
        archive.extractall(tmp_path / "site")
    # The wheel's package ahead of the checkout's (this interpreter has the dependencies).
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); import cdc_migrator; "
            "assert cdc_migrator.__file__.startswith(sys.path[0]), cdc_migrator.__file__; "
            "from cdc_migrator.cli import main; main(['--version'])")
    version = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"cdc-migrator, version {VERSION} (raw BSON: python)"


@pytest.mark.services
def test_the_installed_wheel_runs_the_demo_migration_end_to_end(image: Image,
                                                                 tmp_path: Path) -> None:
    # As in the image: the migrations and their schemas under /app, the working directory.
    app = image.host("/app")
    shutil.copytree(ROOT / "transforms", app / "transforms", dirs_exist_ok=True)
    shutil.copytree(ROOT / "schemas", app / "schemas", dirs_exist_ok=True)
    env = {**os.environ, "MONGODB_URI": MONGO_BASE, "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
           "CDC_MIGRATOR_TRANSFORMS": str(app / "transforms"), "DEMO_USERS": "2000",
           "DEMO_RATE": "800"}
    # -I: only the installed package can be imported (not the checkout, not the script's
    # directory on sys.path).
    demo = subprocess.run([image.venv / "bin" / "python", "-I", ROOT / "scripts" / "demo.py"],
                          capture_output=True, text=True, cwd=app, env=env, timeout=600)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-4000:]
    assert "backfill_small_config: scanned" in output
    assert "cutover refused" in output
    assert re.search(r"add_default_role: cut over\.", output), output[-4000:]
