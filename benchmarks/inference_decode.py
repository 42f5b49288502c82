"""Prefill and decode on a GPU, for lesson 09: the time of one forward step of a Llama-like model
with random weights, against the roofline prediction max(FLOPs / matmul rate, bytes / copy
bandwidth) of course_utils.inference.step_flops_and_bytes, both rates measured first on the same GPU.

    python benchmarks/inference_decode.py                         # on a GPU: about a minute on an H200
    python benchmarks/inference_decode.py --quick --out /tmp/x    # tiny sizes, float32; runs on a CPU
    python benchmarks/inference_decode.py --replot assets/09_decode.csv   # redraw the PNG from a CSV

The model is the lesson's LlamaLike (embedding, grouped-query attention with RoPE, SwiGLU, RMSNorm,
an untied head) with four Llama-3-70B-wide layers (hidden 8192, 64 query and 8 K/V heads of 128,
SwiGLU 28672) and a 32 000-token vocabulary: 3.9 B parameters, of which a step reads 3.7 B (7.4 GB
in bf16; the embedding is looked up, not read). Wide rather than deep, so that a decode step reads
far more bytes than its few hundred kernel launches cost.

Modes:
  static  the lesson's weights and arithmetic with static shapes: a preallocated cache per layer, new
          keys and values written at fixed positions, RoPE from a precomputed table, decode attention
          as two batched matmuls per K/V head group (each group reads its keys once), prefill
          attention through torch's fused scaled_dot_product_attention; checked against the lesson's
          forward before anything is timed;
  graph   one static decode step captured in a CUDA graph and replayed (servers capture decode
          graphs too, e.g. vLLM), so that kernel launches cost almost nothing;
  lesson  the lesson's own LlamaLike with lesson 04's KVCache (torch.cat every step; apply_rope reads
          the largest position back to the host, one synchronisation per layer; attention scores in
          float32 with the masked half computed), for comparison.
Decode caches hold random numbers (a step's time does not depend on them), so a step at S = 8192
needs no 8192-token prefill. Timing: CUDA events, median of repeats after warm-up.

Writes under --out (default assets/): 09_decode.csv (one row per measurement, naming the device)
and 09_decode.png; prints the same table. Results go to benchmarks/NOTES.md with the machine.
"""
from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_utils.attention import repeat_kv  # noqa: E402
from course_utils.inference import LlamaConfig, LlamaLike, step_flops_and_bytes  # noqa: E402
from course_utils.norms import rms_norm  # noqa: E402
from course_utils.rope import rope_cos_sin, rotate_half  # noqa: E402

FULL = dict(cfg=LlamaConfig(vocab_size=32000, hidden_size=8192, num_hidden_layers=4, num_attention_heads=64,
                            num_key_value_heads=8, intermediate_size=28672, rope_theta=500000.0),
            prefill=(128, 512, 2048, 8192), lesson_prefill=(512, 2048, 4096),
            batches=(1, 4, 16, 64, 256), contexts=(1024, 8192), eager_batches=(1, 64))
QUICK = dict(cfg=LlamaConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=512),
             prefill=(32, 128), lesson_prefill=(32, 128), batches=(1, 4), contexts=(64,), eager_batches=(1, 4))


