"""Where OpenVINO int8 spends its time: per-layer counters grouped by kernel, with GMAC/s.

Compiles the int8 model (as ``ResNet50.load(precision="int8", backend="openvino")`` does,
with performance counters on), runs ``--batch`` images ``--runs`` times, and reports for each
kernel (1x1 convolution, 3x3/7x7 convolution, the rest) the ms per batch, its share, and the
multiply-accumulates it performed per second, computed from the model's shapes, and the ten
convolutions that run slowest per multiply-accumulate. Also
lists the precision every layer ran in, so a layer left in float would show. Writes
``results/ov_profile.json`` (or ``--out``); no chart.

    python benchmarks/ov_profile.py [--batch 8] [--runs 20] [--out PATH]
"""

from __future__ import annotations

import collections
import sys

import numpy as np

import common


def conv_macs(model) -> dict[str, int]:
    """Multiply-accumulates per image of each Convolution of an OpenVINO model (reshaped to a
    static batch of 1), by its friendly name: the name the performance counters report."""
    macs = {}
    for op in model.get_ops():
        if op.get_type_name() != "Convolution":
            continue
        out_c, in_c, kh, kw = (d.get_length() for d in op.input(1).get_partial_shape())
        _, _, oh, ow = (d.get_length() for d in op.get_output_partial_shape(0))
        macs[op.get_friendly_name()] = out_c * in_c * kh * kw * oh * ow
    return macs


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--batch", type=common.positive_int, default=8)
    parser.add_argument("--runs", type=common.positive_int, default=20)
    parser.add_argument("--threads", type=common.positive_int, help="inference threads (default: all cores)")
    common.add_out(parser, "ov_profile")
    args = parser.parse_args(argv)

    import openvino as ov

    from resnet50.core.cpu import physical_cores
    from resnet50.derived.variants import model_file
    from resnet50.weights.source import resolve

    path = model_file(resolve(), "int8")
    core = ov.Core()
    static = core.read_model(str(path))
    static.reshape({static.inputs[0].get_any_name(): [1, 3, 224, 224]})
    macs_by_name = conv_macs(static)
    config = {"INFERENCE_NUM_THREADS": args.threads or physical_cores(), "PERFORMANCE_HINT": "LATENCY",
              "PERF_COUNT": True}  # fmt: skip
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    tensor = np.random.default_rng(0).integers(0, 256, (args.batch, 3, 224, 224)).astype(np.float32) - 117.0
    for _ in range(5):
        request.infer({0: tensor})
    per_node: dict[str, list] = collections.defaultdict(lambda: [0.0, "", ""])
    for _ in range(args.runs):
        request.infer({0: tensor})
        for info in request.profiling_info:
            entry = per_node[info.node_name]
            entry[0] += info.real_time.total_seconds() * 1000 / args.runs
            entry[1], entry[2] = info.node_type, info.exec_type

    precisions = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) not in ("Const", "Input", "Output"):
            precisions[f"{rt['layerType'].astype(str)}:{rt['runtimePrecision'].astype(str)}"] += 1

    groups: dict[str, dict] = collections.defaultdict(lambda: {"ms": 0.0, "gmac": 0.0, "layers": 0})
    for name, (ms, node_type, exec_type) in per_node.items():
        if ms <= 0:
            continue
        if node_type == "Convolution" and name in macs_by_name:
            group = "1x1 convolution" if "1x1" in exec_type else "3x3 and 7x7 convolution"
            groups[group]["gmac"] += macs_by_name[name] * args.batch / 1e9
        else:
            group = "everything else"
        groups[group]["ms"] += ms
        groups[group]["layers"] += 1
    total_ms = sum(g["ms"] for g in groups.values())
    per_conv = [
        {
            "layer": name,
            "kernel": exec_type,
            "ms_per_batch": round(ms, 3),
            "gmac_per_s": round(macs_by_name[name] * args.batch / 1e9 / (ms / 1000), 1),
        }
        for name, (ms, node_type, exec_type) in per_node.items()
        if ms > 0 and node_type == "Convolution" and name in macs_by_name
    ]
    slowest = sorted(per_conv, key=lambda c: c["gmac_per_s"])[:10]
    summary = {
        name: {
            "ms_per_batch": round(g["ms"], 2),
            "share": round(g["ms"] / total_ms, 3),
            "layers": g["layers"],
            "gmac_per_s": round(g["gmac"] / (g["ms"] / 1000), 1) if g["gmac"] else None,
        }
        for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["ms"])
    }
    result = {
        **common.header("ov_profile"),
        "model": path.name,
        "batch": args.batch,
        "threads": config["INFERENCE_NUM_THREADS"],
        "ms_per_batch": round(total_ms, 2),
        "images_per_s_with_counters": round(args.batch / (total_ms / 1000), 1),
        "gmac_per_image": round(sum(macs_by_name.values()) / 1e9, 3),
        "convolutions_matched": sum(1 for name in per_node if name in macs_by_name),
        "groups": summary,
        "slowest_convolutions": slowest,
        "runtime_precisions": dict(sorted(precisions.items())),
    }
    common.save(args.out, result)
    common.print_json({k: v for k, v in result.items() if k != "machine"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
