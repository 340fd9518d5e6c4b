"""Running an experiment: profiles, overrides, resumable units of work, results JSON.

Every experiment module defines

    NAME: str                       file stem of its outputs ("loss_gap" -> loss_gap.json/.png/.pdf)
    PROFILES: dict[str, dict]       "smoke" (seconds, tests), "quick" (CPU minutes), "paper" (GPU)
    compute(config, units) -> dict  every number the figure shows; ``units`` caches finished work
    plot(result, stem) -> list[Path]

and ends with ``if __name__ == "__main__": main(sys.modules[__name__])``. ``execute`` then
gives all of them the same behaviour: ``--set key=value`` overrides, a finished result
reused unless ``--force``, an interrupted run resumed from its finished units, JSON
written atomically with config, seed, versions, commit and wall time, and the figure
drawn from the JSON (so re-plotting never recomputes).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from experiments.common.config import validate_experiment_config

__all__ = [
    "REPO_ROOT",
    "PROFILE_NAMES",
    "COMMITTED",
    "CorruptFileError",
    "Units",
    "apply_overrides",
    "atomic_write_json",
    "atomic_write_bytes",
    "read_json",
    "move_aside",
    "save_checkpoint",
    "load_checkpoint",
    "default_out_dir",
    "execute",
    "main",
    "module_name",
    "provenance",
    "resolve_device",
    "run_units",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# "gpu": one GPU, minutes (DiT study); "cifar_cpu": the DiT study on real images at CPU
# scale, run once and committed beside the quick results.
PROFILE_NAMES = ("smoke", "quick", "cifar_cpu", "cpu", "gpu", "paper")
# Profiles whose results are committed (what the README shows), and where.
COMMITTED = {"quick": REPO_ROOT / "figures", "cifar_cpu": REPO_ROOT / "figures" / "cifar_cpu",
             "cpu": REPO_ROOT / "figures" / "cpu"}


# -- files ----------------------------------------------------------------------------------


class CorruptFileError(ValueError):
    """A stored file (result, partial result, checkpoint) that cannot be read back as written.

    The message names the file and says how to recover (delete it, or ``--force``)."""


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path via a temporary file and a rename, so no reader sees half a file.

    The file gets the permissions of a plainly created one (0666 less the umask), not the
    0600 of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any, where: str = "") -> Any:
    # where: the path of obj inside the value being written, for the error message
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}/{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray | torch.Tensor):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, float) and not np.isfinite(obj):
        raise ValueError(f"refusing to write a non-finite number ({obj}) to a results file, "
                         f"at {where or '/'}")
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write obj as indented JSON atomically; NumPy/torch values become lists and floats."""
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=1) + "\n").encode())


