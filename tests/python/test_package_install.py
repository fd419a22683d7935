"""The package built and installed into a fresh virtual environment exactly as README says,
then README's Python example run in it against a real daemon.

Needs the package index (pip fetches setuptools and grpcio-tools for the
build, grpcio and protobuf for the install).
"""

import os
import re
import subprocess
import venv

import pytest

from conftest import REPO


def readme_python_section():
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## Python\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Python' section"
    return match.group(1)


def readme_install_command():
    """The README's install line: `python3 -m venv .venv && .venv/bin/pip install ./client/python`."""
    section = readme_python_section()
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if "pip install ./client/python" in line:
                return line
    pytest.fail("README's Python section shows no `pip install ./client/python` line")


def readme_example():
    blocks = re.findall(r"```python\n(.*?)```", readme_python_section(), re.S)
    assert blocks, "README's Python section has no python example"
    return blocks[0]


def test_readme_example_is_five_lines():
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert len(lines) == 5, lines


def test_install_into_a_fresh_venv_as_readme_says(daemon, tmp_path):
    command = readme_install_command()
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install ./client/python")
    env_dir = tmp_path / ".venv"
    # The README's command, run from the repository root with the venv elsewhere:
    # `python3 -m venv .venv` is this interpreter's venv module, `.venv/bin/pip`
    # the new environment's pip.
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip_line = command.split("&&", 1)[1].strip().replace(".venv/", str(env_dir) + "/", 1)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run(pip_line.split() + ["--disable-pip-version-check", "-q"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, "pip install failed:\n" + result.stdout + result.stderr

    python = str(env_dir / "bin" / "python")
    probe = subprocess.run(
        [python, "-c",
         "import flashcore, flashcore.v1.flashcore_pb2 as pb, importlib.metadata as m;"
         "print(flashcore.__file__); print(pb.__file__);"
         "print(sorted(m.requires('flashcore') or []))"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    package_file, stub_file, requires = probe.stdout.splitlines()
    assert package_file.startswith(str(env_dir)), package_file
    assert stub_file.startswith(str(env_dir)), stub_file
    assert "grpcio>=" in requires and "protobuf" in requires, requires

    run = subprocess.run([python, "-c", readme_example()], cwd=tmp_path,
                         env=dict(env, FLASHCORE_ADDRESS=daemon.address),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, "README's example failed:\n" + run.stdout + run.stderr
    key = run.stdout.split()[0]
    assert re.fullmatch(r"[0-9a-f]{64}", key), run.stdout


def test_no_generated_stub_is_committed():
    files = subprocess.run(["git", "ls-files", "client/python"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    assert files, "client/python is not in git"
    assert not [f for f in files if re.search(r"_pb2(_grpc)?\.pyi?$|\.binpb$", f)], files
