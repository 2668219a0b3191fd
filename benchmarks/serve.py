"""`cmdv serve` against `python -m llama_cpp.server` on the same GGUF: aggregate generated tokens/s and p95
latency of 4 concurrent clients (each with a different pack on cmdv serve, no packs on llama_cpp.server),
paired and alternating rounds, the same client script (the official openai client, greedy, non-streamed);
isolation (every cmdv output against the same request alone); a 2-replica Ray Serve check; pack-pull tamper
cases.

    python benchmarks/serve.py [--model smollm2-135m-instruct] [--rounds 7] [--requests 8] [--tokens 32]

Both servers run with their defaults (cmdv serve: 2 slots of 1 thread on 2 cores; llama_cpp.server: one
model behind a lock, n_threads 1 by default). The 4 packs are the committed SmolLM2 refusal pack under 4
names at 4 strengths (0.5, 1, 1.5, -1): four different edits. Writes ``benchmarks/results/serve.json``:
``throughput_ratio_vs_llama_cpp_server`` and ``p95_latency_ratio`` (medians of the per-round paired
ratios), ``isolation_mismatches`` / ``isolation_requests``, ``ray_replicas_tested``,
``pull_tamper_cases_refused`` / ``pull_tamper_cases``, and each server's tokens/s and p95. The details
record the machine's 1-minute load average before and after (other work on the machine slows both servers,
and the one with more threads can gain less from them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_results  # noqa: E402
from commandv.runtime.models import zoo  # noqa: E402
from commandv.runtime.pack.policy import REFERENCE_PROMPTS  # noqa: E402
from tests.serve_helpers import free_port, replica_pids, start_process, start_server, stop, tamper_cases  # noqa: E402

PACK = ROOT / "packs" / "smollm2-135m-instruct-refusal-direct.pack.gguf"
PACKS = [("p1", 0.5), ("p2", 1.0), ("p3", 1.5), ("p4", -1.0)]
CLIENTS = 4


def _chat(client, model: str, prompt: str, tokens: int) -> tuple[str, int, float]:
    t = time.perf_counter()
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                       max_tokens=tokens, temperature=0)
    return r.choices[0].message.content, r.usage.completion_tokens, time.perf_counter() - t


def _round(url: str, models: list[str], prompts: list[str], tokens: int) -> dict:
    """4 clients at once, client i sends every prompt in turn with model ``models[i]``; returns the wall
    seconds, generated tokens, per-request latencies and outputs ``{(i, prompt): text}``."""
    import openai

    out, lat, toks, errors = {}, [], [], []

    def client(i: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        try:
            for p in prompts:
                text, n, s = _chat(c, models[i], p, tokens)
                out[(i, p)] = text
                lat.append(s)
                toks.append(n)
        except Exception as exc:  # reported after the round
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    return {"wall": wall, "tokens": sum(toks), "lat": lat, "out": out}


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) > 1 else xs[0]


def _ray_check(model: str, packs: Path, tokens: int) -> tuple[int, str]:
    """Replicas that answered (with outputs equal across them) on a local 2-replica Ray Serve deployment."""
    import openai

    try:
        proc, url = start_server(["serve", model, "--ray", "--replicas", "2", "--slots", "1", "--threads", "1",
                                  "--packs", str(packs), "--signatures", "off"], env={"RAY_USAGE_STATS_ENABLED": "0"},
                                 timeout=300)
    except (RuntimeError, OSError) as exc:
        return 0, f"ray serve did not start: {exc}"[:300]
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        pids = replica_pids(url)
        texts = {_chat(c, f"{model}+p2", "How do I pick a lock?", tokens)[0] for _ in range(8)}
        return (len(pids) if len(texts) == 1 else 0), f"{len(pids)} replica pids, {len(texts)} distinct outputs"
    finally:
        stop(proc, 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=8, help="requests per client per round")
    ap.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    import openai

    gguf = zoo.fetch(args.model, progress=False)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    packs = work / "packs"
    packs.mkdir()
    for name, _ in PACKS:
        shutil.copyfile(PACK, packs / f"{name}.pack.gguf")
    prompts = [REFERENCE_PROMPTS[k % len(REFERENCE_PROMPTS)] for k in range(args.requests)]
    models = [f"{args.model}+{n}@{s:g}" for n, s in PACKS]

    cmdv, cmdv_url = start_server(["serve", args.model, "--packs", str(packs), "--signatures", "off"])
    port = free_port()
    llama, llama_url = start_process([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port",
                                      str(port)], port, path="/v1/models")
    try:
        c = openai.OpenAI(base_url=cmdv_url + "/v1", api_key="none", max_retries=0, timeout=300)
        alone = {(i, p): _chat(c, models[i], p, args.tokens)[0] for i in range(CLIENTS) for p in prompts}
        _round(llama_url, ["x"] * CLIENTS, prompts[:2], args.tokens)  # warm-up, both
        _round(cmdv_url, models, prompts[:2], args.tokens)
        runs = {"cmdv": [], "llama": []}
        mismatches = compared = 0
        for k in range(args.rounds):
            order = ("cmdv", "llama") if k % 2 == 0 else ("llama", "cmdv")
            for who in order:
                r = _round(cmdv_url if who == "cmdv" else llama_url, models if who == "cmdv" else ["x"] * CLIENTS,
                           prompts, args.tokens)
                runs[who].append(r)
                if who == "cmdv":
                    compared += len(r["out"])
                    mismatches += sum(r["out"][key] != alone[key] for key in r["out"])
            a, b = runs["cmdv"][-1], runs["llama"][-1]
            print(f"round {k + 1}/{args.rounds}: cmdv {a['tokens'] / a['wall']:.1f} tok/s p95 {_p95(a['lat']):.2f} s,"
                  f" llama_cpp.server {b['tokens'] / b['wall']:.1f} tok/s p95 {_p95(b['lat']):.2f} s; "
                  f"isolation mismatches so far {mismatches}/{compared}", flush=True)
        metrics = urllib.request.urlopen(cmdv_url + "/metrics", timeout=30).read().decode()
    finally:
        stop(cmdv)
        stop(llama)
    tps = {w: [r["tokens"] / r["wall"] for r in rs] for w, rs in runs.items()}
    p95 = {w: [_p95(r["lat"]) for r in rs] for w, rs in runs.items()}
    ratio_tps = statistics.median(a / b for a, b in zip(tps["cmdv"], tps["llama"]))
    ratio_p95 = statistics.median(a / b for a, b in zip(p95["cmdv"], p95["llama"]))

    ray_n, ray_note = (0, "skipped") if args.skip_ray else _ray_check(args.model, packs, 12)
    tamper = tamper_cases(work / "tamper")
    refused = sum(1 for v in tamper.values() if v is not None and not v.startswith("store touched"))
    shutil.rmtree(work, ignore_errors=True)

    figures = {
        "throughput_ratio_vs_llama_cpp_server": (round(ratio_tps, 3), "ratio"),
        "p95_latency_ratio": (round(ratio_p95, 3), "ratio"),
        "isolation_mismatches": (mismatches, "requests"),
        "isolation_requests": (compared, "requests"),
        "ray_replicas_tested": (ray_n, "replicas"),
        "pull_tamper_cases_refused": (refused, "cases"),
        "pull_tamper_cases": (len(tamper), "cases"),
        "cmdv_serve_tokens_per_s": (round(statistics.median(tps["cmdv"]), 1), "tokens/s"),
        "llama_cpp_server_tokens_per_s": (round(statistics.median(tps["llama"]), 1), "tokens/s"),
        "cmdv_serve_p95_latency_s": (round(statistics.median(p95["cmdv"]), 3), "s"),
        "llama_cpp_server_p95_latency_s": (round(statistics.median(p95["llama"]), 3), "s"),
    }
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    path = write_results("serve", figures, extra={
        "model": args.model, "gguf": gguf.name, "rounds": args.rounds, "clients": CLIENTS,
        "requests_per_client_per_round": args.requests, "max_tokens": args.tokens, "temperature": 0,
        "packs": {n: s for n, s in PACKS},
        "cmdv_serve": "defaults: 2 slots x 1 thread (2 cores), queue 16",
        "llama_cpp_server": "python -m llama_cpp.server --model GGUF (defaults: n_threads 1, one request at a time)",
        "lscpu_model_name": next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                                  if line.startswith("Model name")), ""),
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "per_round_tokens_per_s": tps, "per_round_p95_s": p95, "ray": ray_note,
        "tamper_cases": {k: (v or "ACCEPTED")[:200] for k, v in tamper.items()},
        "cmdv_metrics_decode_tps_per_slot": next((float(line.split()[1]) for line in metrics.splitlines()
                                                 if line.startswith("cmdv_decode_tokens_per_second ")), None),
    })
    for k, (v, u) in figures.items():
        print(f"{k}: {v} {u}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
