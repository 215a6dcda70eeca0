"""Kernel launcher for tunelab's `rust` Jupyter kernel (installed by scripts/setup-notebooks.sh).

Jupyter starts `python scripts/evcxr_kernel.py EVCXR_JUPYTER --control_file FILE`. Before handing
over to evcxr_jupyter (exec: the kernel's pid stays the one Jupyter started) it

* picks evcxr's build directory: the first free slot `target/evcxr/kernel-N/` (a slot is held by
  an exclusive lock on `kernel-N.lock` for the kernel's lifetime). Every bundled notebook loads one
  of two `:dep` sets (`notebooks/evcxr/deps-data.evcxr`, `notebooks/evcxr/deps.evcxr`), and cargo
  keeps both builds side by side in one slot's target directory: slot 0, warmed by
  `scripts/setup-notebooks.sh`, has tunelab and its dependencies compiled for evcxr, and any
  notebook opened in it starts computing at once. A second notebook open at the same time gets slot
  1, which cargo builds from scratch once (as long as the set-up's warm-up) and then keeps warm.
  Slots are never filled from evcxr's `:cache` (off in `notebooks/evcxr/init.evcxr`): that cache
  is keyed by rustc's command line only, and a hit copies in a crate compiled against other
  dependency contents (see environment.md). A slot is never shared by two kernels either: evcxr
  writes each cell to the same `libctx.so`.
  `EVCXR_TMPDIR` set by the caller wins (no slot). The slots' parent holds a `.cargo/config.toml`
  with the workspace's `[patch]` (see `write_patch_config`).
* gives that directory the repository's `Cargo.lock`, so notebooks build exactly the dependency
  versions the tests use. evcxr's start-up build (of an empty crate) prunes whatever lock is there,
  so a forked helper puts the lock back once that build has rewritten it, before the first cell can
  run (the kernel answers only after its start-up build has finished).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLOTS = ROOT / "target" / "evcxr"
# A kernel's start-up build takes seconds when warm; the helper gives up after this long.
SEED_WAIT_S = 600


def write_patch_config(base: Path = SLOTS) -> None:
    """The workspace's `[patch.crates-io]` (burn-flex from vendor/, see vendor/burn-flex/TUNELAB.md)
    for evcxr's builds. evcxr writes its own Cargo.toml without it; cargo also reads
    `.cargo/config.toml` of the directories above the build directory, and a `[patch]` there
    applies. Without it the notebooks would build upstream burn-flex (slower CPU kernels, other
    dropout draws) and the repository's Cargo.lock would not fit.
    Also `net.offline`: cargo then resolves only to crates already downloaded, which after
    `cargo fetch --locked` (scripts/setup-notebooks.sh) are the Cargo.lock versions. The seeded lock
    alone did not hold: on 2026-12-07 a warm-up build resolved cc 1.12.0 and zerocopy 0.8.66,
    published after the lock was written, and the drift check stopped the notebooks."""
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    lines = ["# Written by scripts/evcxr_kernel.py from the workspace Cargo.toml's [patch.crates-io].",
             "# Offline: evcxr's builds resolve to the downloaded crates, the Cargo.lock versions.",
             "[net]", "offline = true", "", "[patch.crates-io]"]
    for name, spec in manifest.get("patch", {}).get("crates-io", {}).items():
        path = (ROOT / spec["path"]).resolve()
        lines.append(f"{name} = {{ path = {json.dumps(str(path))} }}")
    config = base / ".cargo" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if not config.exists() or config.read_text() != text:
        config.write_text(text)


def acquire_slot(base: Path = SLOTS) -> tuple[Path, int]:
    """The first slot whose lock can be taken now: (directory, locked fd kept open by the kernel)."""
    base.mkdir(parents=True, exist_ok=True)
    write_patch_config(base)
    for n in range(64):
        fd = os.open(base / f"kernel-{n}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        slot = base / f"kernel-{n}"
        slot.mkdir(exist_ok=True)
        return slot, fd
    sys.exit(f"evcxr_kernel: all 64 build slots under {base} are in use")


def seed_lockfile_after_startup(tmpdir: Path, slot_fd: int | None) -> None:
    """Copy the repository's Cargo.lock in now, then again once evcxr's start-up build pruned it."""
    lock = ROOT / "Cargo.lock"
    target = tmpdir / "Cargo.lock"
    if not lock.exists():
        return
    shutil.copyfile(lock, target)
    seeded = target.stat().st_mtime_ns
    # Double fork: the helper is nobody's child once the kernel (this process, after exec) runs,
    # so it leaves no zombie behind.
    child = os.fork()
    if child != 0:
        os.waitpid(child, 0)
        return
    if os.fork() != 0:
        os._exit(0)
    # The helper must not keep the slot locked after the kernel is gone.
    if slot_fd is not None:
        os.close(slot_fd)
    try:
        deadline = time.monotonic() + SEED_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                if target.stat().st_mtime_ns != seeded:
                    time.sleep(0.2)  # let cargo finish writing it
                    shutil.copyfile(lock, target)
                    break
            except FileNotFoundError:
                pass
    finally:
        os._exit(0)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: evcxr_kernel.py EVCXR_JUPYTER [ARGS...]")
    fd = None
    if os.environ.get("EVCXR_TMPDIR"):
        tmpdir = Path(os.environ["EVCXR_TMPDIR"])
        tmpdir.mkdir(parents=True, exist_ok=True)
    else:
        tmpdir, fd = acquire_slot()
        os.set_inheritable(fd, True)  # the lock lives as long as the kernel process
        os.environ["EVCXR_TMPDIR"] = str(tmpdir)
    print(f"evcxr_kernel: build directory {tmpdir}", file=sys.stderr, flush=True)
    seed_lockfile_after_startup(tmpdir, fd)
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
