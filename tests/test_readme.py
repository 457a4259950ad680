"""The README's Quickstart is what CI and a new user run: keep it and .ci/run in step."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no ```bash block under ## Quickstart"
    return [
        line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ]


def test_quickstart_has_setup_and_test_commands():
    cmds = quickstart_commands()
    assert len(cmds) == 2
    assert "pip install" in cmds[0] and "segray" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in ci


def _setup_system(tmp_path: Path, chromium: str) -> tuple[subprocess.CompletedProcess, str]:
    """scripts/setup-system.sh on a machine whose only tools are a recording apt-get and sudo
    (PATH holds nothing else, so no chromium is found on it)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True)
    for name, body in [("apt-get", ""), ("sudo", '\nexec "$@"')]:
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {log}{body}\n')
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "SEGRAY_CHROMIUM": chromium, "HOME": str(tmp_path)}
    run = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "setup-system.sh")],
        env=env,
        capture_output=True,
        text=True,
    )
    return run, log.read_text() if log.exists() else ""


def test_quickstart_setup_installs_chromium_for_the_browser_tests(tmp_path: Path):
    setup = quickstart_commands()[0]
    assert setup.startswith("scripts/setup-system.sh && ")
    assert "scripts/setup-system.sh" in (ROOT / ".ci" / "run").read_text().splitlines()
    run, calls = _setup_system(tmp_path, chromium=str(tmp_path / "no-chromium"))
    assert run.returncode == 0, run.stderr
    install = "apt-get install -y -q chromium"
    # As root apt-get itself, else through sudo.
    expected = [install] if os.geteuid() == 0 else [f"sudo {install}", install]
    assert calls.splitlines() == expected
    assert "installing chromium" in run.stdout
    # A machine that has it: nothing installed, nothing said.
    present = tmp_path / "chromium"
    present.write_text("#!/bin/bash\n")
    present.chmod(0o755)
    run, calls = _setup_system(tmp_path / "again", chromium=str(present))
    assert (run.returncode, calls, run.stdout) == (0, "", "")
