"""The wheel installs only the `blogqueue` namespace, with its SQL, py.typed and the licence.

Built from the checkout with the same backend `pip wheel .` uses (hatchling, without
build isolation so it needs no network), then read as a zip.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import blogqueue

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(out)], check=True, capture_output=True, timeout=120)
    (wheel,) = out.glob("blogqueue-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_wheel_installs_only_the_blogqueue_namespace(wheel_names: list[str]) -> None:
    tops = {n.split("/")[0] for n in wheel_names}
    assert tops == {"blogqueue", f"blogqueue-{blogqueue.__version__}.dist-info"}, tops
    assert "blogqueue/service/app.py" in wheel_names
    assert not any(n.startswith("service/") for n in wheel_names)


def test_wheel_ships_sql_types_marker_and_licence(wheel_names: list[str]) -> None:
    migrations = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert migrations and all(f"blogqueue/sql/{m}" in wheel_names for m in migrations)
    assert "blogqueue/queries.sql" in wheel_names
    assert "blogqueue/py.typed" in wheel_names
    for page in ("index.html", "console.js", "console.css"):  # GET /ui serves them from the package
        assert f"blogqueue/service/console/{page}" in wheel_names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names)


@pytest.mark.parametrize("command", [[sys.executable, "-m", "blogqueue"],
                                     [str(Path(sys.executable).parent / "blogqueue")]])
def test_version_flag(command: list[str]) -> None:
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"blogqueue {blogqueue.__version__}"
