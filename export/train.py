"""Train a PaLI model from scratch on the shapes world.

Why: pali-engine ships a small trained default model (export/default/) so the
engine can be checked end to end by task accuracy.  This script is the recipe;
docs/training.md gives the exact command that produced the default model.

    pali-engine train --out runs/default --steps 20000 --batch-size 64
    python -m export.train --out runs/default ...

AdamW with linear warm-up and cosine decay; tasks mixed in every batch
(weights in data.DEFAULT_TASK_WEIGHTS, or --task-weight); examples rendered on the fly in a
background thread; progress lines (loss, examples/s) in the log; checkpoints
``last.pt`` (full state, for --resume) and ``model.pt`` (fp16 weights + config,
the format of export/default/pali-default.pt) every --ckpt-every steps; a small
greedy held-out evaluation every --eval-every steps (eval.jsonl).  With
--time-budget-min the schedule runs on the larger of (step / steps) and
(elapsed / budget), so the run decays and ends in time whatever the machine's
speed.  With --workers N the batch is split over N processes of one thread each
(gloo all-reduce of the gradients, summed over the whole batch's tokens, so a
step equals the one-process step on the same batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import shutil
import sys
import threading
import time

import numpy as np

from . import data as D
from .config import PaliConfig

HERE = os.path.dirname(os.path.abspath(__file__))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/default", help="output directory (checkpoints, logs)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--time-budget-min", type=float, default=0.0,
                        help="end (and decay the learning rate) within this many minutes (0: no limit)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-lr-frac", type=float, default=0.02, help="final lr as a fraction of --lr")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--qk-lr-scale", type=float, default=1.0,
                        help="learning-rate factor for the T5 attention q and k matrices (their product "
                             "is unscaled; large steps there collapse the attention)")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (at most)")
    parser.add_argument("--adapt-threads", action="store_true",
                        help="every 200 steps time 5 steps with 1 thread and 5 with --threads, and use "
                             "the faster for the rest (a shared, oversubscribed CPU makes multi-threaded "
                             "ops wait on descheduled threads)")
    parser.add_argument("--workers", type=int, default=1,
                        help="data-parallel CPU processes of one thread each, splitting every batch "
                             "(on 2 cores, 2 workers trained ~12%% more examples/s than 1 process of 2 "
                             "threads)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--tokenizer", default="", help="SentencePiece model (trained into OUT when missing)")
    parser.add_argument("--config", default="", help="PaliConfig JSON file (default: PaliConfig())")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set d_model=256")
    parser.add_argument("--task-weight", action="append", default=[], metavar="TASK=WEIGHT",
                        help="relative sampling weight of a task, e.g. --task-weight ocr=4 "
                             "(others keep data.DEFAULT_TASK_WEIGHTS)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--ckpt-every", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--eval-n", type=int, default=50, help="held-out examples per task in periodic evals")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--init", default="",
                        help="start from these weights (a last.pt or model.pt) with a fresh optimiser and "
                             "schedule; the config comes from the checkpoint")
    parser.add_argument("--export-default", default="",
                        help="at the end, copy model.pt/tokenizer/config.json into this directory")


def _parse_set(cfg: PaliConfig, items) -> PaliConfig:
    d = cfg.to_dict()
    for it in items:
        k, _, v = it.partition("=")
        if k not in d:
            raise SystemExit(f"unknown config field {k!r}")
        d[k] = json.loads(v) if not isinstance(d[k], str) else v
    return PaliConfig.from_dict(d)


def _parse_task_weights(items):
    """``--task-weight TASK=W`` overrides on top of data.DEFAULT_TASK_WEIGHTS."""
    w = dict(D.DEFAULT_TASK_WEIGHTS)
    for it in items:
        k, _, v = it.partition("=")
        try:
            w[k] = float(v)
        except ValueError:
            raise SystemExit(f"--task-weight {it!r}: the weight must be a number")
    try:
        D.check_task_weights(w)
    except ValueError as error:
        raise SystemExit(f"--task-weight: {error}")
    return w


class Batcher:
    """Renders and tokenizes training batches in a background thread."""

    def __init__(self, world: D.ShapesWorld, tok, cfg: PaliConfig, batch_size: int, start_index: int,
                 depth: int = 6, stride: int = 0):
        """Batches of examples start_index + k * stride ... + batch_size - 1 (stride: batch_size
        by default; a worker's share of a larger batch otherwise)."""
        self.world, self.tok, self.cfg, self.bs = world, tok, cfg, batch_size
        self.index = start_index
        self.stride = stride or batch_size
        self.q: "queue.Queue" = queue.Queue(maxsize=depth)
        self.stop = False
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def make(self, start: int):
        from pali_engine.image import preprocess_batch
        from .evaluate import encode_prompts

        exs = self.world.train_batch(start, self.bs)
        cfg = self.cfg
        px = preprocess_batch([e.image for e in exs], cfg.image_size, cfg.image_mean, cfg.image_std, cfg.resample)
        ids, mask = encode_prompts(self.tok, [e.prompt for e in exs], cfg.max_prompt_tokens)
        tgts = []
        for e in exs:
            t = self.tok.encode(e.target)
            if len(t) > cfg.max_new_tokens:
                t = t[:cfg.max_new_tokens]
            tgts.append(t)
        T = max(len(t) for t in tgts)
        labels = np.full((len(exs), T), -100, np.int64)
        dec_in = np.full((len(exs), T), cfg.pad_token_id, np.int64)
        for i, t in enumerate(tgts):
            labels[i, :len(t)] = t
            dec_in[i, 0] = cfg.decoder_start_token_id
            dec_in[i, 1:len(t)] = t[:-1]
        return px, ids, mask, dec_in, labels

    def _work(self):
        i = self.index
        while not self.stop:
            item = self.make(i)
            i += self.stride
            while not self.stop:
                try:
                    self.q.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def next(self):
        return self.q.get()

    def close(self):
        """Stops and joins the thread: a daemon thread still inside a tokenizer or image call while
        the interpreter finalizes is unwound there and aborts the process."""
        self.stop = True
        self.thread.join()


def lr_at(progress: float, step: int, args) -> float:
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    p = min(1.0, max(0.0, progress))
    cos = args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))
    return args.lr * warm * cos