class StaticDecoder:
    """LlamaLike's forward with static shapes. The cache of layer i is k[i], v[i], each
    (B, n_kv, max_len, head_dim); forward(tokens, start) runs tokens (B, T) at positions
    start .. start + T - 1, writes their keys and values there, and attends over positions < start + T."""

    def __init__(self, model: LlamaLike, batch: int, max_len: int):
        cfg, w = model.cfg, model.lm_head.weight
        self.m = model
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.randn(shape, device=w.device, dtype=w.dtype) for _ in model.layers]
        self.v = [torch.randn(shape, device=w.device, dtype=w.dtype) for _ in model.layers]
        cos, sin = rope_cos_sin(cfg.head_dim, max_len, base=cfg.rope_theta, device=w.device)  # (max_len, d/2)
        self.cos, self.sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)         # (max_len, d)

    def rope(self, x, start):                  # lesson 03's apply_rope (half-split pairs), positions fixed
        c, s = self.cos[start:start + x.shape[-2]], self.sin[start:start + x.shape[-2]]
        xf = x.float()
        return (xf * c + rotate_half(xf) * s).to(x.dtype)

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        B, T = tokens.shape
        x = self.m.embed(tokens)                                                     # (B, T, d)
        for i, layer in enumerate(self.m.layers):
            a = layer.attn
            nh, nkv, hd = a.n_heads, a.n_kv_heads, a.head_dim
            h = rms_norm(x, layer.attn_norm, layer.eps)
            q = self.rope(a.wq(h).view(B, T, nh, hd).transpose(1, 2), start)         # (B, nh, T, hd)
            k = self.rope(a.wk(h).view(B, T, nkv, hd).transpose(1, 2), start)        # (B, nkv, T, hd)
            self.k[i][:, :, start:start + T] = k
            self.v[i][:, :, start:start + T] = a.wv(h).view(B, T, nkv, hd).transpose(1, 2)   # (B, nkv, T, hd)
            K, V = self.k[i][:, :, :start + T], self.v[i][:, :, :start + T]          # (B, nkv, S, hd)
            if T == 1:        # decode: the query heads of one K/V group share one read of its keys
                qg = q.reshape(B, nkv, a.n_rep, hd)                                  # (B, nkv, rep, hd)
                s = (qg @ K.transpose(-2, -1)).float() * hd ** -0.5                  # (B, nkv, rep, S)
                o = (torch.softmax(s, dim=-1).to(V.dtype) @ V).reshape(B, nh, 1, hd)  # (B, nh, 1, hd)
            else:             # prefill from position 0: causal, through torch's fused kernel
                o = F.scaled_dot_product_attention(q, repeat_kv(K, a.n_rep), repeat_kv(V, a.n_rep),
                                                   is_causal=True)                    # (B, nh, T, hd)
            x = x + a.wo(o.transpose(1, 2).reshape(B, T, nh * hd))                   # (B, T, d)
            x = x + layer.mlp(rms_norm(x, layer.mlp_norm, layer.eps))
        return self.m.lm_head(rms_norm(x, self.m.norm, self.m.cfg.rms_norm_eps))     # (B, T, vocab)


def timed(fn, device, reps=20, warmup=3) -> float:
    """Median seconds of fn() (CUDA events on a GPU, perf_counter on a CPU) after warmup calls."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs) / 1e3


def ceilings(device, dtype, quick):
    """The GPU's two roofline numbers, measured: a large matmul's FLOP/s and a copy's bytes/s."""
    n = 1024 if quick else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    peak = 2 * n ** 3 / timed(lambda: a @ b, device, reps=10)
    src = torch.randn(2 ** (22 if quick else 28), device=device, dtype=dtype)       # 512 MiB in bf16
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * src.element_size() / timed(lambda: dst.copy_(src), device, reps=10)
    return peak, bw


