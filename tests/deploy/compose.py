"""Read the compose files as docker compose would, and turn a service into a local process.

`load` applies the Compose Specification's interpolation (``${VAR}``, ``${VAR:-default}``,
``${VAR:?message}``, ``$$``) from the variables a ``.env`` would give; `Localizer` maps a
service's command and environment onto this machine: every service host name becomes
127.0.0.1, every port the file uses moves by one uniform offset (so the run never collides
with another one on this machine), and ``redis``/``postgres`` become this machine's
servers. Nothing else in the file is changed: the commands, the variable names and values
are the file's own.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGE = "conclave:local"
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty: compose refuses the file."""


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """``value`` with each ``${...}`` replaced as compose does (``$$`` is a literal ``$``)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        found = variables.get(name)
        empty = not found
        if op in (":?", "?") and (found is None or (op == ":?" and empty)):
            raise InterpolationError(f"{name}: {arg}")
        if op in (":-", "-") and (found is None or (op == ":-" and empty)):
            return arg
        return found or ""

    return _VAR.sub(one, value)


def _walk(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_walk(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: _walk(v, variables) for k, v in node.items()}
    return node


def raw(name: str) -> dict[str, Any]:
    """The compose file ``name`` at the repository root, YAML merge keys resolved."""
    loaded = yaml.safe_load((REPO / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def load(name: str, variables: Mapping[str, str]) -> dict[str, Any]:
    """The compose file, interpolated with ``variables`` (what ``.env`` gives compose)."""
    return dict(_walk(raw(name), variables))


def required_variables(names: Iterable[str]) -> set[str]:
    """The variables the files refuse to start without (``${VAR:?...}``)."""
    found: set[str] = set()
    for name in names:
        text = (REPO / name).read_text()
        found |= {m.group("name") for m in _VAR.finditer(text) if m.group("op") in (":?", "?")}
    return found


def env_example() -> dict[str, str]:
    """The variables ``.env.example`` sets (commented lines are not settings)."""
    out: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def conclave_services(doc: Mapping[str, Any]) -> list[str]:
    """The services that run the Conclave image, in an order that respects ``depends_on``."""
    services: Mapping[str, Any] = doc["services"]
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        order.append(name)

    for name in services:
        visit(name)
    return [n for n in order if services[n].get("image") == IMAGE]


def file_ports(doc: Mapping[str, Any]) -> set[int]:
    """Every port the Conclave services use: in commands, ``expose``, ``ports`` and URLs."""
    text = yaml.safe_dump(
        {n: doc["services"][n] for n in conclave_services(doc)}, default_flow_style=True
    )
    ports = {int(p) for p in re.findall(r"(?<![\d.])(\d{4})(?!\d)", text)}
    return {p for p in ports if p >= 1024}


def free_offset(ports: set[int], start: int = 20_000, step: int = 997) -> int:
    """An offset under which every port in ``ports`` is free on this machine now."""
    for offset in range(start, 60_000 - max(ports), step):
        if all(_free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no offset leaves every port free")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Localizer:
    """Maps a service of the file onto local processes (see the module docstring)."""

    doc: Mapping[str, Any]
    offset: int
    redis_url: str | None
    database_url: str | None

    @property
    def hosts(self) -> set[str]:
        return set(self.doc["services"])

    def port(self, port: int) -> int:
        return port + self.offset

    def _value(self, value: str) -> str:
        def host_port(m: re.Match[str]) -> str:
            host, port = m.group(1), int(m.group(2))
            host = "127.0.0.1" if host in self.hosts or host == "127.0.0.1" else host
            return f"//{host}:{self.port(port)}"

        return re.sub(r"//([A-Za-z0-9.-]+):(\d+)", host_port, value)

    def _token(self, token: str, ports: set[int]) -> str:
        if token.isdigit() and int(token) in ports:
            return str(self.port(int(token)))
        return self._value(token)

    def command(self, argv: list[str]) -> list[str]:
        """The service's command with its ports moved."""
        ports = file_ports(self.doc)
        return [self._token(t, ports) for t in argv]

    def healthcheck(self, service: str) -> list[str] | None:
        """The ``CMD`` form of the service's healthcheck, ports moved; None without one."""
        check = self.doc["services"][service].get("healthcheck")
        if not check:
            return None
        test = check["test"]
        assert test[0] == "CMD", f"{service}: healthcheck must be the exec (CMD) form"
        return self.command(list(test[1:]))

    def environment(self, service: str, env_file: Mapping[str, str]) -> dict[str, str]:
        """What the container's environment holds: ``env_file`` (``.env``) then
        ``environment``; the stores are this machine's, hosts and ports moved."""
        spec = self.doc["services"][service]
        env = dict(env_file) if spec.get("env_file") else {}
        env |= {k: str(v) for k, v in (spec.get("environment") or {}).items()}
        ports = file_ports(self.doc)
        out: dict[str, str] = {}
        for key, value in env.items():
            if key == "REDIS_URL" and self.redis_url:
                out[key] = self.redis_url
            elif key == "DATABASE_URL" and self.database_url:
                out[key] = self.database_url
            else:
                out[key] = self._token(value, ports)
        return out


def base_env(bin_dir: Path) -> dict[str, str]:
    """This machine's environment without any Conclave setting or store, ``bin_dir`` first
    on PATH (the image's ``/opt/venv/bin``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONCLAVE_") and k not in ("REDIS_URL", "DATABASE_URL")}  # fmt: skip
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
