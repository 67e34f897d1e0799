"""Two ``bench_router --anchors-only`` files side by side: another vLLM's (or
nvidia-cutlass-dsl's) ``ll_bf16_gemm`` against the first, through the anchors.

``python -m benchmarks.kernel.compare_anchors A.csv B.csv`` prints, per T and
rotation both files have: ll_bf16 in A and in B, B / A, and the anchors' B / A
(cuBLAS and the fused op, the same code in both processes: near 1.00x where the
two processes saw the same machine state), and B / A of ll_bf16 divided by the
cuBLAS anchor's B / A (``ll B/A, cuBLAS-normalised``).
"""

from __future__ import annotations

import argparse

from benchmarks.common.tables import markdown_table
from benchmarks.kernel.bench_router import _fmt, _ratio, read_csv_rows


def comparison_lines(rows_a: list[dict], rows_b: list[dict]) -> list[str]:
    """The comparison table (markdown lines) over the (T, layers) both have."""
    b_by = {(r["T"], r["layers"]): r for r in rows_b}
    cells = []
    for a in sorted(rows_a, key=lambda r: (-r["layers"], r["T"])):
        b = b_by.get((a["T"], a["layers"]))
        if b is None:
            continue
        ll_a, ll_b = a.get("gemm_ll_us"), b.get("gemm_ll_us")
        cub_a, cub_b = a.get("gemm_us"), b.get("gemm_us")
        normalised = "-"
        if all(isinstance(v, float | int) and v == v and v > 0 for v in (ll_a, ll_b, cub_a, cub_b)):
            normalised = f"{(ll_b / ll_a) / (cub_b / cub_a):.2f}x"
        cells.append(
            [
                a["T"],
                a["layers"],
                a["weights_from"],
                _fmt(ll_a),
                _fmt(ll_b),
                _ratio(ll_b, ll_a),
                _ratio(cub_b, cub_a),
                _ratio(b.get("fused_us"), a.get("fused_us")),
                normalised,
            ]
        )
    head = ["T", "L", "weights", "ll_bf16 A", "ll_bf16 B", "ll B/A", "cuBLAS B/A", "fused B/A"]
    head.append("ll B/A, cuBLAS-normalised")
    return markdown_table(head, cells, ["right", "right", "left"] + ["right"] * 6).splitlines()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="bench_router_anchors_*.csv of the reference process")
    parser.add_argument("b", help="bench_router_anchors_*.csv of the other process")
    args = parser.parse_args(argv)
    for name, path in (("A", args.a), ("B", args.b)):
        with open(path) as f:
            stamp = f.readline().lstrip("# ").strip()
        keys = ("gemm_ll_vllm=", "gemm_ll_cutlass_dsl=", "gpu=", "torch=")
        found = [p for p in stamp.split(", ") if p.startswith(keys)]
        print(f"{name}: {path}: {', '.join(found) or '?'}")
    print("\n".join(comparison_lines(read_csv_rows(args.a), read_csv_rows(args.b))))


if __name__ == "__main__":
    main()