def check_static(model, device, tol=None):
    """The static path's logits (prefill 7 tokens, then decode 1) against the lesson's forward;
    raises if tol is given and the relative error is not below it."""
    tokens = torch.randint(0, model.cfg.vocab_size, (3, 8), device=device)
    with torch.no_grad():
        caches = model.new_caches()
        model(tokens[:, :7], caches)
        ref = model(tokens[:, 7:], caches)[:, -1].float()
        static = StaticDecoder(model, 3, 8)
        static.forward(tokens[:, :7], 0)
        got = static.forward(tokens[:, 7:], 7)[:, -1].float()
    err = ((got - ref).norm() / ref.norm()).item()
    print(f"static path vs lesson forward ({model.lm_head.weight.dtype}, hidden {model.cfg.hidden_size}): "
          f"relative error {err:.1e}")
    if tol is not None and not err < tol:
        raise SystemExit(f"the static decoder disagrees with the lesson's model: {err:.2e} >= {tol}")
    return err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes (float32 on a CPU)")
    ap.add_argument("--out", default=str(ROOT / "assets"), help="folder for 09_decode.csv and .png")
    ap.add_argument("--replot", metavar="CSV", help="only redraw 09_decode.png (beside the CSV) from its rows")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as fh:
            rows = [{k: (v if k in ("device", "phase", "mode") else float(v)) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
        plot(rows, rows[0]["device"], Path(args.replot).with_suffix(".png"), FULL["cfg"])
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(1)                  # a shared CPU: waiting threads distort small timings
    sizes = QUICK if args.quick else FULL
    cfg, nbytes = sizes["cfg"], torch.empty((), dtype=dtype).element_size()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})"
    t_start = time.time()
    print(f"device: {name}; torch {torch.__version__}")

    torch.manual_seed(0)
    with torch.device(device):
        check_static(LlamaLike(QUICK["cfg"]), device, tol=1e-4)          # float32: the same function
        model = LlamaLike(cfg).to(dtype)
    model.requires_grad_(False)
    check_static(model, device)                                          # bf16: rounding differs, printed
    peak, bw = ceilings(device, dtype, args.quick)
    print(f"measured: matmul {peak / 1e12:.1f} TFLOP/s, copy {bw / 1e9:.0f} GB/s (read + write), "
          f"ridge {peak / bw:.0f} FLOP/byte")
    rows = []

    def record(phase, mode, batch, n_new, context, seconds):
        flops, b = step_flops_and_bytes(cfg, batch, n_new, context, dtype_bytes=nbytes)
        pred = max(flops / peak, b / bw)
        rows.append(dict(device=name, phase=phase, mode=mode, batch=batch, n_new=n_new, context=context,
                         tokens=batch * n_new, flops=flops, bytes=b, predicted_ms=pred * 1e3,
                         measured_ms=seconds * 1e3, peak_tflops=peak / 1e12, bandwidth_gbs=bw / 1e9))
        print(f"{phase:8s} {mode:7s} B={batch:4d} T={n_new:5d} S={context:5d}  {seconds * 1e3:9.3f} ms  "
              f"predicted {pred * 1e3:9.3f} ms  ({seconds / pred:4.2f}x)", flush=True)

    with torch.no_grad():
        for T in sizes["prefill"]:                                   # prefill, static path (fused attention)
            static = StaticDecoder(model, 1, T)
            tokens = torch.randint(0, cfg.vocab_size, (1, T), device=device)
            record("prefill", "static", 1, T, 0, timed(lambda: static.forward(tokens, 0), device, reps=5))
            del static
        for T in sizes["lesson_prefill"]:                            # prefill, the lesson's forward
            tokens = torch.randint(0, cfg.vocab_size, (1, T), device=device)
            record("prefill", "lesson", 1, T, 0, timed(lambda: model(tokens), device, reps=3, warmup=1))
        for S in sizes["contexts"]:                                  # decode, one step at S cached tokens
            for B in sizes["batches"]:
                static = StaticDecoder(model, B, S + 1)
                tok = torch.randint(0, cfg.vocab_size, (B, 1), device=device)
                step = lambda: static.forward(tok, S)                # noqa: E731
                if B in sizes["eager_batches"]:
                    record("decode", "static", B, 1, S, timed(step, device))
                if device.type == "cuda":
                    try:
                        side = torch.cuda.Stream()
                        side.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(side):
                            for _ in range(3):
                                step()
                        torch.cuda.current_stream().wait_stream(side)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            step()
                        record("decode", "graph", B, 1, S, timed(graph.replay, device))
                        del graph
                    except RuntimeError as e:                        # keep going; the CSV says what ran
                        print(f"CUDA graph capture failed for B = {B}, S = {S}: {e}")
                del static
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        caches = model.new_caches()                                  # decode through the lesson's own model
        model(torch.randint(0, cfg.vocab_size, (1, sizes["contexts"][0]), device=device), caches)
        tok = torch.randint(0, cfg.vocab_size, (1, 1), device=device)
        record("decode", "lesson", 1, 1, sizes["contexts"][0], timed(lambda: model(tok, caches), device, reps=10))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "09_decode.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, name, out / "09_decode.png", cfg)
    print(f"\n{name}: matmul {peak / 1e12:.0f} TFLOP/s, copy {bw / 1e9:.0f} GB/s; model {cfg}")
    print(f"{'phase':8s} {'mode':7s} {'B':>4s} {'T/S':>6s} {'ms':>9s} {'pred ms':>9s} {'ratio':>6s} {'µs/token':>9s}")
    for r in rows:
        print(f"{r['phase']:8s} {r['mode']:7s} {r['batch']:4d} {r['n_new'] if r['phase'] == 'prefill' else r['context']:6d} "
              f"{r['measured_ms']:9.3f} {r['predicted_ms']:9.3f} {r['measured_ms'] / r['predicted_ms']:6.2f} "
              f"{r['measured_ms'] / r['tokens'] * 1e3:9.2f}")
    print(f"wrote {out / '09_decode.csv'} and .png in {time.time() - t_start:.0f} s")


