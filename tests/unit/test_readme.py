"""README.md is what a new user types: exactly two set-up commands, and CI runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [next(l for l in b.splitlines() if l.strip() and not l.startswith("#")) for b in blocks]


def test_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    assert "clusterkit" in commands[0]  # installs and runs the main job
    assert "pytest" in commands[1]  # installs and runs the tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in ci
    assert "export CLUSTERKIT_REQUIRE_SLURM=1" in ci
    assert "export CLUSTERKIT_REQUIRE_CHROMIUM=1" in ci


def test_dev_install_provides_the_headless_browser():
    install = (ROOT / "scripts" / "install.sh").read_text()
    dev = install.split('if [ "${1:-}" = "--dev" ]; then', 1)[1].split("else", 1)[0]
    assert "bash scripts/ensure-chromium.sh" in dev
    assert "apt-get install -y -qq chromium" in (ROOT / "scripts" / "ensure-chromium.sh").read_text()