def read_json(path: Path, recover: str = "delete it") -> Any:
    """The JSON value stored at path; CorruptFileError naming the file (and ``recover``, how
    to get past it) when it is not valid UTF-8 JSON, e.g. cut short by a full disk."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path} is corrupt (not valid JSON: {err}); {recover}") from None


def move_aside(path: Path, suffix: str = "corrupt",
               why: str = "unreadable") -> Path:
    """Rename path to <path>.<suffix> (or .<suffix>-2, ...: an earlier one is never
    overwritten), keeping it for inspection; print where it went and ``why``."""
    path = Path(path)
    target, k = path.with_name(f"{path.name}.{suffix}"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.{suffix}-{k}")
    os.replace(path, target)
    print(f"moved the {why} {path.name} aside to {target}")
    return target


# A checkpoint is this header line, the SHA-256 of the payload, a newline, then the payload
# (torch.save's bytes). torch.load does not notice a flipped byte inside a tensor, so
# without the digest a damaged file would resume training from different weights.
_CKPT_MAGIC = b"memsep-checkpoint/1 sha256="


def save_checkpoint(path: Path, state: Any) -> None:
    """Write ``state`` (anything torch.save takes) to path atomically, with its digest."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(Path(path), _CKPT_MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The state saved by ``save_checkpoint`` at path, after verifying its digest.

    CorruptFileError names the file when its digest or its header does not match (a
    damaged or truncated file, or one written without a digest): delete it to recompute.
    """
    path = Path(path)
    raw = path.read_bytes()
    head, sep, payload = raw.partition(b"\n")
    recover = "delete it to train again from the start"
    if not sep or not head.startswith(_CKPT_MAGIC):
        raise CorruptFileError(f"{path} is not a memsep checkpoint with a digest (damaged, or "
                               f"written by an older version); {recover}")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(_CKPT_MAGIC):]:
        raise CorruptFileError(f"{path} is corrupt: its content does not match the SHA-256 "
                               f"digest stored in it; {recover}")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


# -- configuration --------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as device=cpu


def apply_overrides(config: dict, sets: Iterable[str]) -> dict:
    """A copy of config with each "key=value" applied; value is a Python literal.

    Unknown keys and values of another type than the default raise ValueError naming them
    (a default of None accepts any literal); ranges are checked by ``validate_config``.
    """
    out = dict(config)
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        if key not in config:
            raise ValueError(f"--set: unknown key {key!r}; known keys: {', '.join(sorted(config))}")
        value, default = _parse_value(text), config[key]
        if default is None:
            ok = True
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif isinstance(default, list | tuple):
            ok = isinstance(value, list | tuple)
        else:
            ok = isinstance(value, type(default)) and not isinstance(value, bool)
        if not ok:
            raise ValueError(
                f"--set {key}: expected a {type(default).__name__} like {default!r}, got {text!r}"
            )
        out[key] = float(value) if isinstance(default, float) else value
    return out


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def provenance() -> dict:
    """Versions, commit and hardware, stored with every result."""
    import scipy
    import sympy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sympy": sympy.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": _git_commit(),
    }


# -- resumable work ---------------------------------------------------------------------------


class Units:
    """Finished units of work of one run, kept in a partial file beside the result.

    ``units.get(key, fn)`` returns the stored value of ``key`` or computes ``fn()``, stores it
    and saves the file atomically, so a run killed at any point resumes after its last
    finished unit. The partial file is tied to the config: one of a different config is
    moved aside (to <name>.stale) and the run starts afresh, so no finished unit is lost
    silently. An unreadable partial file is refused (CorruptFileError naming it) unless
    ``force``, which moves it aside (to <name>.corrupt) and starts afresh.
    """

    def __init__(self, path: Path | None, config: dict, force: bool = False) -> None:
        self.path, self.config = path, _jsonable(config)
        self.done: dict[str, Any] = {}
        if path is None or not path.exists():
            return
        try:
            stored = read_json(path, "rerun with --force to move it aside and start afresh")
            if not (isinstance(stored, dict) and isinstance(stored.get("units"), dict)):
                raise CorruptFileError(f"{path} is not a partial-results file (no 'units'); "
                                       "rerun with --force to move it aside and start afresh")
        except CorruptFileError:
            if not force:
                raise
            move_aside(path)
            return
        if stored.get("config") == self.config:
            self.done = stored["units"]
            print(f"resuming {path.name}: {len(self.done)} finished units")
        else:
            move_aside(path, "stale", "partial results of another config,")

    def get(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.done:
            self.put(key, fn())
        return self.done[key]

    def put(self, key: str, value: Any) -> None:
        """Store a finished unit computed elsewhere (a worker process) and save the file."""
        self.done[key] = _jsonable(value)
        if self.path is not None:
            atomic_write_json(self.path, {"config": self.config, "units": self.done})

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _importable(fn: Callable) -> Callable:
    """fn itself, or for a function of a script run as ``python -m pkg.mod`` the same
    function imported from pkg.mod, which a worker process can find by name."""
    if fn.__module__ != "__main__":
        return fn
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        raise ValueError(f"run_units: {fn.__name__} lives in a script without a module name; "
                         "run it as python -m package.module")
    return getattr(importlib.import_module(spec.name), fn.__name__)


def run_units(
    units: Units, tasks: Sequence[tuple[str, Callable, tuple]], workers: int = 1,
    desc: str = "units",
) -> dict[str, Any]:
    """Compute the unfinished ``tasks`` (key, fn, args) as units: fn(*args) for each key not
    yet in ``units``, in ``workers`` processes; returns {key: value} for every task.

    workers = 1 runs them here, in order. More workers split the machine's cores between
    them (one torch thread each on 2 cores): independent small trainings then finish
    sooner than in one process with all threads, whose small matmuls and per-step Python
    overhead parallelize badly. Each finished unit is stored at once, so an interrupted run
    resumes; fn must be a module-level function and args picklable. The numbers of a unit
    depend only on its args and seeds, not on which worker ran it, up to the float rounding
    of the thread count (part of the config: ``workers``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    keys = [key for key, _, _ in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("run_units: task keys must be unique")
    todo = [(key, fn, args) for key, fn, args in tasks if key not in units.done]
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=desc)
    if workers == 1 or len(todo) <= 1:
        for key, fn, args in todo:
            bar.set_postfix_str(key)
            units.put(key, fn(*args))
            bar.update(1)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_importable(fn), *args): key for key, fn, args in todo}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        units.put(futures[future], future.result())
                        bar.set_postfix_str(futures[future])
                        bar.update(1)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    bar.close()
    return {key: units.done[key] for key in keys}


