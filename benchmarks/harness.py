"""``pali-engine bench``: the engine beside its peers, same weights, same inputs, one run.

    pali-engine bench --quick                       # under a minute: default model, b1 greedy, 3 peers
    pali-engine bench --sizes default,small,base    # the full run (docs/benchmarks.md)
    pali-engine bench --quick --baseline 1592b7c    # beside another build of the engine (baseline.py)

For each size the harness writes (or reuses) the weights and every peer's files,
measures each peer's peak memory in a fresh subprocess, loads all peers in this
process, and then, per case (batch x search), warms every peer up and runs them
interleaved (A B C A B C ...) ``repeats`` times, so that slow drifts of a shared
machine hit all of them alike.  It reports medians with min-max, the floors
measured in the same run (read bandwidth, sgemm), the ratios to the engine and
the round-by-round ratios to the engine with a 95% interval of their median; a
Markdown table on stdout, a JSON file and a PNG plot in ``--out-dir``.

Peers that cannot run here (a package not installed, a failed load) are
reported as skipped with the reason; they never fail the run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from typing import Dict, List, Optional

from . import caption_latency
from . import floors as floors_mod
from . import models
from .baseline import BaselineError, round_order
from .peers import Case, all_peers

METRICS = ("vision_ms", "encoder_ms", "ttft_ms", "step_ms", "total_ms", "tokens_per_s")
DEFAULT_REPEATS = {"tiny": 5, "default": 5, "small": 3, "base": 2}
#: --quick's peers unless --peers is given: transformers and CTranslate2 add half a minute on
#: two cores (a converted model, two timing processes of their own) for a quick look.
QUICK_PEERS = "engine,pytorch,onnxruntime"
#: Seconds between two peers' runs: thread pools (OpenMP, onnxruntime, the engine's) spin
#: after their work; the next peer should not share the cores with that.
PAUSE_S = 0.5


def _csv(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_case(name: str, new_tokens: int) -> Case:
    """"b8-greedy" -> Case(8, 1, new_tokens); "b1-beam4" -> Case(1, 4, new_tokens)."""
    import re

    m = re.fullmatch(r"b(\d+)-(greedy|beam(\d+))", name.strip())
    if not m or int(m.group(1)) < 1 or (m.group(3) is not None and int(m.group(3)) < 1):
        raise ValueError(f"unknown case {name!r}: write bB-greedy or bB-beamK, e.g. b8-greedy, b1-beam4")
    return Case(int(m.group(1)), int(m.group(3) or 1), new_tokens)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a short run, under a minute on 2 cores: the default model (tiny when there is "
                             f"none), batch 1, greedy, 3 repeats, peers {QUICK_PEERS} unless --peers is given, "
                             "no memory probes, no files unless --out-dir is given")
    parser.add_argument("--sizes", default=None,
                        help=f"comma list of {', '.join(models.SIZES)} (default: default,small,base)")
    parser.add_argument("--model", default=None,
                        help="a pali-engine ONNX file to use as the size 'default' (default: the bundled model)")
    parser.add_argument("--cases", default=None,
                        help="comma list of cases bB-greedy / bB-beamK (default b1-greedy,b1-beam4,b8-greedy; "
                             "--quick: b1-greedy)")
    parser.add_argument("--batches", default=None, help="comma list of batch sizes: with --beams, their cross "
                                                        "product instead of --cases")
    parser.add_argument("--beams", default=None, help="comma list of beam counts, 1 = greedy (see --batches)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated, forced (default 32)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per peer and case (default: 5 default/tiny, 3 small, 2 base)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per peer and case (default 1)")
    parser.add_argument("--peers", default=None,
                        help="comma list among engine, pytorch, transformers, onnxruntime, ctranslate2 (default all)")
    parser.add_argument("--engine-dtypes", default="float32,int8,float16",
                        help="the engine's weight formats, one row each (default float32,int8,float16)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all cores)")
    parser.add_argument("--work-dir", default=None,
                        help="where weights and peer files are written and reused "
                             "(default ~/.cache/pali-engine/bench)")
    parser.add_argument("--out-dir", default=None,
                        help="where the JSON and PNG go (default benchmarks/results when run from the "
                             "repository, else the current folder; --quick: none)")
    parser.add_argument("--memory", dest="memory", action="store_true", default=None,
                        help="measure each peer's peak RSS in a subprocess (default on, off with --quick)")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-plot", action="store_true", help="no PNG")
    parser.add_argument("--no-caption", action="store_true",
                        help="skip the end-to-end caption latency of the default model (engine vs PyTorch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    parser.add_argument("--baseline", default=None, metavar="REF_OR_DIR",
                        help="another build of the engine as a peer, rows engine-baseline <dtype>, paired round "
                             "by round with the engine at the same dtype: a git ref of this repository (built "
                             "once into the work dir's cache) or a folder holding a built pali_engine package")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------
# machine and versions

def report(result: Dict, module: str, argv: Optional[List[str]], table: str, json_path: Optional[str]) -> None:
    """A benchmark script's ending: the machine, the versions and the command that made ``result``
    added to it, ``table`` printed, and the JSON written to ``json_path`` when given."""
    result.setdefault("machine", machine_info())
    result["versions"] = package_versions()
    result["command"] = f"python -m pali_engine.benchmarks.{module} " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)


def machine_info() -> Dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    return info


def package_versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out = {}
    for name in ("pali-engine", "numpy", "torch", "onnx", "onnxruntime", "transformers", "ctranslate2", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rss_mb() -> Optional[float]:
    return _status_mb("VmRSS")


def _reset_peak_rss() -> bool:
    """Resets the kernel's RSS high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# peer selection

