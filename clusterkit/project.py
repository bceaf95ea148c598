"""Where a clusterkit project lives: the inventory, ``env/`` and ``jobs/`` next to it, and
the runs directory. Built once at the CLI edge from flags and the environment; library
code receives it and never reads ``os.environ`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from clusterkit.errors import UserError


@dataclass(frozen=True)
class Project:
    inventory_path: Path
    runs_dir: Path

    @classmethod
    def from_options(cls, inventory: str | None, environ: dict[str, str]) -> Project:
        path = Path(inventory or environ.get("CLUSTERKIT_INVENTORY") or "nodes.yaml").expanduser()
        if not path.exists():
            raise UserError(
                f"inventory {str(path)!r} not found",
                hint="run from the directory holding nodes.yaml, or pass --inventory PATH / set CLUSTERKIT_INVENTORY",
            )
        path = path.resolve()
        runs = Path(environ.get("CLUSTERKIT_RUNS_DIR") or path.parent / "runs").expanduser().resolve()
        return cls(inventory_path=path, runs_dir=runs)

    @property
    def root(self) -> Path:
        return self.inventory_path.parent

    @property
    def env_dir(self) -> Path:
        """``env/`` next to nodes.yaml; else the one of the clusterkit checkout it runs from."""
        return _beside_or_shipped(self.root, "env")

    @property
    def jobs_dir(self) -> Path:
        """``jobs/`` next to nodes.yaml; else the one of the clusterkit checkout it runs from."""
        return _beside_or_shipped(self.root, "jobs")

    @cached_property
    def inventory(self):
        from clusterkit.inventory import load_inventory

        return load_inventory(self.inventory_path)

    @cached_property
    def profiles(self):
        from clusterkit.launch.envprofiles import load_profiles

        return load_profiles(self.env_dir / "nccl.yaml")

    @cached_property
    def registry(self):
        from clusterkit.launch.records import Registry

        return Registry(self.runs_dir)


SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout (scripts/install.sh installs editable)


def _beside_or_shipped(root: Path, name: str) -> Path:
    """A site keeps its own nodes.yaml anywhere; its env/ and jobs/ may sit beside it (they win)
    or come from the clusterkit checkout."""
    own = root / name
    if own.is_dir() or not (SOURCE_ROOT / name).is_dir():
        return own
    return SOURCE_ROOT / name
