"""Another build of the engine as a peer: ``pali-engine bench --baseline REF_OR_DIR``.

The baseline is a git ref of this repository (built once into the work
folder's cache, keyed by the full commit hash) or a folder that holds an
already built ``pali_engine`` package.  Its rows, ``engine-baseline f32`` and
so on (one per engine dtype), run in a worker process (baseline_worker.py):
two builds' native modules cannot share one process.  The harness drives the
worker round by round like any other peer, so the paired ratios to the
current engine at the same dtype cancel the shared machine's slow drifts.

Building a ref: ``git archive`` of the commit into a scratch folder, then
``pip install --no-deps --no-build-isolation --target <cache>/site <src>``
(the environment's scikit-build-core, pybind11 and ninja; the CPU module
only), the source and build tree removed afterwards.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import io
import json
import os
import pickle
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .peers import Case, Peer

#: Bump when the layout of a cached build changes.
CACHE_VERSION = "1"
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline_worker.py")


class BaselineError(RuntimeError):
    pass


@dataclass
class Baseline:
    """Where the baseline's package is and what it is (the JSON's "baseline")."""

    package_dir: str
    given: str
    commit: Optional[str] = None
    info: Dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.commit[:10] if self.commit else os.path.basename(os.path.normpath(self.package_dir))

    def describe(self) -> Dict:
        return {"given": self.given if self.commit else os.path.basename(os.path.normpath(self.given)),
                "commit": self.commit, **self.info}


def _has_core(package: str) -> bool:
    try:
        return any(name.startswith("_core.") for name in os.listdir(package))
    except OSError:
        return False


def package_folder(path: str) -> Optional[str]:
    """The folder to put on sys.path for a folder holding a built ``pali_engine`` (or the package
    itself); None when there is none, or only a source folder without the native module."""
    path = os.path.abspath(os.path.normpath(path))
    for folder in (path, os.path.dirname(path) if os.path.basename(path) == "pali_engine" else None):
        if folder and os.path.isfile(os.path.join(folder, "pali_engine", "__init__.py")) \
                and _has_core(os.path.join(folder, "pali_engine")):
            return folder
    return None


def _git(repo: str, *args: str) -> str:
    r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise BaselineError(r.stderr.strip() or f"git {' '.join(args)} failed")
    return r.stdout.strip()


def repository_candidates() -> List[str]:
    """Where a ref is looked up: the current folder, then the repository this file is in."""
    return [os.getcwd(), os.path.dirname(os.path.abspath(__file__))]


def resolve_commit(ref: str) -> tuple:
    """(repository, full commit hash) of ``ref``; BaselineError when no repository knows it."""
    errors = []
    for folder in repository_candidates():
        try:
            repo = _git(folder, "rev-parse", "--show-toplevel")
            return repo, _git(repo, "rev-parse", "--verify", "--quiet", ref + "^{commit}")
        except (BaselineError, OSError) as error:
            errors.append(str(error) or "unknown ref")
    raise BaselineError(f"{ref!r} is neither a folder holding a built pali_engine package nor a commit of "
                        f"this repository ({errors[-1] if errors else 'no git repository here'})")


def head_commit() -> Dict:
    """The current tree's commit and whether tracked files differ from it (the JSON's "engine_build")."""
    for folder in repository_candidates():
        try:
            repo = _git(folder, "rev-parse", "--show-toplevel")
            return {"commit": _git(repo, "rev-parse", "HEAD"),
                    "tracked_files_modified": bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))}
        except (BaselineError, OSError):
            continue
    return {}


def _extract_commit(repo: str, commit: str, dest: str) -> None:
    archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise BaselineError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def build_commit(repo: str, commit: str, cache_root: str, log: Callable[[str], None],
                 given: Optional[str] = None) -> Baseline:
    """The package of ``commit``, built into ``cache_root/<commit>`` unless it is there already."""
    final = os.path.join(cache_root, commit)
    record = os.path.join(final, "build.json")
    subject = _git(repo, "log", "-1", "--format=%s", commit)[:120]
    if os.path.isfile(record) and package_folder(os.path.join(final, "site")):
        info = json.load(open(record))
        log(f"baseline {commit[:10]}: the build cached in {final} ({info.get('build_s', '?')} s when built)")
        return Baseline(os.path.join(final, "site"), given or commit, commit,
                        {**info, "subject": subject, "cached": True})
    os.makedirs(cache_root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{commit[:10]}-", dir=cache_root)
    source, target = os.path.join(scratch, "src"), os.path.join(scratch, "site")
    build_log = os.path.join(cache_root, f"{commit}.log")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "--target", target, source]
    log(f"baseline {commit[:10]} ({subject[:60]}): building it once (git archive of the commit, then "
        f"pip install --no-deps --no-build-isolation --target: a C++ build of the CPU module, which can take "
        f"minutes); log in {build_log}")
    started = time.time()
    try:
        _extract_commit(repo, commit, source)
        # a plain build of the CPU module: the CUDA module would take as long again and is never
        # loaded, and a sanitized module does not import into a plain Python
        env = {**os.environ, "PALI_ENGINE_CUDA": "OFF", "PALI_ENGINE_SANITIZE": "OFF"}
        with open(build_log, "w") as out:
            r = subprocess.run(command, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            tail = open(build_log, errors="replace").read().strip().splitlines()[-15:]
            raise BaselineError(f"building {commit[:10]} failed (pip exit {r.returncode}); the end of "
                                f"{build_log}:\n" + "\n".join(tail))
        if not package_folder(target):
            raise BaselineError(f"building {commit[:10]} left no pali_engine package in {target}")
        shutil.rmtree(source, ignore_errors=True)
        build_s = round(time.time() - started, 1)
        info = {"how": "git archive + pip install --no-deps --no-build-isolation --target (CPU module)",
                "build_s": build_s, "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "cache_version": CACHE_VERSION}
        with open(os.path.join(scratch, "build.json"), "w") as f:
            json.dump(info, f)
        if os.path.isdir(final):  # a half-written folder from an older layout
            shutil.rmtree(final)
        os.rename(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log(f"baseline {commit[:10]}: built in {build_s:.0f} s, cached in {final}")
    return Baseline(os.path.join(final, "site"), given or commit, commit,
                    {**info, "subject": subject, "cached": False})


def resolve(given: str, work_dir: str, log: Callable[[str], None]) -> Baseline:
    """A folder holding a built package as it is; anything else as a git ref, built (or found) in the cache."""
    if os.path.isdir(given):
        folder = package_folder(given)
        if folder is None:
            raise BaselineError(f"{given}: a folder, but no built pali_engine package in it (nor is it one): "
                                "a package folder holds pali_engine/__init__.py and its native module _core")
        return Baseline(folder, given, None, {"how": "a built package folder"})
    repo, commit = resolve_commit(given)
    return build_commit(repo, commit, os.path.join(work_dir, "baselines"), log, given)


# --------------------------------------------------------------------------
# the worker process

_live_workers: "weakref.WeakSet[BaselineWorker]" = weakref.WeakSet()


@atexit.register
def _close_live_workers() -> None:
    for worker in list(_live_workers):
        worker.close()


def _site_dirs() -> List[str]:
    """The folders the worker needs after the baseline's: this environment's site-packages."""
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    dirs += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [d for i, d in enumerate(dirs) if d and os.path.isdir(d) and d not in dirs[:i]]


class BaselineWorker:
    """The worker process of one baseline package, with a request/reply call over its pipes."""

    def __init__(self, package_dir: str):
        self.package_dir = package_dir
        self.proc = subprocess.Popen([sys.executable, "-S", "-u", WORKER_SCRIPT, package_dir, *_site_dirs()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        _live_workers.add(self)

    def call(self, request: Dict) -> Dict:
        if self.proc.poll() is not None:
            raise BaselineError(f"the baseline worker has exited (code {self.proc.returncode})")
        try:
            pickle.dump(request, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
            reply = pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError, OSError) as error:
            code = self.proc.poll()
            raise BaselineError(f"the baseline worker died ({type(error).__name__}; exit code {code}); its "
                                f"stderr is in the log above") from None
        if "error" in reply:
            raise BaselineError(f"in the baseline worker: {reply['error']}\n{reply.get('traceback', '')}".rstrip())
        return reply

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 10.0) -> None:
        """Asks the worker to exit; ends it if it does not within ``timeout`` (it may be mid-run)."""
        _live_workers.discard(self)
        if self.proc.poll() is None:
            try:
                pickle.dump({"op": "exit"}, self.proc.stdin)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BaselinePeer(Peer):
    """The baseline build at one dtype: its own worker process, called like the engine peer."""

    def __init__(self, baseline: Baseline, dtype: str):
        self.baseline = baseline
        self.dtype = dtype
        self.precision = {"float32": "f32", "float16": "f16", "int8": "int8"}[dtype]
        self.name = f"engine-baseline {self.precision}"
        #: The current engine's row this one is paired with, round by round.
        self.pairs_with = f"engine {self.precision}"
        self.worker: Optional[BaselineWorker] = None
        self.handle = None
        self.load_info: Dict = {}

    def missing(self):
        return None if package_folder(self.baseline.package_dir) else f"no pali_engine in {self.baseline.package_dir}"

    def load(self, art, shared, threads):
        self.close()
        self.worker = BaselineWorker(self.baseline.package_dir)
        reply = self.worker.call({"op": "load", "model": art.onnx_path, "dtype": self.dtype, "threads": threads})
        self.handle = reply["handle"]
        self.load_info = {k: reply[k] for k in ("call", "version")}

    def run(self, inputs, case: Case):
        # NumPy arrays and the images, without the harness's bookkeeping
        wanted = ("pixel_values", "input_ids", "attention_mask", "images", "prompts")
        return self.worker.call({"op": "run", "handle": self.handle,
                                 "inputs": {k: inputs[k] for k in wanted},
                                 "case": {"batch": case.batch, "beams": case.beams,
                                          "new_tokens": case.new_tokens}})["result"]

    def close(self):
        if self.worker is not None:
            self.worker.close()
        self.worker, self.handle = None, None


def baseline_peers(baseline: Baseline, engine_dtypes) -> List[BaselinePeer]:
    return [BaselinePeer(baseline, d) for d in engine_dtypes]


def round_order(peers: list, round_index: int) -> list:
    """The peers' order in one round: on odd rounds each baseline runs before the engine row it is
    paired with (A B, B A, ...), so that going first or second in a pair favours neither build."""
    order = list(peers)
    if round_index % 2:
        for i in range(1, len(order)):
            if getattr(order[i], "pairs_with", None) == order[i - 1].name:
                order[i - 1], order[i] = order[i], order[i - 1]
    return order