def select_peers(args) -> list:
    dtypes = _csv(args.engine_dtypes)
    peers = all_peers(dtypes)
    if args.peers:
        from .peers import PEER_KEYS

        wanted = set()
        for p in _csv(args.peers):
            if p.lower() not in PEER_KEYS:
                raise ValueError(f"unknown peer {p!r}; choose from {', '.join(sorted(set(PEER_KEYS.values())))}")
            wanted.add(PEER_KEYS[p.lower()])
        peers = [p for p in peers if p.name.split()[0] in wanted]
    resolved = getattr(args, "baseline_build", None)
    if resolved is not None:  # each baseline row right after the engine row it is paired with
        from .baseline import baseline_peers

        for b in baseline_peers(resolved, dtypes):
            names = [p.name for p in peers]
            peers.insert(names.index(b.pairs_with) + 1 if b.pairs_with in names else len(peers), b)
    return peers


def _torch_loader(art, shared, full_model_for_all: bool):
    """shared["torch_model"](keep): the PyTorch model (the whole one in the main process)."""
    cache = {}

    def get(keep):
        k = None if full_model_for_all else (tuple(keep) if keep else None)
        if k not in cache:
            cache[k] = models.load_torch_model(art.state_dict_path, art.config, keep=k)
        return cache[k]

    shared["torch_model"] = get


def prepare_peer_files(art, peers, shared, log) -> Dict[str, str]:
    """ONNX graphs for onnxruntime and the CTranslate2 model, written once; {peer name: error}."""
    errors = {}
    for p in peers:
        try:
            if p.name == "onnxruntime":
                from . import ort_graphs

                if not ort_graphs.have_graphs(art.ort_folder):
                    log(f"[{art.size}] exporting the onnxruntime peer's graphs ...")
                    ort_graphs.export_graphs(shared["torch_model"](None), art.ort_folder, log=log)
            elif p.name.startswith("ctranslate2") and not os.path.isfile(os.path.join(art.ct2_folder, "model.bin")):
                from pali_engine.export.hf_t5 import build_hf_t5

                from .peers import _state_dict, convert_ct2

                log(f"[{art.size}] converting the text model for CTranslate2 ...")
                hf = shared.get("hf_model") or build_hf_t5(art.config, _state_dict(art))
                shared["hf_model"] = hf
                convert_ct2(hf, art.config.vocab_size, art.ct2_folder)
        except Exception as error:
            errors[p.name] = f"preparing its files failed: {type(error).__name__}: {error}"
            log(traceback.format_exc())
    return errors


# --------------------------------------------------------------------------
# memory probe: one peer, fresh process

def probe_main(spec: Dict) -> int:
    """In a subprocess: import what the peer needs, load it, run one case; print peak RSS."""
    peers = {p.name: p for p in all_peers(tuple(spec["engine_dtypes"]))}
    peer = peers[spec["peer"]]
    needs = peer.needs if peer.probe_needs is None else peer.probe_needs
    for mod in needs:
        __import__(mod)
    if "torch" in needs:
        import torch

        torch.set_num_threads(spec["threads"])
    if peer.name.startswith("engine"):
        import pali_engine.native_backend  # noqa: F401
    info = json.load(open(os.path.join(spec["folder"], "info.json")))
    cfg = models.PaliConfig.from_dict(info["config"])
    tok = open(os.path.join(spec["folder"], "tokenizer.model"), "rb").read()
    art = models.Artifacts(spec["size"], spec["folder"], cfg, spec["onnx_path"],
                           os.path.join(spec["folder"], "state_dict.pt"), tok, info)
    case = Case(spec["batch"], spec["beams"], spec["new_tokens"])
    inputs = models.make_inputs(art, case.batch, spec["seed"])
    base_rss = _rss_mb()
    reset = _reset_peak_rss()
    shared: Dict = {"log": lambda s: None}
    _torch_loader(art, shared, full_model_for_all=False)
    t0 = time.perf_counter()
    peer.load(art, shared, spec["threads"])
    load_s = time.perf_counter() - t0
    if spec.get("timing"):
        print(json.dumps(timing_probe(peer, art, shared, spec, load_s)))
        return 0
    after_load = _rss_mb()
    peer.run(inputs, case)
    peak = _status_mb("VmHWM") if reset else None
    print(json.dumps({"peak_rss_mb": round(peak if peak is not None else _maxrss_mb(), 1),
                      "peak_source": "VmHWM, reset after the imports" if peak is not None
                      else "ru_maxrss (imports included)",
                      "baseline_rss_mb": round(base_rss, 1) if base_rss else None,
                      "rss_after_load_mb": round(after_load, 1) if after_load else None,
                      "load_s": round(load_s, 2), "case": case.name}))
    return 0