def _worker(rank: int, args, port: int) -> None:
    import datetime

    import torch.distributed as dist

    # a long timeout: the other workers wait in the next step while worker 0 evaluates or saves
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.workers, timeout=datetime.timedelta(hours=3))
    try:
        code = run(args, rank=rank)
        # every worker leaves together, after worker 0 has saved and evaluated: one that tears its
        # connections down while the others still use theirs is a crash on either side
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if code:
        raise SystemExit(code)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args, rank: int = -1) -> int:
    """Trains; with --workers N > 1 (rank -1: the launching process) spawns N workers and returns
    when they are done. Only worker 0 logs, saves, evaluates and exports."""
    import torch
    from pali_engine.tokenizer import Tokenizer
    from .model import Pali, checkpoint_config, float_weights
    from .evaluate import TorchBackend, evaluate

    task_weights = _parse_task_weights(args.task_weight)  # a bad option stops the launcher, not each worker
    if args.workers < 1 or args.batch_size % args.workers:
        print(f"error: --batch-size {args.batch_size} must split evenly over --workers {args.workers}")
        return 2
    if args.workers > 1 and rank < 0:
        if not args.tokenizer:  # trained once here, not by every worker
            os.makedirs(args.out, exist_ok=True)
            args.tokenizer = os.path.join(args.out, "tokenizer.model")
            if not os.path.exists(args.tokenizer):
                from .tokenizer_train import train_tokenizer
                train_tokenizer(args.tokenizer)
        import torch.multiprocessing as mp
        try:
            mp.spawn(_worker, args=(args, _free_port()), nprocs=args.workers)
        except Exception as error:  # a worker's exit code or exception, already printed by it
            print(f"error: {error}")
            return 1
        return 0
    parallel = args.workers > 1
    lead = rank <= 0
    if parallel:
        import torch.distributed as dist
        args.threads, args.adapt_threads = 1, False
        if args.device == "auto":
            args.device = "cpu"
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train.log"), "a", buffering=1) if lead else None

    def log(msg):
        if not lead:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")

    # tokenizer
    tok_path = args.tokenizer or os.path.join(args.out, "tokenizer.model")
    if not os.path.exists(tok_path):
        from .tokenizer_train import train_tokenizer
        n = train_tokenizer(tok_path)
        log(f"trained tokenizer {tok_path} (vocab {n})")
    tok = Tokenizer(tok_path)
    if lead and args.tokenizer and \
            os.path.abspath(tok_path) != os.path.abspath(os.path.join(args.out, "tokenizer.model")):
        shutil.copyfile(tok_path, os.path.join(args.out, "tokenizer.model"))

    # config and model
    last = os.path.join(args.out, "last.pt")
    state = None
    if args.resume:
        if not os.path.exists(last):
            log(f"error: --resume but {last} does not exist")
            return 2
        state = torch.load(last, map_location="cpu", weights_only=False)
        cfg = PaliConfig.from_json(state["config"])
    elif args.init:
        init_state = torch.load(args.init, map_location="cpu", weights_only=False)
        cfg = checkpoint_config(init_state)
        if cfg.vocab_size != tok.vocab_size:
            log(f"error: {args.init} has vocab_size {cfg.vocab_size}, the tokenizer {tok.vocab_size}")
            return 2
    else:
        cfg = PaliConfig.from_json(open(args.config).read()) if args.config else PaliConfig()
        cfg = _parse_set(cfg, args.set)
        if cfg.vocab_size != tok.vocab_size:
            cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
    if lead:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            f.write(cfg.to_json(indent=2) + "\n")
    torch.manual_seed(args.seed)
    model = Pali(cfg).to(device)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"config {cfg.to_json()}")
    log(f"parameters {nparams / 1e6:.2f} M, device {device}, threads {torch.get_num_threads()}"
        + (f", {args.workers} workers" if parallel else ""))

    decay, no_decay, qk = [], [], []
    for n_, p in model.named_parameters():
        if not n_.startswith("vision.") and n_.endswith((".q.weight", ".k.weight")):
            qk.append(p)
        elif p.ndim >= 2 and "relative_attention_bias" not in n_ and "pos_embed" not in n_:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if args.qk_lr_scale != 1.0:  # a group of their own only when needed: older checkpoints have two
        groups.insert(1, {"params": qk, "weight_decay": args.weight_decay, "lr_scale": args.qk_lr_scale})
    else:
        decay.extend(qk)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step, elapsed0, seen = 0, 0.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed0, seen = state["step"], state["elapsed"], state["seen"]
        log(f"resumed from {last} at step {step} ({seen} examples, {elapsed0 / 60:.1f} min)")
    elif args.init:
        model.load_state_dict(float_weights(init_state["model"] if "model" in init_state
                                            else init_state["state_dict"]))
        seen = int(init_state.get("seen", 0))  # go on with new examples where the checkpoint records its count
        log(f"initialised from {args.init} ({seen} examples seen before)")

    log("task weights " + " ".join(f"{t}={w:g}" for t, w in task_weights.items()))
    world = D.ShapesWorld(image_size=cfg.image_size, seed=args.seed, task_weights=task_weights)
    share = args.batch_size // args.workers
    batcher = Batcher(world, tok, cfg, share, start_index=seen + max(rank, 0) * share, stride=args.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if parallel:
        for p in params:
            p.grad = torch.zeros_like(p)

    def save(final=False):
        st = {"config": cfg.to_json(), "model": model.state_dict(), "optimizer": opt.state_dict(),
              "step": step, "elapsed": elapsed0 + time.time() - t_start, "seen": seen, "args": vars(args)}
        torch.save(st, last + ".tmp")
        os.replace(last + ".tmp", last)
        model.save(os.path.join(args.out, "model.pt.tmp"), half=True, extra={"step": step, "seen": seen})
        os.replace(os.path.join(args.out, "model.pt.tmp"), os.path.join(args.out, "model.pt"))
        log(f"checkpoint step {step}{' (final)' if final else ''}")

    def run_eval():
        model.eval()
        be = TorchBackend(model=model, tokenizer=tok, device=device)
        t0 = time.time()
        res = evaluate(be, D.TASKS, args.eval_n, batch_size=200, image_size=cfg.image_size, seed=args.seed,
                       log=log, samples=1)
        model.train()
        with open(os.path.join(args.out, "eval.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "seen": seen, "results": res}) + "\n")
        log(f"eval step {step} ({time.time() - t0:.0f} s): "
            + " ".join(f"{k}={v['score']:.3f}" for k, v in res.items()))
        return time.time() - t0

    model.train()
    t_start = time.time()
    t_log, seen_log = time.time(), seen
    loss_acc, n_acc = 0.0, 0
    eval_time = 0.0
    budget = args.time_budget_min * 60
    probe = {}  # thread count -> step times in the current probe window
    threads_now = 1 if args.adapt_threads else args.threads  # the safe choice on a busy machine
    while True:
        elapsed = elapsed0 + time.time() - t_start
        progress = step / args.steps
        if budget > 0:
            progress = max(progress, elapsed / budget)
        if parallel:  # the workers' clocks differ: worker 0 decides for all
            decision = torch.tensor([progress], dtype=torch.float64)
            dist.broadcast(decision, src=0)
            progress = decision.item()
        if progress >= 1.0:
            break
        lr = lr_at(progress, step, args)
        if args.adapt_threads and device == "cpu" and args.threads > 1:
            phase = step % 200  # probe: steps 0-4 with the other count, 5-9 with the current one
            other = 1 if threads_now != 1 else args.threads
            want = other if phase < 5 else threads_now
            if phase == 10 and probe.get(1) and probe.get(args.threads):
                med = {k: sorted(v)[len(v) // 2] for k, v in probe.items()}
                want = threads_now = min(med, key=med.get)
                log(f"threads: median step {med[1]:.2f} s with 1, {med[args.threads]:.2f} s with "
                    f"{args.threads} -> using {threads_now}")
                probe = {}
            torch.set_num_threads(want)
        t_step = time.time()
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        px, ids, mask, dec_in, labels = batcher.next()
        px, ids, mask = torch.from_numpy(px).to(device), torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        dec_in, labels = torch.from_numpy(dec_in).to(device), torch.from_numpy(labels).to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(px, ids, mask, dec_in)
        # the mean over the batch's target tokens; a worker divides its sum by the whole batch's
        # count, so the workers' summed gradients are the one-process gradient
        tokens = torch.tensor([float((labels != -100).sum())], dtype=torch.float64)
        if parallel:
            dist.all_reduce(tokens)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                                                 ignore_index=-100, reduction="sum") / tokens.item()
        opt.zero_grad(set_to_none=not parallel)  # workers keep their gradient tensors for the all-reduce
        loss.backward()
        if parallel:
            flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().reshape(1)])
            dist.all_reduce(flat)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
            loss = flat[-1]
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if args.adapt_threads and step % 200 < 10 and step % 5 != 0:  # first step after a switch ignored
            probe.setdefault(torch.get_num_threads(), []).append(time.time() - t_step)
        step += 1
        seen += args.batch_size
        loss_acc += loss.item()
        n_acc += 1
        if step % args.log_every == 0:
            now = time.time()
            eps = (seen - seen_log) / (now - t_log)
            log(f"step {step} loss {loss_acc / n_acc:.4f} lr {lr:.2e} {eps:.1f} ex/s "
                f"seen {seen} elapsed {(elapsed0 + now - t_start) / 60:.1f} min progress {progress:.3f}")
            t_log, seen_log, loss_acc, n_acc = now, seen, 0.0, 0
        if lead and step % args.ckpt_every == 0:
            save()
        if lead and args.eval_every and step % args.eval_every == 0:
            eval_time += run_eval()
            t_log, seen_log = time.time(), seen
    batcher.close()
    if not lead:
        return 0
    save(final=True)
    if not (args.eval_every and step % args.eval_every == 0):
        run_eval()
    if args.export_default:
        os.makedirs(args.export_default, exist_ok=True)
        shutil.copyfile(os.path.join(args.out, "model.pt"), os.path.join(args.export_default, "pali-default.pt"))
        shutil.copyfile(os.path.join(args.out, "tokenizer.model"), os.path.join(args.export_default, "tokenizer.model"))
        shutil.copyfile(os.path.join(args.out, "config.json"), os.path.join(args.export_default, "config.json"))
        log(f"exported to {args.export_default}")
    log(f"done: {step} steps, {seen} examples, {(elapsed0 + time.time() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(description="Train a PaLI model on the shapes world.")
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
