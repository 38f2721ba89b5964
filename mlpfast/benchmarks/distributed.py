"""``mlpfast bench --distributed``: data-parallel training over MPI on this machine, and a
projection to clusters from a measured cost model of the allreduce.

    mlpfast bench --distributed [--rounds 3] [--json PATH]

Measured (the reference configurations, real MNIST, Adam lr 1e-3, one full epoch after a
warm-up of 32 batches, through ``fit(..., comm=...)``): samples/s of 1 rank x 2 threads and
of 2 ranks x 1 thread, launched in turns (``--rounds`` each, medians), and the time of one
Allreduce of the model's flat gradient buffer. Then Allreduce times from 4 bytes to 16 MiB
on 2 ranks, fitted by least squares to t(n) = alpha + beta n.

Projection, for p nodes joined by a link of L bit/s, each node computing a batch of B rows
(weak scaling: the global batch is p B) as this machine does with 2 threads (t_c per step),
a ring allreduce of n bytes without overlap:

    t_ar(p) = 2 (p - 1) (alpha + alpha_link) + 2 (p - 1) / p * n * (beta + 8 / L)
    samples/s(p) = p B / (t_c + t_ar(p))

alpha and beta are the measured ones (MPI's own cost per message and per byte: copies and
the sum); alpha_link, the wire's latency, cannot be measured on one machine: LINKS assumes
typical values. Communication overtakes computation where t_ar(p) > t_c.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

from .harness import CONFIGS, WARMUP_BATCHES, config_name

NODES = (4, 8, 16, 32, 64)
# (name, bits per second, assumed one-way latency in seconds: TCP on 10 GbE, RDMA on 100 Gb/s)
LINKS = (("10 Gb/s", 10e9, 20e-6), ("100 Gb/s", 100e9, 3e-6))
LAYOUTS = ((1, 2), (2, 1))                        # (ranks, threads per rank)
MODEL_BYTES = [4 ** k for k in range(1, 13)]      # 4 B .. 16 MiB
ALLREDUCE_REPEATS = 30


def add_arguments(parser):
    from ..argtypes import positive
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel training over MPI: 1 rank x 2 threads against 2 "
                             "ranks x 1 thread, and a projection to 4-64 nodes (needs the mpi "
                             "extra)")
    parser.add_argument("--rounds", type=positive(int), default=3,
                        help="launches of each layout for --distributed (median; default 3)")


def run(args, out=print):
    """The parent: launches the layouts in turns, prints the tables; exit status."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                           os.environ.get("PATH", ""))
    if mpiexec is None:
        out("mlpfast bench --distributed: no mpiexec found: pip install 'mlpfast[mpi]'")
        return 1
    results = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for ranks, threads in LAYOUTS:
            results[(ranks, threads)].append(_launch(mpiexec, ranks, threads))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    summary = _summarize(results)
    model = _fit_cost(results[(2, 1)])
    for line in _format(summary, model, args.rounds, load):
        out(line)
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"measured": summary, "allreduce_model": model, "load": load,
                       "raw": {f"{r}x{t}": v for (r, t), v in results.items()}}, f, indent=1)
    return 0


def _launch(mpiexec, ranks, threads):
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mlpfast.benchmarks.distributed",
               "--worker", str(threads)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summarize(results):
    """{config: {layout: {"samples_per_s", "allreduce_ms"}}}: medians over the rounds."""
    summary = {}
    for (ranks, threads), runs in results.items():
        for name in runs[0]["configs"]:
            cell = summary.setdefault(name, {"batch": runs[0]["configs"][name]["batch"],
                                             "bytes": runs[0]["configs"][name]["bytes"]})
            cell[f"{ranks}x{threads}"] = {
                key: statistics.median(r["configs"][name][key] for r in runs)
                for key in runs[0]["configs"][name] if key not in ("batch", "bytes")}
    return summary


def _fit_cost(runs):
    """alpha (s) and beta (s/byte) by least squares over the medians of every size."""
    sizes = np.array(MODEL_BYTES, np.float64)
    seconds = np.array([statistics.median(r["sweep"][str(n)] for r in runs)
                        for n in MODEL_BYTES])
    beta, alpha = np.polyfit(sizes, seconds, 1, w=1 / seconds)   # relative residuals
    return {"alpha_s": float(max(alpha, 0.0)), "beta_s_per_byte": float(beta),
            "sizes": MODEL_BYTES, "seconds": seconds.tolist()}


def projection(cell, model, link_bits, link_latency, nodes):
    """(samples/s, allreduce s, compute s) per step for ``nodes`` nodes (formula above)."""
    compute = cell["batch"] / cell["1x2"]["plain_samples_per_s"]
    allreduce = 2 * (nodes - 1) * (model["alpha_s"] + link_latency) + \
        2 * (nodes - 1) / nodes * cell["bytes"] * (model["beta_s_per_byte"] + 8 / link_bits)
    return nodes * cell["batch"] / (compute + allreduce), allreduce, compute