def timing_probe(peer, art, shared, spec, load_s: float) -> Dict:
    """In a subprocess: the timed runs of one (isolated) peer, every case, as bench_size does them."""
    out: Dict = {"load_s": round(load_s, 2), "runs": {}, "failed": {}}
    try:
        out["check"] = peer.check(art, shared, models.make_inputs(art, 1, spec["seed"]))
    except Exception as error:
        out["check"] = {"error": f"{type(error).__name__}: {error}"}
    timing = spec["timing"]
    for batch, beams, new_tokens in timing["cases"]:
        case = Case(batch, beams, new_tokens)
        inputs = models.make_inputs(art, batch, spec["seed"])
        runs = []
        try:
            for r in range(timing["warmup"] + timing["repeats"]):
                res = peer.run(inputs, case)
                if r >= timing["warmup"]:
                    runs.append(res)
                time.sleep(PAUSE_S)
        except Exception as error:
            out["failed"][case.name] = f"{type(error).__name__}: {error}"
            continue
        out["runs"][case.name] = runs
    return out


def run_probe(art, peer, case, args, threads, timing: Optional[Dict] = None) -> Dict:
    """Runs probe_main in a fresh process: the memory probe of one case, or with ``timing``
    ({"cases": [[batch, beams, new_tokens], ...], "warmup": W, "repeats": R}) the timed runs."""
    spec = {"peer": peer.name, "size": art.size, "folder": art.folder, "onnx_path": art.onnx_path,
            "batch": case.batch, "beams": case.beams, "new_tokens": case.new_tokens, "threads": threads,
            "seed": args.seed, "engine_dtypes": _csv(args.engine_dtypes), "timing": timing}
    cmd = [sys.executable, "-m", "pali_engine.benchmarks.harness", "--probe", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600 if timing else 900)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------
# measuring

