"""Multi-query associative recall (MQAR, as in Zoology, arXiv:2312.04927): accuracy against recurrent state size.

Two-block models ``x + mixer(LN(x))``, ``x + MLP(LN(x))`` over token + learned absolute position embeddings, with
one of three sequence mixers:

- ``lambda``: a causal :class:`lambdanet.LambdaLayer1d` (content lambda plus a 3-wide causal position scope, i.e.
  offsets -1 and 0), query depth ``dim_k`` in 16-256: its decoding state is the content numerator (k x v per
  intra-depth slice), normaliser and running maximum, plus the one previous value of the scope;
- ``linear``: plain causal linear attention with the ``elu + 1`` feature map (Katharopoulos et al., 2020), feature
  depth ``dim_k``: state ``heads x dim_k x (dim_v + 1)``;
- ``attention``: causal softmax attention (SDPA): its key/value cache grows with the length, ``2 x seq_len x dim``.

``state_size()`` of every mixer counts floats per sequence and layer; the model's is the sum over layers. Training
is a compact plain loop (AdamW, linear warm-up and decay, fresh MQAR batches every step), not the library's
training path; every model is trained at each learning rate of the sweep and the best test accuracy (over query
positions of a fixed test set) is reported. Results: JSON, a markdown table and a plot of accuracy against state
size (``--out``).

    python benchmarks/mqar.py --preset smoke                 # seconds: the test's configuration
    python benchmarks/mqar.py --preset cpu --out runs/mqar   # a small grid for a CPU (10 runs, 10-30 minutes)
    python benchmarks/mqar.py --preset gpu --out runs/mqar   # the full grid (CUDA)

Results and commands are recorded in docs/sequences.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lambdanet import LambdaLayer1d
from lambdanet.data.mqar import IGNORE, MQARConfig, mqar

# ------------------------------------------------------------------------------------------------- mixers


class LambdaMixer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_k: int, seq_len: int) -> None:
        super().__init__()
        self.layer = LambdaLayer1d(dim, dim_k=dim_k, heads=heads, scope=3, causal=True, norm="layer")

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def state_size(self, seq_len: int) -> int:
        m = self.layer
        content = m.dim_u * m.dim_k * (m.dim_v + 2)  # numerator, normaliser, running maximum
        return content + m.dim_u * m.dim_v * (m.scope // 2)  # + the values the causal scope still sees


class LinearAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_k: int, seq_len: int) -> None:
        super().__init__()
        self.heads, self.dim_k, self.dim_v = heads, dim_k, dim // heads
        self.qk = nn.Linear(dim, 2 * heads * dim_k, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k = (F.elu(t) + 1 for t in self.qk(x).view(b, n, 2, self.heads, self.dim_k).unbind(2))
        v = self.v(x).view(b, n, self.heads, self.dim_v)
        # The (n, n) form of causal linear attention: the same sums as the recurrence, cheap at these lengths.
        scores = torch.einsum("bnhk,bmhk->bhnm", q, k).tril()
        y = torch.einsum("bhnm,bmhv->bnhv", scores, v) / (scores.sum(-1).transpose(1, 2)[..., None] + 1e-6)
        return y.reshape(b, n, d)

    def state_size(self, seq_len: int) -> int:
        return self.heads * self.dim_k * (self.dim_v + 1)


class SoftmaxAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_k: int, seq_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, d)

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.qkv.in_features


MIXERS = {"lambda": LambdaMixer, "linear": LinearAttention, "attention": SoftmaxAttention}


class RecallModel(nn.Module):
    def __init__(self, mixer: str, vocab: int, seq_len: int, dim: int, heads: int, dim_k: int, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.mixers = nn.ModuleList(MIXERS[mixer](dim, heads, dim_k, seq_len) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, vocab))
        self.seq_len = seq_len

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for norm, mixer, mlp in zip(self.norms, self.mixers, self.mlps, strict=True):
            x = x + mixer(norm(x))
            x = x + mlp(x)
        return self.out(x)

    def state_size(self) -> int:
        return sum(m.state_size(self.seq_len) for m in self.mixers)


# ------------------------------------------------------------------------------------------------- runs


@dataclass
class Preset:
    task: MQARConfig
    dim: int
    heads: int
    models: list[tuple[str, int]]  # (mixer, dim_k)
    lrs: list[float]
    steps: int
    batch: int
    test_examples: int
    tasks: list[MQARConfig] = field(default_factory=list)


PRESETS = {
    # The test's configuration: a few seconds, no accuracy expected.
    "smoke": Preset(
        MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4),
        dim=32, heads=2, models=[("lambda", 16), ("linear", 16), ("attention", 16)],
        lrs=[3e-3], steps=6, batch=8, test_examples=32,
    ),
    # A grid that fits a loaded CPU in 10-30 minutes (short sequences, small vocabulary).
    "cpu": Preset(
        MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4),
        dim=64, heads=2, models=[("lambda", 16), ("lambda", 64), ("linear", 16), ("linear", 64), ("attention", 32)],
        lrs=[3e-3, 1e-2], steps=800, batch=32, test_examples=512,
    ),
    # Zoology's scale (vocab 8192, lengths 64-512, 4-64 pairs, 4 learning rates): for a GPU.
    "gpu": Preset(
        MQARConfig(vocab_size=8192, seq_len=256, num_kv_pairs=16),
        dim=128, heads=2,
        models=[("lambda", k) for k in (16, 32, 64, 128, 256)] + [("linear", k) for k in (16, 64, 256)]
        + [("attention", 64)],
        lrs=[1e-4, 4.6e-4, 2.2e-3, 1e-2], steps=20000, batch=256, test_examples=3000,
        tasks=[
            MQARConfig(vocab_size=8192, seq_len=n, num_kv_pairs=d)
            for n, d in ((64, 4), (128, 8), (256, 16), (512, 64))
        ],
    ),
}  # fmt: skip


def train_one(preset: Preset, task: MQARConfig, mixer: str, dim_k: int, lr: float, device: torch.device) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    test_x, test_y = mqar(task, preset.test_examples, torch.Generator().manual_seed(2))
    model = RecallModel(mixer, task.vocab_size, task.seq_len, preset.dim, preset.heads, dim_k).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    warm = max(1, preset.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / preset.steps) if s >= warm else (s + 1) / warm
    )
    start = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(preset.steps):
        x, y = mqar(task, preset.batch, gen)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i in range(0, preset.test_examples, 256):
            x, y = test_x[i : i + 256].to(device), test_y[i : i + 256].to(device)
            keep = y != IGNORE
            correct += (model(x).argmax(-1)[keep] == y[keep]).sum().item()
            total += keep.sum().item()
    return {
        "mixer": mixer,
        "dim_k": dim_k,
        "lr": lr,
        "seq_len": task.seq_len,
        "num_kv_pairs": task.num_kv_pairs,
        "vocab_size": task.vocab_size,
        "state_size": model.state_size(),
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": float(loss.detach()),
        "accuracy": correct / max(total, 1),
        "seconds": time.perf_counter() - start,
    }


def best_per_model(runs: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in runs:
        key = (r["seq_len"], r["num_kv_pairs"], r["mixer"], r["dim_k"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    return list(best.values())


def table(best: list[dict]) -> str:
    lines = [
        "| length | pairs | mixer | dim_k | state (floats) | best lr | accuracy | s per run |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in best:
        lines.append(
            f"| {r['seq_len']} | {r['num_kv_pairs']} | {r['mixer']} | {r['dim_k']} | {r['state_size']:,} | "
            f"{r['lr']:g} | {r['accuracy']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(best: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in best})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, (n, d) in zip(axes[0], tasks, strict=True):
        for mixer, marker in (("lambda", "o"), ("linear", "s"), ("attention", "^")):
            pts = sorted(
                (r["state_size"], r["accuracy"])
                for r in best
                if (r["seq_len"], r["num_kv_pairs"], r["mixer"]) == (n, d, mixer)
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, label=mixer)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("recurrent state per sequence (floats, all layers)")
        ax.set_title(f"MQAR, length {n}, {d} pairs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (best learning rate)")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="smoke")
    p.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="override the learning-rate sweep")
    p.add_argument("--out", default=None, help="directory for results.json, results.md and accuracy_vs_state.png")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.steps is not None:
        preset = replace(preset, steps=args.steps)
    if args.lrs is not None:
        preset = replace(preset, lrs=args.lrs)
    device = torch.device(args.device)
    runs = []
    for task in preset.tasks or [preset.task]:
        for mixer, dim_k in preset.models:
            for lr in preset.lrs:
                r = train_one(preset, task, mixer, dim_k, lr, device)
                runs.append(r)
                print(
                    f"length {r['seq_len']} pairs {r['num_kv_pairs']} {mixer} dim_k {dim_k} lr {lr:g}: "
                    f"accuracy {r['accuracy']:.3f} loss {r['final_loss']:.3f} state {r['state_size']} "
                    f"({r['seconds']:.1f} s)",
                    flush=True,
                )
    best = best_per_model(runs)
    print(table(best))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"preset": args.preset, "steps": preset.steps, "lrs": preset.lrs, "dim": preset.dim}
        meta |= {"device": str(device), "threads": torch.get_num_threads(), "task": asdict(preset.task)}
        (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs, "best": best}, indent=1))
        (out / "results.md").write_text(table(best) + "\n")
        plot(best, out / "accuracy_vs_state.png")
    if any(not math.isfinite(r["final_loss"]) for r in runs):
        print("warning: some runs diverged (non-finite loss)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