def _format(summary, model, rounds, load):
    lines = [f"mlpfast bench --distributed: medians of {rounds} launches per layout, in turns; "
             f"load average at the end {' '.join(load)}",
             "", "samples/s of one MNIST epoch; 1 x 2: one process, 2 threads (fit without "
             "comm, and with a 1-rank comm); 2 x 1: two ranks of 1 thread; allreduce: one "
             "Allreduce of the flat gradient on 2 ranks, and its share of a 2 x 1 step", "",
             "| configuration (gradient) | 1 x 2 | 1 x 2, comm | 2 x 1 | 2 x 1 / 1 x 2 | "
             "allreduce (ms) | share |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, cell in summary.items():
        one, two = cell["1x2"], cell["2x1"]
        step_ms = 1e3 * cell["batch"] / two["samples_per_s"]
        lines.append(f"| {name} ({cell['bytes'] / 2**20:.2f} MiB) | "
                     f"{one['plain_samples_per_s']:,.0f} | {one['samples_per_s']:,.0f} | "
                     f"{two['samples_per_s']:,.0f} | "
                     f"{two['samples_per_s'] / one['plain_samples_per_s']:.2f} | "
                     f"{two['allreduce_ms']:.3f} | {two['allreduce_ms'] / step_ms:.0%} |")
    lines += ["", f"allreduce on 2 ranks of this machine, t(n) = alpha + beta n: alpha = "
                  f"{1e6 * model['alpha_s']:.1f} us, beta = {1e9 * model['beta_s_per_byte']:.3f}"
                  f" ns/byte ({1e-9 / max(model['beta_s_per_byte'], 1e-15):.2f} GB/s)", "",
              "| configuration | link | " + " | ".join(f"{p} nodes" for p in NODES) +
              " | communication > computation from |",
              "| --- | --- |" + " ---: |" * len(NODES) + " --- |"]
    for name, cell in summary.items():
        for link, bits, latency in LINKS:
            cells = [projection(cell, model, bits, latency, p) for p in NODES]
            over = next((p for p in range(2, 4097)
                         if projection(cell, model, bits, latency, p)[1] >
                         projection(cell, model, bits, latency, p)[2]), None)
            lines.append(f"| {name} | {link} | " + " | ".join(f"{s:,.0f}" for s, _, _ in cells)
                         + f" | {'never (to 4096)' if over is None else f'{over} nodes'} |")
    return lines


# --- the ranks' side ---------------------------------------------------------------------

def worker(threads):
    """Under mpiexec: every configuration's epoch and allreduce time; rank 0 prints JSON."""
    import mlpfast as mf
    from .. import distributed
    mf.set_num_threads(threads)
    MPI = distributed.mpi()
    cluster = distributed.Cluster(MPI.COMM_WORLD)
    with cluster.root_first("load MNIST"):
        (x, y), _ = mf.datasets.mnist()
    result = {"configs": {}, "sweep": _sweep(cluster.comm, MODEL_BYTES)}
    for sizes, batch in CONFIGS:
        model = mf.MLP(list(sizes), seed=0)
        optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
        loss = mf.CrossEntropyLoss()
        warm = (WARMUP_BATCHES + 1) * batch - batch // 2     # 32 batches and a short one
        mf.fit(model, optimizer, loss, x[:warm], y[:warm], epochs=1, batch_size=batch,
               seed=0, progress=False, comm=cluster)
        history = mf.fit(model, optimizer, loss, x, y, epochs=1, batch_size=batch, seed=0,
                         progress=False, comm=cluster)
        grad_bytes = model.flat_grad.nbytes
        row = result["configs"][config_name(sizes, batch)] = {
            "batch": batch, "bytes": grad_bytes,
            "samples_per_s": history["samples_per_s"][-1],
            "allreduce_ms": 1e3 * _sweep(cluster.comm, [grad_bytes])[str(grad_bytes)]}
        if cluster.size == 1:          # the same epoch without comm: the engine's own step
            history = mf.fit(model, optimizer, loss, x, y, epochs=1, batch_size=batch,
                             seed=0, progress=False)
            row["plain_samples_per_s"] = history["samples_per_s"][-1]
    if cluster.rank == 0:
        print(json.dumps(result), flush=True)


def _sweep(comm, sizes):
    """{bytes: median seconds of one in-place float32 Allreduce SUM} (after a barrier)."""
    from mpi4py import MPI
    times = {}
    for n in sizes:
        buffer = np.ones(max(1, n // 4), np.float32)
        samples = []
        for _ in range(ALLREDUCE_REPEATS + 3):
            comm.Barrier()
            start = MPI.Wtime()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            samples.append(MPI.Wtime() - start)
        times[str(n)] = statistics.median(samples[3:])
    return times


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]))
    else:
        sys.exit("usage: mlpfast bench --distributed (this module runs as its worker)")