def _stats(values: List[float]) -> Optional[Dict[str, float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def derive(run: Dict, case: Case, vision_offset: Optional[float]) -> Dict:
    """Per-run metrics; text-only peers get PyTorch's vision time added to ttft and total."""
    off = vision_offset or 0.0
    total = run["total_ms"] + (off if run.get("vision_ms") is None else 0.0)
    ttft = run["ttft_ms"] + (off if run.get("vision_ms") is None else 0.0)
    steps = max(1, run["steps"])
    return {"vision_ms": run["vision_ms"] if run.get("vision_ms") is not None else vision_offset,
            "encoder_ms": run.get("encoder_ms"), "ttft_ms": ttft,
            "step_ms": (run["total_ms"] - run["ttft_ms"]) / max(1, steps - 1),
            "total_ms": total, "tokens_per_s": case.batch * case.new_tokens / total * 1e3}


def median_interval(values: List[float], confidence: float = 0.95) -> Optional[Dict[str, float]]:
    """The median of ``values`` with a distribution-free interval for it: the order statistics
    x(k) and x(n + 1 - k) for the largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2.
    None when fewer than 6 values (too few for a 95% interval)."""
    xs = sorted(values)
    n = len(xs)
    tail, k, cumulative = (1 - confidence) / 2, 0, 0.0
    while k < n and cumulative + math.comb(n, k) / 2 ** n <= tail:
        cumulative += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        return None
    return {"median": statistics.median(xs), "low": xs[k - 1], "high": xs[n - k],
            "confidence": round(1 - 2 * cumulative, 3), "n": n}


def paired(runs: Dict[str, List[Dict]], reference: str, metric: str) -> Dict[str, Dict]:
    """Round-by-round ratios peer / reference of one metric, for peers timed interleaved with the
    reference: a shared machine's slow drifts hit both runs of a round alike and cancel in their
    ratio, which medians over whole runs do not. Per peer: the median ratio with its 95% interval
    and the rounds where the reference was faster (> 1: the reference is faster)."""
    out: Dict[str, Dict] = {}
    ref = [r.get(metric) for r in runs.get(reference, [])]
    for name, rs in runs.items():
        if name == reference:
            continue
        ratios = [r.get(metric) / a for r, a in zip(rs, ref) if a and r.get(metric) is not None]
        if len(ratios) != len(ref) or not ratios:
            continue
        out[name] = {**(median_interval(ratios) or {"median": statistics.median(ratios), "n": len(ratios)}),
                     "reference_faster": sum(x > 1 for x in ratios)}
    return out


def agreement(tokens, scores, ref_tokens, ref_scores) -> Dict:
    rows = len(ref_tokens)
    same = sum(1 for a, b in zip(tokens, ref_tokens) if list(a) == list(b))
    prefix = []
    for a, b in zip(tokens, ref_tokens):
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        prefix.append(n / max(1, len(b)))
    diffs = [abs(a - b) for a, b, t, r in zip(scores or [], ref_scores, tokens, ref_tokens) if list(t) == list(r)]
    return {"rows_equal": same, "rows": rows, "mean_prefix_agreement": round(sum(prefix) / max(1, rows), 3),
            "max_score_diff_equal_rows": (max(diffs) if diffs else None)}


#: The metrics of the current build over the baseline's, round by round.
VERSUS_BASELINE_METRICS = ("total_ms", "step_ms", "ttft_ms", "vision_ms")


def same_tokens(runs: List[Dict], ref_runs: List[Dict]) -> Dict:
    """Whether every timed run of two rows gave the same tokens, and the largest score difference."""
    rows = equal = 0
    diffs = []
    for a, b in zip(runs, ref_runs):
        for ta, tb in zip(a["tokens"], b["tokens"]):
            rows += 1
            equal += list(ta) == list(tb)
        diffs += [abs(x - y) for x, y in zip(a.get("scores") or [], b.get("scores") or [])]
    return {"identical": rows > 0 and equal == rows, "rows_equal": equal, "rows": rows,
            "max_score_diff": max(diffs) if diffs else None}


def against_baseline(current: str, baseline: str, runs: Dict[str, List[Dict]],
                     interleaved: Dict[str, List[Dict]]) -> Dict:
    """The current engine row over its baseline row at the same dtype, round by round: per metric
    the median ratio current / baseline with its 95% interval (< 1: the current build is faster)
    and the rounds where the current build was faster; and the tokens of every timed run compared."""
    ratios = {}
    for metric in VERSUS_BASELINE_METRICS:
        pairs = list(zip(interleaved[current], interleaved[baseline]))
        values = [a.get(metric) / b.get(metric) for a, b in pairs if a.get(metric) is not None and b.get(metric)]
        if values and len(values) == len(pairs):
            ratios[metric] = {**(median_interval(values) or {"median": statistics.median(values), "n": len(values)}),
                              "current_faster": sum(v < 1 for v in values)}
    return {"current": current, "baseline": baseline, "ratios": ratios,
            "tokens": same_tokens(runs[current], runs[baseline])}


def bench_size(size: str, args, cases: List[Case], machine: Dict, threads: int, log) -> Dict:
    import torch

    out: Dict = {"size": size, "skipped": {}, "cases": {}}
    art = models.prepare(size, args.work_dir, seed=args.seed, log=log, model_path=args.model)
    cfg = art.config
    out["config"] = cfg.to_dict()
    out["weights"] = art.info.get("source")
    counts = models.parameter_counts(cfg)
    out["parameters"] = counts
    shared: Dict = {"log": log, "whole_torch_model": True}
    _torch_loader(art, shared, full_model_for_all=True)

    peers = []
    for p in select_peers(args):
        why = p.missing()
        if why:
            out["skipped"][p.name] = why
        else:
            peers.append(p)
    out["skipped"].update(prepare_peer_files(art, peers, shared, log))
    peers = [p for p in peers if p.name not in out["skipped"]]
    shared.pop("hf_model", None)

    # peak memory, each peer alone in a fresh process, on the largest case
    out["memory"] = {"method": "peak RSS of a fresh Python process that imports the peer's packages "
                               "(baseline_rss_mb), then loads the peer and runs the largest case once: the "
                               "high-water mark VmHWM, reset after the imports (so an import-time peak does "
                               "not count; the resident imports do)", "case": None, "peers": {}}
    if args.memory:
        big = max(cases, key=lambda c: (c.batch * c.beams, c.batch))
        out["memory"]["case"] = big.name
        for p in peers:
            if getattr(p, "pairs_with", None):
                out["memory"]["peers"][p.name] = {"error": "not measured: a baseline runs in a worker process"}
                continue
            log(f"[{size}] peak memory of {p.name} ({big.name}) ...")
            out["memory"]["peers"][p.name] = run_probe(art, p, big, args, threads)

    repeats = args.repeats if args.repeats is not None else DEFAULT_REPEATS.get(size, 3)
    isolated_runs: Dict[str, Dict] = {}
    for p in [p for p in peers if p.isolated]:
        log(f"[{size}] {p.name}: timed in a process of its own ...")
        timing = {"cases": [[c.batch, c.beams, c.new_tokens] for c in cases], "warmup": args.warmup,
                  "repeats": repeats}
        res = run_probe(art, p, cases[0], args, threads, timing=timing)
        if "error" in res:
            out["skipped"][p.name] = f"isolated run failed: {res['error']}"
            continue
        isolated_runs[p.name] = res
        out.setdefault("load_s", {})[p.name] = res["load_s"]
        if res.get("check"):
            out.setdefault("checks", {})[p.name] = res["check"]
            log(f"[{size}] check {p.name}: {res['check']}")
    isolated = [p for p in peers if p.name in isolated_runs]
    peers = [p for p in peers if not p.isolated]

    loaded = []
    try:
        for p in peers:
            t0 = time.perf_counter()
            try:
                p.load(art, shared, threads)
                loaded.append(p)
                out.setdefault("load_s", {})[p.name] = round(time.perf_counter() - t0, 2)
                if getattr(p, "load_info", None):
                    out.setdefault("baseline_load", {})[p.name] = p.load_info
                chk = p.check(art, shared, models.make_inputs(art, 1, args.seed))
                if chk:
                    out.setdefault("checks", {})[p.name] = chk
                    log(f"[{size}] check {p.name}: {chk}")
            except Exception as error:
                out["skipped"][p.name] = f"load failed: {type(error).__name__}: {error}"
                log(traceback.format_exc())
        peers = loaded
        model = shared["torch_model"](None)
        out["repeats"], out["warmup"] = repeats, args.warmup
        out["isolated_peers"] = [p.name for p in isolated]

        for case in cases:
            inputs = models.make_inputs(art, case.batch, args.seed)
            out["encoder_tokens"] = inputs["image_tokens"] + inputs["prompt_tokens"]
            out["image_tokens"], out["prompt_tokens"] = inputs["image_tokens"], inputs["prompt_tokens"]
            log(f"[{size}] {case.name}: reference tokens (PyTorch) ...")
            with torch.no_grad():
                ref_t, ref_s = model.generate(torch.from_numpy(inputs["pixel_values"]),
                                              torch.from_numpy(inputs["input_ids"]),
                                              torch.from_numpy(inputs["attention_mask"]),
                                              max_new_tokens=case.new_tokens, num_beams=case.beams,
                                              min_new_tokens=case.new_tokens)
            ref = (ref_t.tolist(), ref_s.tolist())
            text_ref = None
            if any(p.name.startswith("ctranslate2") for p in peers + isolated):
                from .peers import text_reference

                text_ref = text_reference(model, inputs["source_ids"], case)
            runs: Dict[str, List[Dict]] = {p.name: [] for p in peers}
            failed: Dict[str, str] = {}
            active = list(peers)
            for r in range(args.warmup + repeats):
                for p in round_order(active, r):
                    try:
                        res = p.run(inputs, case)
                    except Exception as error:
                        failed[p.name] = f"{type(error).__name__}: {error}"
                        log(traceback.format_exc())
                        active.remove(p)
                        continue
                    if r >= args.warmup:
                        runs[p.name].append(res)
                    time.sleep(PAUSE_S)  # let the last peer's spinning worker threads go idle
                log(f"[{size}] {case.name}: round {r + 1}/{args.warmup + repeats} done")
            for p in isolated:
                runs[p.name] = isolated_runs[p.name]["runs"].get(case.name, [])
                if case.name in isolated_runs[p.name]["failed"]:
                    failed[p.name] = isolated_runs[p.name]["failed"][case.name]
            vision_offset = None
            if runs.get("pytorch"):
                vision_offset = statistics.median(x["vision_ms"] for x in runs["pytorch"])
            rows = {}
            for p in peers + isolated:
                if p.name in failed or not runs.get(p.name):
                    continue
                derived = [derive(x, case, vision_offset) for x in runs[p.name]]
                last = runs[p.name][-1]
                reference = text_ref if p.name.startswith("ctranslate2") else ref
                rows[p.name] = {
                    "precision": p.precision, "text_only": p.text_only,
                    **{m: _stats([d[m] for d in derived]) for m in METRICS},
                    "steps": last["steps"],
                    "agreement": agreement(last["tokens"], last["scores"], *reference),
                    "reference": "PyTorch text model on the same token ids" if p.name.startswith("ctranslate2")
                    else "PyTorch eager generate on the same inputs",
                    "raw": [{k: v for k, v in x.items() if k not in ("tokens", "scores")} for x in runs[p.name]],
                }
            interleaved = {p.name: [derive(x, case, None) for x in runs[p.name]] for p in peers
                           if p.name not in failed and runs.get(p.name)}
            out["cases"][case.name] = {"batch": case.batch, "beams": case.beams, "new_tokens": case.new_tokens,
                                       "peers": rows, "failed": failed,
                                       "paired": {m: paired(interleaved, "engine f32", m)
                                                  for m in ("vision_ms", "step_ms")}}
            versus = {p.name: against_baseline(p.pairs_with, p.name, runs, interleaved) for p in peers
                      if getattr(p, "pairs_with", None) and p.name in interleaved and p.pairs_with in interleaved}
            if versus:
                out["cases"][case.name]["versus_baseline"] = versus
        out["prefill_flops_per_image"] = models.prefill_flops(cfg, out.get("prompt_tokens", 0))
    finally:  # a baseline's worker process ends here too, on an error or a Ctrl-C
        for p in loaded:
            p.close()
    del shared
    return out


# --------------------------------------------------------------------------
# report

def _fmt(s: Optional[Dict], digits: int = 1) -> str:
    if not s:
        return "-"
    med = s["median"]
    if s["n"] > 1 and s["max"] > s["min"]:
        return f"{med:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"
    return f"{med:.{digits}f}"


def _engine_ref(rows: Dict, precision: str) -> Optional[float]:
    key = {"int8": "engine int8", "f16": "engine f16"}.get(precision, "engine f32")
    r = rows.get(key) or rows.get("engine f32")
    return r["step_ms"]["median"] if r and r.get("step_ms") else None


def table(result: Dict) -> str:
    lines = []
    for sz in result["sizes"]:
        mem = sz.get("memory", {}).get("peers", {})
        for cname, c in sz["cases"].items():
            lines.append(f"\n**{sz['size']}**, {cname} (batch {c['batch']}, "
                         f"{'greedy' if c['beams'] == 1 else 'beam ' + str(c['beams'])}, "
                         f"{c['new_tokens']} tokens forced; {sz.get('image_tokens')} image + "
                         f"{sz.get('prompt_tokens')} prompt tokens)\n")
            lines.append("| peer | vision ms | encoder ms | TTFT ms | ms/step | tokens/s | peak RSS MB "
                         "| step vs engine | same tokens |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for name, r in c["peers"].items():
                ref = _engine_ref(c["peers"], r["precision"])
                ratio = (f"{r['step_ms']['median'] / ref:.2f}x" if ref and r.get("step_ms") else "-")
                m = mem.get(name, {})
                rss = f"{m['peak_rss_mb']:.0f}" if "peak_rss_mb" in m else "-"
                ag = r["agreement"]
                vis = _fmt(r["vision_ms"]) + ("*" if r["text_only"] and r["vision_ms"] else "")
                lines.append(f"| {name} | {vis} | {_fmt(r['encoder_ms'])} | {_fmt(r['ttft_ms'])} | "
                             f"{_fmt(r['step_ms'], 2)} | {_fmt(r['tokens_per_s'])} | {rss} | {ratio} | "
                             f"{ag['rows_equal']}/{ag['rows']} |")
            f = c["floor"]
            lines.append(f"| floor | {f['vision_ms']:.1f} | {f['encoder_ms']:.1f} | {f['ttft_ms']:.1f} | "
                         f"{f['step_ms']['f32']:.2f} (int8 {f['step_ms']['int8']:.2f}) | "
                         f"{f['tokens_per_s']:.0f} | - | - | - |")
            for name, why in {**c.get("failed", {})}.items():
                lines.append(f"| {name} | failed: {why[:80]} | | | | | | | |")
            for metric, label in (("vision_ms", "vision"), ("step_ms", "ms/step")):
                pairs = c.get("paired", {}).get(metric, {})
                cells = [f"{name} {q['median']:.3f}" + (f" [{q['low']:.3f}, {q['high']:.3f}]" if "low" in q else "")
                         + f", engine faster in {q['reference_faster']}/{q['n']}" for name, q in pairs.items()]
                if cells:
                    lines.append(f"\n{label}, round by round, peer / engine f32 (median [95% interval]): "
                                 + "; ".join(cells))
            for v in c.get("versus_baseline", {}).values():
                lines.append(f"\n{v['current']} / {v['baseline']}, round by round (median [95% interval], "
                             f"< 1: the current build is faster): {_versus_cells(v)}")
        for name, why in sz["skipped"].items():
            lines.append(f"\nskipped on {sz['size']}: {name}: {why}")
    return "\n".join(lines)


_METRIC_LABELS = {"total_ms": "total", "step_ms": "ms/step", "ttft_ms": "TTFT", "vision_ms": "vision"}


def _ratio(q: Optional[Dict]) -> str:
    if not q:
        return "-"
    return f"{q['median']:.3f}" + (f" [{q['low']:.3f}, {q['high']:.3f}]" if "low" in q else "")


def _tokens_cell(t: Dict) -> str:
    diff = "-" if t["max_score_diff"] is None else f"{t['max_score_diff']:.2g}"
    return (f"{'identical' if t['identical'] else 'DIFFERENT'} ({t['rows_equal']}/{t['rows']} rows over the "
            f"timed runs), max score diff {diff}")


def _versus_cells(v: Dict) -> str:
    cells = [f"{_METRIC_LABELS[m]} {_ratio(q)}, current faster in {q['current_faster']}/{q['n']}"
             for m, q in v["ratios"].items()]
    return "; ".join(cells) + f"; tokens {_tokens_cell(v['tokens'])}"


def versus_baseline_summary(result: Dict) -> str:
    """One line per size, case and dtype: the current build over the baseline, round by round."""
    rows = []
    for sz in result["sizes"]:
        for cname, c in sz["cases"].items():
            for v in c.get("versus_baseline", {}).values():
                r, t = v["ratios"], v["tokens"]
                total = r.get("total_ms")
                faster = f"{total['current_faster']}/{total['n']}" if total else "-"
                diff = "-" if t["max_score_diff"] is None else f"{t['max_score_diff']:.2g}"
                rows.append(f"| {sz['size']} | {cname} | {v['current'].split()[-1]} | {_ratio(total)} | "
                            f"{_ratio(r.get('step_ms'))} | {_ratio(r.get('ttft_ms'))} | {faster} | "
                            f"{'yes' if t['identical'] else 'NO'} ({t['rows_equal']}/{t['rows']}) | {diff} |")
    if not rows:
        return ""
    b = result.get("baseline", {})
    name = (b.get("commit") or "")[:10] or b.get("given", "?")
    return (f"\ncurrent build ({(result.get('engine_build', {}).get('commit') or '?')[:10]}) / baseline ({name}), "
            "round by round, the same inputs: median ratio [95% interval] (< 1: the current "
            "build is faster)\n\n"
            "| size | case | dtype | total | ms/step | TTFT | current faster (total) | same tokens | max score diff |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def summary(result: Dict) -> str:
    """Compact tables across sizes (for the README): ms per decode step for each case, with the
    ratio to the engine at the same precision, and the floor."""
    sizes = [sz for sz in result["sizes"] if sz["cases"]]
    if not sizes:
        return ""
    out = []
    case_names = []
    for sz in sizes:
        case_names += [c for c in sz["cases"] if c not in case_names]
    for cname in case_names:
        peers = []
        for sz in sizes:
            peers += [p for p in sz["cases"].get(cname, {}).get("peers", {}) if p not in peers]
        out.append(f"\nms per decode step, {cname} (median; in brackets: over the engine's at the same "
                   f"precision)\n")
        out.append("| peer | " + " | ".join(sz["size"] for sz in sizes) + " |")
        out.append("|---|" + "---|" * len(sizes))
        for p in peers:
            cells = []
            for sz in sizes:
                c = sz["cases"].get(cname, {}).get("peers", {})
                r = c.get(p)
                if not r or not r.get("step_ms"):
                    cells.append("-")
                    continue
                ref = _engine_ref(c, r["precision"])
                v = r["step_ms"]["median"]
                cells.append(f"{v:.2f}" + ("" if p.startswith("engine") or not ref else f" ({v / ref:.2f}x)"))
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        cells = []
        for sz in sizes:
            f = sz["cases"].get(cname, {}).get("floor")
            cells.append(f"{f['step_ms']['f32']:.2f} / {f['step_ms']['int8']:.2f}" if f else "-")
        out.append("| floor f32 / int8 | " + " | ".join(cells) + " |")
    return "\n".join(out)


def header(result: Dict) -> str:
    m, f = result["machine"], result["floors_measured"]
    return (f"pali-engine bench, {result['date']}: {m.get('cpu', '?')}, {m.get('cpus')} cores, "
            f"{result['threads']} threads; read bandwidth {f['read_bandwidth_gb_s']:.1f} GB/s, "
            f"sgemm {f['sgemm_gflop_s']:.0f} GFLOP/s (the better of the measurements at the start and "
            f"the end of the run).\n"
            "Median (min-max) over the timed runs. ms/step: (total - TTFT) / (steps - 1), the whole batch. "
            "tokens/s: batch x tokens / total. step vs engine: this row's ms/step over the engine's at the "
            "same weight precision (> 1: the engine is faster). * vision by PyTorch (text-side peers). "
            "same tokens: rows equal to PyTorch's output (CTranslate2: to PyTorch's text model on the same "
            "token ids). floor: FLOPs / sgemm rate (vision, encoder), weight bytes read per step / bandwidth."
            + baseline_header(result))


def baseline_header(result: Dict) -> str:
    b = result.get("baseline")
    if not b:
        return ""
    current = result.get("engine_build", {})
    what = (f"commit {b['commit'][:10]} ({b.get('subject', '')[:80]}), {'cached build' if b.get('cached') else 'built'}"
            if b.get("commit") else f"the package folder {b.get('given')}")
    return (f"\nengine-baseline rows: the engine of {what}, in a worker process, interleaved round by round with "
            f"the current build ({(current.get('commit') or '?')[:10]}"
            f"{', tracked files modified' if current.get('tracked_files_modified') else ''}) at the same dtype; "
            "each round alternates which of the two runs first.")


def plot(result: Dict, path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as error:
        return f"matplotlib not importable: {error}"
    case_names = []
    for sz in result["sizes"]:
        for c in sz["cases"]:
            if c not in case_names:
                case_names.append(c)
    peer_names = []
    for sz in result["sizes"]:
        for c in sz["cases"].values():
            for p in c["peers"]:
                if p not in peer_names:
                    peer_names.append(p)
    n = len(case_names)
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    sizes = [sz["size"] for sz in result["sizes"]]
    width = 0.8 / max(1, len(peer_names) + 1)
    for ax, cname in zip(axes.flat, case_names):
        for j, pname in enumerate(peer_names):
            xs, ys, lo, hi = [], [], [], []
            for i, sz in enumerate(result["sizes"]):
                r = sz["cases"].get(cname, {}).get("peers", {}).get(pname)
                if r and r.get("step_ms"):
                    s = r["step_ms"]
                    xs.append(i + (j - len(peer_names) / 2) * width)
                    ys.append(s["median"])
                    lo.append(s["median"] - s["min"])
                    hi.append(s["max"] - s["median"])
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], label=pname, capsize=2)
        for i, sz in enumerate(result["sizes"]):
            c = sz["cases"].get(cname)
            if c:
                x = i + (len(peer_names) / 2) * width
                ax.bar([x], [c["floor"]["step_ms"]["f32"]], width, color="none", edgecolor="black",
                       hatch="//", label="floor f32" if i == 0 else None)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels(sizes)
        ax.set_yscale("log")
        ax.set_ylabel("ms per decode step (batch)")
        ax.set_title(cname)
        ax.grid(axis="y", alpha=0.3, which="both")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.suptitle(f"pali-engine vs peers, {result['machine'].get('cpu', '')}, {result['threads']} threads "
                 f"({result['date']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------

def _without_folders(argv: List[str]) -> List[str]:
    """The command line as recorded in the JSON: file arguments by their name only, folders dropped
    (the JSON is committed; where things lay on one machine says nothing)."""
    out = []
    for a in argv:
        if os.sep in a and not a.startswith("-"):
            out.append(os.path.basename(a.rstrip(os.sep)) or a)
        else:
            out.append(a)
    return out


def _default_out_dir() -> str:
    if os.path.isdir("benchmarks") and os.path.isfile(os.path.join("benchmarks", "harness.py")):
        return os.path.join("benchmarks", "results")
    return "."


def run(args: argparse.Namespace) -> int:
    if args.probe:
        return probe_main(json.loads(args.probe))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    threads = args.threads or os.cpu_count() or 1
    if args.quick:
        have_default = args.model or models.default_model_path()
        sizes = _csv(args.sizes) if args.sizes else ["default" if have_default else "tiny"]
        case_names = _csv(args.cases or "b1-greedy")
        if args.repeats is None:
            args.repeats = 3
        if args.memory is None:
            args.memory = False
        if args.peers is None:
            args.peers = QUICK_PEERS
    else:
        sizes = _csv(args.sizes) if args.sizes else ["default", "small", "base"]
        case_names = _csv(args.cases or "b1-greedy,b1-beam4,b8-greedy")
        if args.memory is None:
            args.memory = True
    try:
        if args.batches or args.beams:
            cases = [Case(b, k, args.new_tokens) for b in [int(x) for x in _csv(args.batches or "1")]
                     for k in [int(x) for x in _csv(args.beams or "1")]]
        else:
            cases = [parse_case(c, args.new_tokens) for c in case_names]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for s in sizes:
        if s not in models.SIZES:
            print(f"error: unknown size {s!r}; choose from {', '.join(models.SIZES)}", file=sys.stderr)
            return 2
    if args.new_tokens < 2:
        print("error: --new-tokens must be at least 2", file=sys.stderr)
        return 2
    try:
        select_peers(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.work_dir = args.work_dir or os.path.join(os.path.expanduser("~"), ".cache", "pali-engine", "bench")
    os.makedirs(args.work_dir, exist_ok=True)
    out_dir = args.out_dir if args.out_dir else (None if args.quick else _default_out_dir())
    args.baseline_build = None
    if args.baseline:
        from .baseline import resolve

        try:
            args.baseline_build = resolve(args.baseline, args.work_dir, log)
        except BaselineError as error:
            print(f"error: --baseline {args.baseline}: {error}", file=sys.stderr)
            return 2

    import torch

    torch.set_num_threads(threads)
    started = time.time()
    log(f"measuring the machine ({threads} threads) ...")
    machine_floor = floors_mod.measure(threads, quick=args.quick)
    result = {"format": "pali-engine-bench-1",
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "pali-engine bench " + " ".join(_without_folders(
                  sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])),
              "machine": machine_info(), "packages": package_versions(), "threads": threads,
              "floors_measured_start": machine_floor, "floors_measured": machine_floor, "sizes": []}
    from .baseline import head_commit

    result["engine_build"] = head_commit()
    if args.baseline_build is not None:
        result["baseline"] = args.baseline_build.describe()
    stem = "cpu-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M")
    for s in sizes:
        t0 = time.time()
        try:
            sz = bench_size(s, args, cases, machine_floor, threads, log)
        except FileNotFoundError as error:
            sz = {"size": s, "skipped": {"all": str(error)}, "cases": {}}
            log(f"[{s}] skipped: {error}")
        except Exception as error:  # one broken size does not lose the others
            sz = {"size": s, "skipped": {"all": f"failed: {type(error).__name__}: {error}"}, "cases": {}}
            log(traceback.format_exc())
        sz["wall_s"] = round(time.time() - t0, 1)
        result["sizes"].append(sz)
        if out_dir:  # what is done so far, in case the run is cut short
            _finish(result, machine_floor, None)
            _write(result, out_dir, stem, plot_too=False)
    if "default" in sizes and not args.no_caption:
        result["caption"] = caption_section(args, threads, log)
    log("measuring the machine again ...")
    _finish(result, machine_floor, floors_mod.measure(threads, quick=args.quick))
    result["wall_s"] = round(time.time() - started, 1)
    try:
        result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    text = header(result) + "\n" + table(result)
    if result.get("caption", {}).get("rows"):
        text += "\n\n" + caption_latency.table(result["caption"])
    elif result.get("caption"):
        text += f"\n\ncaption end to end: skipped ({result['caption']['skipped']})"
    text += "\n\n**Summary**\n" + summary(result)
    if result.get("baseline"):
        text += "\n" + versus_baseline_summary(result)
    result["table_markdown"] = text
    print(text)
    if out_dir:
        _write(result, out_dir, stem, plot_too=not args.no_plot)
    return 0


def caption_section(args, threads: int, log) -> Dict:
    """End-to-end caption latency on the bundled model (benchmarks/caption_latency.py)."""
    if args.model:
        return {"skipped": "--model given: the PyTorch checkpoint of that file is unknown"}
    log("[caption] end-to-end caption latency, engine vs PyTorch ...")
    try:
        return caption_latency.measure(n=10 if args.quick else 32, repeats=2 if args.quick else 3,
                                       threads=threads, seed=args.seed, log=log)
    except Exception as error:  # reported, never fatal
        log(traceback.format_exc())
        return {"skipped": f"failed: {type(error).__name__}: {error}"}


def _finish(result: Dict, start: Dict, end: Optional[Dict]) -> None:
    """Floors of every case from the better of the start and end measurements."""
    best = dict(start)
    if end is not None:
        result["floors_measured_end"] = end
        for k in ("read_bandwidth_gb_s", "sgemm_gflop_s"):
            best[k] = max(start[k], end[k])
    result["floors_measured"] = best
    for sz in result["sizes"]:
        for c in sz["cases"].values():
            c["floor"] = floors_mod.floors(sz["parameters"], sz["prefill_flops_per_image"], best,
                                           Case(c["batch"], c["beams"], c["new_tokens"]))


def _write(result: Dict, out_dir: str, stem: str, plot_too: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, stem + ".json")
    with open(jpath, "w") as f:
        json.dump(result, f, indent=1)
    if not plot_too:
        return
    print(f"\nwrote {jpath}")
    ppath = os.path.join(out_dir, stem + ".png")
    err = plot(result, ppath)
    print(f"wrote {ppath}" if err is None else f"no plot: {err}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pali-engine bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


def shield(nice: int) -> None:
    """Moves this process into a session (and so an autogroup) of its own with that nice value, so that
    other tenants of the machine take less of the cores from it (Linux; root); the processes it starts
    inherit both."""
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    with open("/proc/self/autogroup", "w") as f:
        f.write(str(nice))