def default_out_dir(profile: str) -> Path:
    """Where a committed profile's results live (``COMMITTED``: figures/ for quick,
    figures/cifar_cpu/, figures/cpu/ for the hour-long CPU profiles), runs/<profile>/
    otherwise."""
    return COMMITTED.get(profile, REPO_ROOT / "runs" / profile)


def execute(
    experiment: ModuleType,
    profile: str = "quick",
    overrides: Iterable[str] = (),
    out_dir: Path | None = None,
    force: bool = False,
    plot: bool = True,
    reuse_only: bool = False,
) -> dict:
    """Run (or reuse) one experiment's profile; write <out>/<NAME>.json and its figure.

    The config (profile plus overrides) is validated first (experiments/common/config.py):
    a bad value raises ValueError naming the key, before any file is written. A stored
    result of the same config is reused unless ``force``; an unreadable one is refused
    (CorruptFileError naming it) unless ``force``, which moves it aside and recomputes.
    ``reuse_only``: redraw a stored result, never compute (FileNotFoundError naming the
    file when there is none of this config).
    """
    if profile not in experiment.PROFILES:
        raise ValueError(f"profile must be one of {sorted(experiment.PROFILES)}, got {profile!r}")
    config = apply_overrides(experiment.PROFILES[profile], overrides)
    validate_experiment_config(experiment, config)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(profile)
    path = out_dir / f"{experiment.NAME}.json"
    result = None
    if path.exists():
        try:
            stored = read_json(path, "rerun with --force to move it aside and recompute")
        except CorruptFileError:
            if not force:
                raise
            move_aside(path)
            stored = None
        if (not force and isinstance(stored, dict) and stored.get("config") == _jsonable(config)
                and stored.get("profile") == profile):
            print(f"{experiment.NAME}: reusing {path} (--force recomputes)")
            result = stored
    if result is None and reuse_only:
        raise FileNotFoundError(f"{path}: no stored result of the {profile!r} profile's "
                                f"current config (recompute it with --profile {profile} --force)")
    if result is None:
        units = Units(out_dir / f"{experiment.NAME}.partial.json", config, force)
        start = time.perf_counter()
        numbers = experiment.compute(config, units)
        result = {
            "name": experiment.NAME,
            "profile": profile,
            "config": _jsonable(config),
            "seed": config.get("seed"),
            "provenance": provenance(),
            "wall_time_s": round(time.perf_counter() - start, 2),
            "results": _jsonable(numbers),
        }
        atomic_write_json(path, result)
        units.discard()
        print(f"{experiment.NAME}: wrote {path} in {result['wall_time_s']} s")
    if plot:
        for p in experiment.plot(result, out_dir / experiment.NAME):
            print(f"{experiment.NAME}: drew {p}")
    return result


def module_name(module: ModuleType) -> str:
    """The importable name of a module, also when it runs as ``python -m pkg.mod`` (whose
    ``__name__`` is then "__main__")."""
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None and spec.name else module.__name__


def main(experiment: ModuleType, argv: list[str] | None = None) -> dict:
    """Command line of every experiment script: --profile, --set, --out, --force, --no-plot.

    A bad --set (unknown key, wrong type, value out of range) is a usage error (exit 2)
    naming the key; so is an unreadable stored result, which --force moves aside.
    """
    summary = (experiment.__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog=f"python -m {module_name(experiment)}",
                                     description=summary)
    parser.add_argument("--profile", default="quick", choices=sorted(experiment.PROFILES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry (Python literal), repeatable")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: figures/ if quick, else runs/<profile>/)")
    parser.add_argument("--force", action="store_true",
                        help="recompute even if a result exists (an unreadable result or "
                             "partial file is moved aside to <name>.corrupt)")
    parser.add_argument("--no-plot", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    try:  # bad overrides are usage errors; errors from the run itself propagate as they are
        config = apply_overrides(experiment.PROFILES[args.profile], args.set)
        validate_experiment_config(experiment, config)
    except ValueError as err:
        parser.error(str(err))
    try:
        return execute(experiment, args.profile, args.set, args.out, args.force, not args.no_plot)
    except CorruptFileError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