def plot(rows, name, path, cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_utils import plotting
    plotting.use_style()
    C = plotting.COLORS
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for S, color in zip(sorted({r["context"] for r in rows if r["phase"] == "decode"}), [C["blue"], C["red"], C["green"]]):
        dec = [r for r in rows if r["phase"] == "decode" and r["context"] == S]
        pts = sorted((r["batch"], r["predicted_ms"]) for r in dec if r["mode"] in ("graph", "static"))
        a1.loglog([b for b, _ in pts], [p for _, p in pts], "-", color=color, alpha=0.6, label=f"predicted, S = {S:g}")
        for mode, marker in [("graph", "o"), ("static", "s"), ("lesson", "^")]:
            sel = [r for r in dec if r["mode"] == mode]
            if sel:
                a1.loglog([r["batch"] for r in sel], [r["measured_ms"] for r in sel], marker, color=color,
                          mfc="none" if mode != "graph" else color, ms=7,
                          label=f"{ {'graph': 'CUDA graph', 'static': 'op by op', 'lesson': 'lesson model'}[mode]}, S = {S:g}")
    a1.set(xlabel="decode batch B", ylabel="ms per step", title="decode: one step (lines: predicted)")
    a1.set_ylim(top=a1.get_ylim()[1] * 6)                                  # room for the legend
    a1.legend(fontsize=9, ncol=2, loc="upper left")
    for phase, mode, color, marker in [("prefill", "static", C["orange"], "o"), ("prefill", "lesson", C["orange"], "^"),
                                       ("decode", "graph", C["blue"], "o")]:
        sel = sorted((r for r in rows if r["phase"] == phase and r["mode"] == mode
                      and (phase == "prefill" or r["context"] == min(x["context"] for x in rows if x["phase"] == "decode"))),
                     key=lambda r: r["tokens"])
        if sel:
            a2.loglog([r["tokens"] for r in sel], [r["measured_ms"] / r["tokens"] * 1e3 for r in sel], marker, color=color,
                      mfc="none" if mode == "lesson" else color, ms=7,
                      label=f"{phase}, {mode}" + (f", S = {sel[0]['context']:g}" if phase == "decode" else ""))
            a2.loglog([r["tokens"] for r in sel], [r["predicted_ms"] / r["tokens"] * 1e3 for r in sel], "-",
                      color=color, alpha=0.6)
    a2.set(xlabel="tokens per step (T for prefill, B for decode)", ylabel="µs per token",
           title="per token (lines: predicted)")
    a2.legend(fontsize=9)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax in (a1, a2):
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(f"{name}: Llama-like model with random weights ({cfg.num_hidden_layers} layers, hidden "
                 f"{cfg.hidden_size}, {cfg.num_attention_heads}/{cfg.num_key_value_heads} heads, bf16 on a GPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
