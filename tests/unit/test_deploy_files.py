"""The deployment files hold together: Dockerfile, compose file and systemd unit run real
`fedtrace` commands with flags that exist, as a dedicated non-root user, with health checks;
and the node's systemd readiness messages reach a real notify socket.

No container engine runs here, so images are not built; what can be checked without one is.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedtrace.cli import build_parser
from node.metrics import DEFAULT_METRICS_PORT
from node.systemd import notify_ready, notify_stopping

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
UNIT = ROOT / "deploy" / "systemd" / "fedtrace-node.service"
CHECKER = Path(sys.executable).parent / "check-jsonschema"
NODE_DIR = "/srv/fedtrace"
GRPC_PORT = 7001


def assert_fedtrace_command(argv: list[str], where: str) -> argparse.Namespace:
    """`argv` (after the `fedtrace` program name) parses: the command and every flag exist."""
    parser = build_parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        message = f"{where}: `fedtrace {shlex.join(argv)}` does not parse: {exc}"
        raise AssertionError(message) from None
    assert callable(getattr(args, "run", None)), f"{where}: {argv} names no command"
    return args


def test_a_command_or_flag_that_does_not_exist_is_caught() -> None:
    with pytest.raises(AssertionError, match="does not parse"):
        assert_fedtrace_command(["node", "serve", NODE_DIR, "--no-such-flag"], "test")
    with pytest.raises(AssertionError, match="does not parse"):
        assert_fedtrace_command(["node", "launch", NODE_DIR], "test")


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), f"use the exec form (a JSON array): {arguments}"
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_base_image_install_and_entry_point() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert "pip install ." in runs
    assert exec_form(dict(instructions)["ENTRYPOINT"]) == ["fedtrace"]
    cmd = exec_form(dict(instructions)["CMD"])
    assert cmd == ["node", "serve", NODE_DIR]
    assert_fedtrace_command(cmd, "Dockerfile CMD")


def test_dockerfile_runs_as_a_dedicated_non_root_user() -> None:
    instructions = dockerfile_instructions()
    users = [args for name, args in instructions if name == "USER"]
    assert users, "the image must name a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, (name, _) in enumerate(instructions) if name == "USER")
    assert instructions[-1][0] in ("CMD", "ENTRYPOINT") and last_user < len(instructions) - 1
    assert not any(name == "RUN" for name, _ in instructions[last_user:]), "RUN after USER"
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert "useradd --system" in runs and "--shell /usr/sbin/nologin" in runs


def test_dockerfile_volume_ports_and_healthcheck() -> None:
    instructions = dockerfile_instructions()
    values = dict(instructions)
    assert exec_form(values["VOLUME"]) == [NODE_DIR]
    assert {int(port) for port in values["EXPOSE"].split()} == {GRPC_PORT, DEFAULT_METRICS_PORT}
    healthcheck = values["HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--start-period=\d+s", options)
    argv = exec_form(command.strip())
    assert argv[:1] == ["fedtrace"]
    args = assert_fedtrace_command(argv[1:], "Dockerfile HEALTHCHECK")
    assert argv[1:] == ["node", "health", NODE_DIR] and args.node_dir == NODE_DIR


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for name, args in dockerfile_instructions():
        if name == "COPY":
            copied.update(
                part.rstrip("/") for part in args.split()[:-1] if not part.startswith("--")
            )
    assert copied <= admitted
    for path in copied:
        assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"


# --- compose ------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("ruamel.yaml", reason="ruamel.yaml comes with check-jsonschema")
    loaded = yaml.YAML(typ="safe", pure=True).load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def interpolated(text: str, code: str = "EE") -> str:
    """What compose and the init shell script make of a line, for the node `code`."""
    return text.replace("$$root", NODE_DIR).replace("$$code", code).replace("$$", "$")


def init_script() -> str:
    init = load_compose()["services"]["init"]
    assert init["entrypoint"][0] == "/bin/sh"
    (script,) = init["command"]
    assert isinstance(script, str)
    return script


def test_compose_is_valid_for_the_compose_specification() -> None:
    if not CHECKER.exists():
        pytest.skip(f"{CHECKER} is not installed")
    done = subprocess.run(
        [str(CHECKER), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_an_init_service_then_three_nodes() -> None:
    services = load_compose()["services"]
    assert {"init", "ee", "fr", "sg"} <= set(services)
    for name, code in (("ee", "EE"), ("fr", "FR"), ("sg", "SG")):
        service = services[name]
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert any(volume.endswith(f":{NODE_DIR}") for volume in service["volumes"])
        node_dir = f"{NODE_DIR}/nodes/{code}"
        assert service["command"] == ["node", "serve", node_dir]
        assert_fedtrace_command(service["command"], f"compose service {name}")
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "fedtrace"]
        args = assert_fedtrace_command(test[2:], f"compose service {name} healthcheck")
        assert args.node_dir == node_dir
    investigator = services["investigator"]
    assert_fedtrace_command(investigator["command"], "compose service investigator")


def test_compose_init_uses_real_commands_and_flags() -> None:
    script = init_script()
    commands = [
        line.strip() for line in script.splitlines() if line.strip().startswith("fedtrace ")
    ]
    assert [shlex.split(c)[1:3] for c in commands] == [
        ["pki", "init"],
        ["node", "init"],
        ["policy", "check"],
        ["node", "ingest"],
        ["node", "ingest"],
        ["node", "ingest"],
        ["pki", "issue"],
    ]
    for command in commands:
        argv = shlex.split(interpolated(command))[1:]
        assert_fedtrace_command(argv, "compose init")
    node_init = shlex.split(interpolated(commands[1]))
    assert node_init[node_init.index("--listen") + 1] == f"0.0.0.0:{GRPC_PORT}"
    for code in ("EE", "FR", "SG"):
        assert (ROOT / "policies" / f"{code}.toml").is_file()
        assert f'address = "{code.lower()}:{GRPC_PORT}"' in script


def test_compose_init_data_step_runs(tmp_path: Path) -> None:
    """The one step not done by a fedtrace command: synthetic data and the watchlist."""
    (line,) = [line for line in init_script().splitlines() if line.strip().startswith("python ")]
    argv = shlex.split(interpolated(line.replace("20000", "300")))
    assert argv[:2] == ["python", "-c"]
    data, watchlist = tmp_path / "data", tmp_path / "watchlist.txt"
    subprocess.run(
        [sys.executable, "-c", argv[2], str(data), str(watchlist)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    for code in ("EE", "FR", "SG"):
        for table in ("transactions", "subjects", "subject_wallets"):
            assert (data / code / f"{table}.csv").is_file()
    assert len(watchlist.read_text().splitlines()) == 200


def test_compose_init_writes_a_federation_file_naming_the_services(tmp_path: Path) -> None:
    from coordinator.federation import load_federation

    script = interpolated(init_script())
    body = script.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    path = tmp_path / "federation.toml"
    path.write_text(textwrap.dedent(body))
    federation = load_federation(path)
    assert federation.investigator == "FR"
    assert [(n.name, n.address) for n in federation.nodes] == [
        ("EE", f"ee:{GRPC_PORT}"),
        ("FR", f"fr:{GRPC_PORT}"),
        ("SG", f"sg:{GRPC_PORT}"),
    ]
    assert federation.cert == tmp_path / "investigator" / "cert.pem"


@pytest.mark.slow
def test_compose_init_script_builds_the_demo_federation(tmp_path: Path) -> None:
    """The whole init script under sh, with this checkout standing in for the image."""
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no POSIX shell")
    root = tmp_path / "srv"
    root.mkdir()
    script = (
        init_script()
        .replace("$$", "$")  # compose's escape, as compose passes the script to sh
        .replace(NODE_DIR, str(root))
        .replace("/opt/fedtrace/policies", str(ROOT / "policies"))
        .replace("20000", "300")
    )
    shims = (
        f'fedtrace() {{ "{sys.executable}" -m fedtrace.cli "$@"; }}\n'
        f'python() {{ "{sys.executable}" "$@"; }}\n'
    )
    done = subprocess.run(
        [shell, "-euc", shims + script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for code in ("EE", "FR", "SG"):
        node_dir = root / "nodes" / code
        assert 'listen = "0.0.0.0:7001"' in (node_dir / "node.toml").read_text()
        assert (node_dir / "policy.toml").read_text() == (
            ROOT / "policies" / f"{code}.toml"
        ).read_text()
        assert (node_dir / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    assert (root / "investigator" / "cert.pem").is_file()
    assert (root / "federation.toml").is_file()
    again = subprocess.run(
        [shell, "-euc", shims + script], capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0 and "already initialised" in again.stdout


# --- systemd ------------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_is_a_hardened_notify_service() -> None:
    service = unit()["Service"]
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": NODE_DIR,
        "User": "fedtrace",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service["User"] not in ("root", "0")
    program, *argv = shlex.split(service["ExecStart"])
    assert program.endswith("/fedtrace") and os.path.isabs(program)
    assert argv == ["node", "serve", NODE_DIR]
    assert_fedtrace_command(argv, "systemd ExecStart")
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify also checks that ExecStart exists: point it at this environment's fedtrace.
    installed = Path(sys.executable).parent / "fedtrace"
    if not installed.exists():
        pytest.skip(f"no {installed} to stand in for /opt/fedtrace/bin/fedtrace")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/fedtrace/bin/fedtrace", str(installed)))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    mine = [line for line in output.splitlines() if UNIT.name in line]
    assert not mine, output  # unknown keys and bad values are warnings: none is allowed


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        yield listener, str(path)


def test_ready_and_stopping_reach_the_notify_socket(
    notify_socket: tuple[socket.socket, str],
) -> None:
    listener, path = notify_socket
    environ = {"NOTIFY_SOCKET": path}
    assert notify_ready(environ=environ)
    assert listener.recv(4096) == b"READY=1"
    assert notify_ready("serving on 0.0.0.0:7001", environ=environ)
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving on 0.0.0.0:7001"
    assert notify_stopping(environ=environ)
    assert listener.recv(4096) == b"STOPPING=1"


def test_notify_uses_the_process_environment(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listener, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify_ready()
    assert listener.recv(4096) == b"READY=1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_abstract_notify_socket() -> None:
    name = f"fedtrace-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(5)
        assert notify_ready(environ={"NOTIFY_SOCKET": f"@{name}"})
        assert listener.recv(4096) == b"READY=1"


def test_without_a_notify_socket_nothing_happens(tmp_path: Path) -> None:
    assert notify_ready(environ={}) is False
    assert notify_stopping(environ={"NOTIFY_SOCKET": ""}) is False
    assert notify_ready(environ={"NOTIFY_SOCKET": "relative/path"}) is False
    # A socket that went away is logged, never raised: the node keeps serving.
    assert notify_ready(environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
