"""The Bash environment's file-system fixtures, written for this project (NL2Bash-style testbeds).

Upstream InterCode-Bash runs NL2Bash tasks over four Docker file systems; here three small trees are
generated deterministically (seeded content, fixed modification times) and copied into a fresh
sandbox workspace, mounted at /testbed, for every episode:

- fs_project: a small Python project (sources, tests, docs, logs, scripts, CSV data);
- fs_home: a user's home folder (documents, drafts, photos with duplicates, downloads, dot files);
- fs_server: a web server's files (application and access logs, configs, site, caches).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

FIXED_MTIME = 1_700_000_000  # 2023-11-14: fixed times make `ls -l`, `find -newer` and md5 reproducible
FIRST_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
LEVELS = ["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"]


def _write(root: Path, relative: str, content: str | bytes, mode: int = 0o644) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(mode)


def build_project(root: Path, rng: random.Random) -> None:
    _write(
        root,
        "README.md",
        "# inventory-app\n\nA small inventory service.\n\n## Usage\nRun `python -m app`.\n"
        "TODO: document the configuration.\n",
    )
    _write(root, "LICENSE", "MIT License\n\nCopyright (c) 2023 Inventory Authors\n")
    _write(root, "setup.cfg", "[metadata]\nname = inventory-app\nversion = 1.4.2\n\n[options]\npackages = find:\n")
    _write(root, ".gitignore", "__pycache__/\n*.pyc\n.env\nlogs/\n")
    _write(root, ".env.example", "DB_URL=sqlite:///inventory.db\nDEBUG=false\n")
    _write(root, "src/app/__init__.py", '__version__ = "1.4.2"\n')
    _write(
        root,
        "src/app/main.py",
        "import sys\n\nfrom app.utils import parse_args\n\n\n"
        "def main():\n    # TODO: handle errors\n    args = parse_args(sys.argv[1:])\n"
        "    print(args)\n\n\nif __name__ == '__main__':\n    main()\n",
    )
    _write(
        root,
        "src/app/utils.py",
        "def parse_args(argv):\n    return dict(a.split('=') for a in argv)\n\n\n"
        "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n",
    )
    _write(
        root,
        "src/app/models.py",
        "class Item:\n    def __init__(self, name, qty):\n        self.name = name\n"
        "        self.qty = qty\n\n\nclass Store:\n    # TODO: persist items\n"
        "    def __init__(self):\n        self.items = []\n",
    )
    _write(root, "src/app/legacy/old_api.py", "# deprecated: remove in 2.0\ndef fetch():\n    return None\n")
    _write(root, "tests/test_main.py", "from app.main import main\n\n\ndef test_main():\n    assert main\n")
    _write(
        root,
        "tests/test_utils.py",
        "from app.utils import clamp\n\n\ndef test_clamp():\n    assert clamp(5, 0, 3) == 3\n",
    )
    _write(root, "docs/index.md", "# Docs\n\nSee install.md and usage.md.\n")
    _write(root, "docs/install.md", "# Install\n\npip install inventory-app\n")
    _write(root, "docs/usage.md", "# Usage\n\ninventory add NAME QTY\ninventory list\n")
    build_log = "".join(f"2023-11-0{1 + i // 10} 10:{i:02d}:00 {rng.choice(LEVELS)} step {i}\n" for i in range(30))
    _write(root, "logs/build.log", build_log)
    test_log = "".join(f"test_{i:02d} {'PASSED' if rng.random() < 0.8 else 'FAILED'}\n" for i in range(25))
    _write(root, "logs/test.log", test_log)
    _write(root, "scripts/deploy.sh", "#!/bin/sh\necho deploying\n")
    _write(root, "scripts/clean.sh", "#!/bin/sh\nrm -rf build\n", mode=0o755)
    users = "id,name,age,city\n" + "".join(
        f"{i},{FIRST_NAMES[i % 10]},{rng.randint(20, 60)},{rng.choice(['Paris', 'Lyon', 'Nice', 'Lille'])}\n"
        for i in range(1, 21)
    )
    _write(root, "data/users.csv", users)
    sales = "date,item,amount\n" + "".join(
        f"2023-10-{d:02d},{rng.choice(['pen', 'book', 'lamp', 'desk'])},{rng.randint(1, 200)}\n" for d in range(1, 29)
    )
    _write(root, "data/sales.csv", sales)
    _write(root, "notes/todo.txt", "fix login bug\nwrite docs\nrelease 1.5\n")


def build_home(root: Path, rng: random.Random) -> None:
    _write(root, ".bashrc", "export EDITOR=vim\nalias ll='ls -l'\n")
    _write(root, ".profile", "PATH=$HOME/bin:$PATH\n")
    _write(root, "documents/report_2023.txt", "Annual report 2023\nrevenue grew by 12 percent\nthe team grew\n")
    _write(root, "documents/report_2024.txt", "Annual report 2024\nrevenue grew by 8 percent\nnew office opened\n")
    letter = "Dear Sam,\nthank you for the visit.\nBest regards,\nAlex\n"
    _write(root, "documents/letter.txt", letter)
    _write(root, "documents/notes.md", "- call the bank\n- renew passport\n- buy milk\n- call mom\n")
    draft = "First draft of the novel.\nChapter one begins here.\n"
    _write(root, "documents/drafts/draft1.txt", draft)
    _write(root, "documents/drafts/draft2.txt", draft)
    _write(root, "documents/drafts/draft3.txt", "A different start.\n")
    photos = [bytes(rng.getrandbits(8) for _ in range(rng.randint(2000, 6000))) for _ in range(4)]
    for i, data in enumerate(photos + [photos[0], photos[2]], start=1):  # two exact duplicates
        _write(root, f"photos/img_{i:03d}.jpg", data)
    _write(root, "photos/vacation/beach.png", bytes(rng.getrandbits(8) for _ in range(3000)))
    _write(root, "music/playlist.m3u", "#EXTM3U\nsong_a.mp3\nsong_b.mp3\nsong_c.mp3\n")
    _write(root, "downloads/installer.bin", bytes(rng.getrandbits(8) for _ in range(12000)))
    _write(root, "downloads/readme.txt", "Installer for tool v2.\nRun installer.bin.\n")
    _write(root, "downloads/copy_of_letter.txt", letter)
    (root / "backup").mkdir()


def build_server(root: Path, rng: random.Random) -> None:
    users = [f"user{n}" for n in range(1, 8)]
    app_log = "".join(
        f"2023-11-{10 + i // 50:02d}T{(i * 7) % 24:02d}:{(i * 13) % 60:02d}:00 {rng.choice(LEVELS)} "
        f"{rng.choice(users)} {rng.choice(['login', 'logout', 'upload', 'download', 'delete'])}\n"
        for i in range(150)
    )
    _write(root, "var/log/app.log", app_log)
    _write(root, "var/log/old/app.log.1", "".join(f"2023-10-01T00:00:{i:02d} INFO user1 login\n" for i in range(10)))
    ips = [f"10.0.0.{n}" for n in (3, 7, 12, 25, 42)]
    access = "".join(
        f'{rng.choice(ips)} - - [12/Nov/2023:10:{i % 60:02d}:00] "GET /{rng.choice(["", "about.html", "css/style.css", "js/app.js", "missing.html"])} HTTP/1.1" '
        f"{rng.choice([200, 200, 200, 304, 404, 500])} {rng.randint(100, 5000)}\n"
        for i in range(120)
    )
    _write(root, "var/log/access.log", access)
    _write(root, "etc/app.conf", "port=8080\nworkers=4\nlog_level=info\ncache_dir=/testbed/tmp\n")
    _write(root, "etc/hosts.txt", "127.0.0.1 localhost\n10.0.0.3 db\n10.0.0.7 cache\n")
    _write(root, "srv/www/index.html", "<html><body><h1>Welcome</h1><a href='about.html'>About</a></body></html>\n")
    _write(root, "srv/www/about.html", "<html><body><h1>About us</h1><p>We sell lamps.</p></body></html>\n")
    _write(root, "srv/www/css/style.css", "body { color: #333; }\nh1 { font-size: 2em; }\n")
    _write(root, "srv/www/js/app.js", "console.log('hello');\n// TODO: analytics\n")
    inventory = "sku,name,stock,price\n" + "".join(
        f"SKU{i:03d},{rng.choice(['lamp', 'chair', 'table', 'shelf', 'rug'])}-{i},{rng.randint(0, 50)},{rng.randint(5, 300)}\n"
        for i in range(1, 31)
    )
    _write(root, "srv/data/inventory.csv", inventory)
    _write(root, "tmp/cache_1.tmp", "x" * 500)
    _write(root, "tmp/cache_2.tmp", "y" * 1500)
    _write(root, "tmp/session.lock", "")


FIXTURES: dict[str, Callable[[Path, random.Random], None]] = {
    "fs_project": build_project,
    "fs_home": build_home,
    "fs_server": build_server,
}


def build_fixture(name: str, dest: Path, seed: int = 0) -> Path:
    """Write fixture `name` into `dest` (replaced if present) with fixed content and times."""
    if name not in FIXTURES:
        raise KeyError(f"unknown file-system fixture {name!r}; have {sorted(FIXTURES)}")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    FIXTURES[name](dest, random.Random(f"{name}-{seed}"))
    for folder, dirs, files in os.walk(dest):
        for item in dirs + files:
            os.utime(Path(folder, item), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(dest, (FIXED_MTIME, FIXED_MTIME))
    return dest


def build_all(base: Path, seed: int = 0) -> dict[str, Path]:
    return {name: build_fixture(name, Path(base) / name, seed) for name in FIXTURES}
