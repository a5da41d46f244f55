"""Caption latency under contention: the engine before and after, beside onnxruntime and PyTorch.

Why: a serving machine is rarely idle, and a request whose threads wait for a
partner thread that the OS has descheduled takes many times its quiet time.
This times the whole caption request (image array in, text out, greedy until
eos; the requests of benchmarks/caption_latency.py) for each peer

* ``engine f32`` / ``engine int8``: this build (``Engine.generate(image, prompt)``);
* ``before f32`` / ``before int8``: the same through another build of the engine,
  by default the commit before the thread pool (``--baseline``, built once into
  the bench cache by benchmarks/baseline.py);
* ``pytorch``: export/model.py's cached generate (``TorchBackend``);
* ``onnxruntime``: the vision, encoder and past-KV decoder graphs of the same
  weights (benchmarks/ort_graphs.py), greedy until eos;

at each thread count, under each condition:

* ``quiet``: requests from the process's main thread, nothing else started;
* ``thread``: the same requests from a thread of the process (as a server's
  executor calls the engine);
* ``busy``: from the main thread, while a competing busy process (a Python busy
  loop, one thread) runs.

Every peer runs in a process of its own (benchmarks/latency_worker.py; one
for its requests from the main thread, another for those from a thread). The
run is in rounds, and each round times every (condition, threads, peer) block
once, conditions and peers in an order that turns each round, so that the
shared machine's slow changes fall on all alike. Reported per cell: median,
p90 and p99 over all rounds' requests (ms), and the load average around the
run. The busy process is started before a block (and given a moment to get
going) and ended after it.

    python -m pali_engine.benchmarks.contention [--threads 1 2] [--n 40] [--rounds 4]
        [--baseline REF] [--peers engine,before,pytorch,onnxruntime] [--conditions quiet,thread,busy]
        [--shield NICE] [--json OUT.json]

On a machine that other people's builds and tests share, "quiet" is not: each
block records the cores that processes other than the benchmark's used
meanwhile ("other load"), and ``--shield -15`` runs the benchmark (its workers
and its busy process alike) in a session of its own whose autogroup has that
nice value (Linux; root), so that the other tenants take less of the cores
from it; the busy process still competes with the peers as an equal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import pickle
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "latency_worker.py")
#: The commit before parallel_for and parallel_rows moved from OpenMP to the engine's pool.
DEFAULT_BASELINE = "cd262ca999c6749732b15edf1ba6632a41c093f4"
CONDITIONS = ("quiet", "thread", "busy")
BUSY_LOOP = "while True: pass"


class Worker:
    """One peer's process and its request/reply call."""

    def __init__(self, label: str, argv: List[str], env: Optional[Dict[str, str]] = None):
        self.label = label
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env)

    def call(self, request: Dict) -> Dict:
        pickle.dump(request, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()
        try:
            reply = pickle.load(self.proc.stdout)
        except EOFError:
            raise RuntimeError(f"{self.label}: the worker died (exit code {self.proc.poll()})") from None
        if "error" in reply:
            raise RuntimeError(f"{self.label}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def close(self) -> None:
        try:
            pickle.dump({"op": "exit"}, self.proc.stdin)
            self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (Linux's /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _process_s(pid: int) -> float:
    """CPU seconds process ``pid`` (all its threads) has used."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BusyProcess:
    """A competing process that keeps one core busy while it lives."""

    def __init__(self):
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", BUSY_LOOP])
        time.sleep(0.3)  # running and spread onto a core before the first timed request
        return self

    def cpu_s(self) -> float:
        return _process_s(self.proc.pid) if self.proc else 0.0

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def _time_block(worker: Worker, request: Dict, busy: bool) -> tuple:
    """The block's request times and the load on the machine from processes other than the
    benchmark's own during it (in cores: 0.5 is half a core busy on average)."""
    hog = BusyProcess()
    with (hog if busy else contextlib.nullcontext()):
        mine = (_process_s(worker.proc.pid), _process_s(os.getpid()), hog.cpu_s())
        machine, start = _machine_busy_s(), time.perf_counter()
        reply = worker.call(request)
        wall = time.perf_counter() - start
        machine = _machine_busy_s() - machine
        mine = (_process_s(worker.proc.pid) - mine[0]) + (_process_s(os.getpid()) - mine[1]) + \
            (hog.cpu_s() - mine[2])
    return reply["ms"], reply["texts"], max(0.0, (machine - mine) / wall)


def _peer_specs(peers: List[str], dtypes: List[str], baseline_dir: Optional[str]):
    """(label, worker args before the threads) per peer row."""
    from .baseline import _site_dirs

    specs = []
    for peer in peers:
        if peer in ("engine", "before"):
            for dtype in dtypes:
                precision = {"float32": "f32", "int8": "int8"}[dtype]
                if peer == "engine":
                    specs.append((f"engine {precision}", ["-u", WORKER, "engine", dtype], []))
                else:
                    specs.append((f"before {precision}", ["-S", "-u", WORKER, "engine", dtype],
                                  [baseline_dir, *_site_dirs()]))
        elif peer in ("pytorch", "onnxruntime"):
            specs.append((peer, ["-u", WORKER, peer, "float32"], []))
        else:
            raise SystemExit(f"unknown peer {peer!r} (engine, before, pytorch, onnxruntime)")
    return specs


def _autogroup() -> Optional[str]:
    try:
        with open("/proc/self/autogroup") as f:
            return f.read().strip()
    except OSError:
        return None


def _policy() -> str:
    """This process's scheduling policy (SCHED_OTHER unless started under e.g. ``chrt -f 1``)."""
    try:
        policy = os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return "?"
    names = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
             if hasattr(os, n)}
    return names.get(policy, str(policy))


def _stats(ms: List[float]) -> Dict:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "requests": int(a.size)}


def measure(threads=(1, 2), n: int = 40, rounds: int = 4, peers=("engine", "before", "pytorch", "onnxruntime"),
            dtypes=("float32", "int8"), conditions=CONDITIONS, baseline: str = DEFAULT_BASELINE,
            work_dir: Optional[str] = None, seed: int = 0, log=print) -> Dict:
    from pali_engine.engine import default_model_path

    from .baseline import head_commit, resolve
    from .caption_latency import _requests

    work_dir = work_dir or os.path.join(os.path.expanduser("~"), ".cache", "pali-engine", "bench")
    model = default_model_path()
    baseline_build = resolve(baseline, work_dir, log) if "before" in peers else None
    specs = _peer_specs(list(peers), list(dtypes), baseline_build.package_dir if baseline_build else None)
    from pali_engine import Engine

    requests = _requests(n, Engine.load(model, threads=1).config["image_size"], seed)
    # A process for the requests from a thread and another for those from the main thread:
    # a runtime that keeps state per calling thread (OpenMP's teams) would carry one into the other.
    callers = sorted({"thread" if c == "thread" else "main" for c in conditions})
    workers: Dict[tuple, Worker] = {}
    try:
        for label, head, tail in specs:
            for t in threads:
                for caller in callers:
                    w = Worker(f"{label} t{t} {caller}", [sys.executable, *head, str(t), model, work_dir, *tail])
                    w.call({"op": "load", "requests": requests})
                    workers[(label, t, caller)] = w
        log(f"[contention] {len(workers)} workers loaded; {rounds} rounds of {len(conditions)} conditions x "
            f"{len(threads)} thread counts x {len(specs)} peers, {n} requests each")
        times: Dict[tuple, List[float]] = {(c, label, t): [] for c in conditions for label, _, _ in specs
                                           for t in threads}
        blocks: Dict[tuple, List[Dict]] = {k: [] for k in times}
        texts: Dict[str, List[str]] = {}
        load_before = os.getloadavg()
        started = time.time()
        labels = [label for label, _, _ in specs]
        for r in range(rounds):
            order = list(conditions)[r % len(conditions):] + list(conditions)[:r % len(conditions)]
            for condition in order:
                for t in threads:
                    turn = labels[r % len(labels):] + labels[:r % len(labels)]
                    for label in turn:
                        request = {"op": "time", "from_thread": condition == "thread"}
                        worker = workers[(label, t, "thread" if condition == "thread" else "main")]
                        ms, said, other = _time_block(worker, request, condition == "busy")
                        times[(condition, label, t)] += ms
                        blocks[(condition, label, t)].append({"round": r, "median_ms": float(np.median(ms)),
                                                              "other_load": round(other, 3)})
                        texts.setdefault(label, said)
            log(f"[contention] round {r + 1}/{rounds} done ({time.time() - started:.0f} s, "
                f"load {os.getloadavg()[0]:.1f})")
        load_after = os.getloadavg()
    finally:
        for w in workers.values():
            w.close()
    reference = texts.get("pytorch")
    cells = []
    for (condition, label, t), ms in times.items():
        cell = {"condition": condition, "peer": label, "threads": t, **_stats(ms),
                "other_load": float(np.mean([b["other_load"] for b in blocks[(condition, label, t)]])),
                "blocks": blocks[(condition, label, t)]}
        if reference:
            cell["same_text_as_pytorch"] = int(sum(a == b for a, b in zip(texts[label], reference)))
        cells.append(cell)
    return {"benchmark": "contention", "requests": n, "rounds": rounds, "threads": list(threads),
            "conditions": list(conditions), "busy_process": f"{os.path.basename(sys.executable)} -S -c "
                                                            f"'{BUSY_LOOP}'",
            "engine_build": head_commit(),
            "baseline": baseline_build.describe() if baseline_build else None,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
            "load_average_before": list(load_before), "load_average_after": list(load_after),
            "autogroup": _autogroup(), "scheduling_policy": _policy(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cells": cells}


def table(result: Dict) -> str:
    """One row per peer and thread count; per condition median / p99 (ms), and busy over quiet."""
    cell = {(c["condition"], c["peer"], c["threads"]): c for c in result["cells"]}
    conditions = result["conditions"]
    peers = list(dict.fromkeys(c["peer"] for c in result["cells"]))
    head = ["peer", "threads"] + [f"{c}: median / p99 ms" for c in conditions]
    if "quiet" in conditions and "busy" in conditions:
        head += ["busy / quiet median", "busy p99 / quiet median"]
    if "quiet" in conditions and "thread" in conditions:
        head += ["thread / quiet median"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in result["threads"]:
        for p in peers:
            row = [p, str(t)]
            for c in conditions:
                x = cell[(c, p, t)]
                row.append(f"{x['median_ms']:.1f} / {x['p99_ms']:.1f}")
            if "quiet" in conditions and "busy" in conditions:
                q, b = cell[("quiet", p, t)], cell[("busy", p, t)]
                row += [f"{b['median_ms'] / q['median_ms']:.2f}x", f"{b['p99_ms'] / q['median_ms']:.2f}x"]
            if "quiet" in conditions and "thread" in conditions:
                row.append(f"{cell[('thread', p, t)]['median_ms'] / cell[('quiet', p, t)]['median_ms']:.2f}x")
            lines.append("| " + " | ".join(row) + " |")
    others = [c["other_load"] for c in result["cells"]]
    same = {c["peer"]: c["same_text_as_pytorch"] for c in result["cells"] if "same_text_as_pytorch" in c}
    la, lb = result["load_average_before"], result["load_average_after"]
    lines.append("")
    lines.append(f"{result['requests']} requests x {result['rounds']} rounds per cell; load average "
                 f"{la[0]:.1f} before, {lb[0]:.1f} after; other processes' load during the blocks "
                 f"{min(others):.2f}-{max(others):.2f} cores (mean {float(np.mean(others)):.2f}); "
                 f"autogroup {result.get('autogroup')}; {result.get('scheduling_policy', 'SCHED_OTHER')}; "
                 f"{result['date']}")
    if same:
        lines.append("same text as PyTorch (of " + str(result["requests"]) + "): " +
                     ", ".join(f"{p} {n}" for p, n in same.items()))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=40, help="requests per block (default 40)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--peers", default="engine,before,pytorch,onnxruntime")
    ap.add_argument("--dtypes", default="float32,int8", help="the engine's dtypes (default float32,int8)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="the build 'before' rows run (a git ref or a "
                    "folder holding a built package; default: the commit before the thread pool)")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--shield", type=int, default=None, metavar="NICE",
                    help="run in an autogroup of this nice value (e.g. -15), away from other tenants' load")
    ap.add_argument("--json", default=None, help="also write the result here (with the command line)")
    args = ap.parse_args(argv)
    if args.shield is not None:
        from .harness import shield

        shield(args.shield)
    result = measure(args.threads, args.n, args.rounds, args.peers.split(","), args.dtypes.split(","),
                     args.conditions.split(","), args.baseline, args.work_dir,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    from .harness import report

    report(result, "contention", argv, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
