"""One prepared GPU check: CUDA correctness, loss-head memory and speed, Stage 2 against the HF loop.

    python benchmarks/gpu_check.py --out gpu_check.json          # on one H100/H200
    python benchmarks/gpu_check.py --cpu --tiny --out dry.json   # the same code paths on CPU (CI)

Sections (benchmarks/gpu_check_parts/), each in its own process so that one failure or out-of-memory
does not stop the others and each measures peak memory on a clean device:
  correctness       tiny Qwen2 converted from transformers: logits (fp32, bf16), SFT/REDI loss and
                    per-tensor gradients on the device vs transformers on the CPU, fused head vs
                    Megatron's cross-entropy, one step of every objective, save + exact resume
  loss_head         16k/32k tokens x 151,936 vocab, h 1,536 and 3,584, bf16: peak extra memory and
                    forward+backward time, package head vs Megatron's unfused cross-entropy
  stage2            Qwen2.5-1.5B shape, packed 16k rows, bf16, recompute off/on, vs the
                    transformers + TRL-style loop: tokens/s, MFU, peak memory, time ratio
Prints a Markdown table and writes everything as JSON. The wheels the GPU machine lacks
(megatron-core for Python 3.12 and its needs) are fetched by benchmarks/fetch_gpu_wheels.sh.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "gpu_check_parts"), os.path.dirname(HERE)]

PARTS = ("correctness", "loss_head", "stage2:package", "stage2:package_recompute",
         "stage2:hf_trl_style")


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the CI dry run)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (with --cpu)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON results file")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--part-timeout", type=float, default=240.0,
                        help="seconds one part may run before it is stopped and reported")
    parser.add_argument("--run-part", help=argparse.SUPPRESS)
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _run_part(args) -> None:
    """Runs one part in this process and writes its JSON result to --part-out."""
    import common

    scale = common.resolve_scale(args.cpu, args.tiny)
    section, _, variant = args.run_part.partition(":")
    if section == "correctness":
        import correctness
        result = correctness.run(scale)
    elif section == "loss_head":
        import loss_head_scaling
        result = loss_head_scaling.run(scale)
    else:
        import stage2_throughput
        result = stage2_throughput.run(scale, variant)
    with open(args.part_out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=str)


def _spawn(args, part: str) -> dict:
    """Returns one part's result (or its error) from a fresh process."""
    out = tempfile.mktemp(suffix=".json")
    command = [sys.executable, os.path.abspath(__file__), "--run-part", part, "--part-out", out]
    command += ["--cpu"] * args.cpu + ["--tiny"] * args.tiny
    started = time.time()
    try:
        completed = subprocess.run(command, capture_output=True, text=True,
                                   timeout=args.part_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.part_timeout:.0f} s"}
    seconds = time.time() - started
    if completed.returncode or not os.path.exists(out):
        tail = (completed.stdout + completed.stderr)[-3000:]
        return {"error": f"exit {completed.returncode}", "log_tail": tail, "wall_s": seconds}
    with open(out, encoding="utf-8") as handle:
        result = json.load(handle)
    result["wall_s"] = seconds
    return result


def _report(results: dict) -> str:
    import common
    import loss_head_scaling

    lines = [f"environment: {json.dumps(results['environment'])}", ""]
    sections = (
        ("correctness", "## correctness", lambda part: common.table(
            [[r["check"], r["value"], r["tolerance"], "ok" if r["passed"] else "FAIL"]
             for r in part["rows"]], ["check", "measured", "tolerance", "result"])),
        ("loss_head", "## loss head (forward + backward)", lambda part: common.table(
            loss_head_scaling.render(part), ["case", "path", "peak extra memory", "time",
                                             "memory vs megatron", "time vs megatron"])),
    )
    for name, title, render in sections:
        part = results["parts"].get(name)
        if part:
            failed = "error" in part
            body = f"ERROR {part['error']}\n{part.get('log_tail', '')}" if failed else render(part)
            lines += [title, body, ""]
    stage2 = [dict(v, variant=k.split(":")[1]) for k, v in results["parts"].items()
              if k.startswith("stage2:")]
    if stage2:
        import stage2_throughput
        lines.append("## Stage 2 step (REDI, Qwen2.5-1.5B shape, packed rows)")
        rows = []
        for r in stage2_throughput.summarize(stage2):
            if "error" in r:
                rows.append([r["variant"], "ERROR " + r["error"], "", "", "", ""])
                continue
            rows.append([r["variant"], f"{r['seconds_per_step']:.3f} s",
                         f"{r['tokens_per_second']:.0f}",
                         "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                         common.gib(r["peak_bytes"]),
                         f"{r['time_vs_hf']:.2f}x" if "time_vs_hf" in r else "n/a"])
        lines.append(common.table(rows, ["variant", "step", "tokens/s", "MFU", "peak memory",
                                         "time vs HF loop"]))
        for r in stage2:
            if "error" in r:
                lines.append(f"\n{r['variant']}: {r.get('log_tail', '')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.run_part:
        _run_part(args)
        return 0
    import common

    common.resolve_scale(args.cpu, args.tiny)
    results = {"environment": common.environment(), "mode": "cpu" if args.cpu else "cuda",
               "tiny": args.tiny, "parts": {}}
    for part in args.parts:
        print(f"[gpu_check] {part} ...", flush=True)
        results["parts"][part] = _spawn(args, part)
        status = results["parts"][part].get("error", "done")
        print(f"[gpu_check] {part}: {status} ({results['parts'][part].get('wall_s', 0):.0f} s)",
              flush=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, default=str)
    print(_report(results))
    failed = [part for part, result in results["parts"].items()
              if "error" in result or result.get("passed") is False]
    if failed:
        print(f"[gpu_check] failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
