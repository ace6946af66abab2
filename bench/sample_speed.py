"""Characters per second generating text at batch 1: charlstm against a plain NumPy step loop
and PyTorch (`nn.LSTM`, `nn.GRU` or `nn.RNN` called once per character, and a hand-written
step), side by side.

    python bench/sample_speed.py [--sizes 2x256,2x512] [--threads 1,2] [--repeats 3] [--isa native,avx2]
                                 [--cell lstm|gru|rnn]

Random-init models with V=65, E=64, float32; each measurement generates 2,000 characters after
a 100-character seed at temperature 0.8, in its own subprocess with the thread count fixed
through the environment (charlstm: `threads=N`, its units split over N threads; NumPy and
PyTorch: N BLAS/intra-op threads), implementations alternating so that a noisy neighbour hurts
all alike.
PyTorch columns are blank when torch is not installed; "torch" is the faster of its two ways.
GB/s is charlstm's rate times the weights it reads per character. --isa as in train_speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import time

import isa as isa_env
import numpy as np

V, E = 65, 64
LENGTH = 2000
SEED_TEXT = ("First Citizen: before we proceed any further, hear me speak. All: speak, speak. " * 2)[:100]
TEMPERATURE = 0.8
IMPLS = ("charlstm", "numpy", "torch-module", "torch-step")


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # blocks of H columns in each Wx and Wh


def make_model(layers: int, hidden: int, cell: str):
    from charlstm.data import Vocab
    from charlstm.model import ModelConfig, init_params

    vocab = Vocab(sorted("\n !',-.:;?012" + string.ascii_letters))  # V = 65 characters
    config = ModelConfig(vocab_size=vocab.size, layers=layers, hidden=hidden, embed=E, cell=cell)
    return init_params(config, np.random.default_rng(0)), vocab


def time_charlstm(layers: int, hidden: int, threads: int, cell: str) -> float:
    """`charlstm sample --threads N`: each layer's units split over N threads."""
    from charlstm.sample import generate

    params, vocab = make_model(layers, hidden, cell)
    generate(params, vocab, SEED_TEXT, 10, random_seed=0, threads=threads)  # load cached kernels
    start = time.perf_counter()
    generate(params, vocab, SEED_TEXT, LENGTH, temperature=TEMPERATURE, random_seed=1, threads=threads)
    return LENGTH / (time.perf_counter() - start)


def time_numpy(layers: int, hidden: int, cell: str) -> float:
    """The obvious NumPy loop: a few matrix-vector products and gate slices per layer."""
    params, vocab = make_model(layers, hidden, cell)
    H = hidden
    w = {name: params[name] for name in params.names()}
    rng = np.random.default_rng(1)
    h = [np.zeros(H, np.float32) for _ in range(layers)]
    c = [np.zeros(H, np.float32) for _ in range(layers)]

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    def lstm_layer(layer: int, x: np.ndarray) -> np.ndarray:
        z = x @ w[f"lstm.{layer}.Wx"] + h[layer] @ w[f"lstm.{layer}.Wh"] + w[f"lstm.{layer}.b"]
        i, f, o = sigmoid(z[:H]), sigmoid(z[H : 2 * H]), sigmoid(z[3 * H :])
        c[layer] = f * c[layer] + i * np.tanh(z[2 * H : 3 * H])
        return o * np.tanh(c[layer])

    def gru_layer(layer: int, x: np.ndarray) -> np.ndarray:
        xi = x @ w[f"gru.{layer}.Wx"] + w[f"gru.{layer}.bx"]
        hh = h[layer] @ w[f"gru.{layer}.Wh"] + w[f"gru.{layer}.bh"]
        r, z = sigmoid(xi[:H] + hh[:H]), sigmoid(xi[H : 2 * H] + hh[H : 2 * H])
        n = np.tanh(xi[2 * H :] + r * hh[2 * H :])
        return (1 - z) * n + z * h[layer]

    def rnn_layer(layer: int, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ w[f"rnn.{layer}.Wx"] + h[layer] @ w[f"rnn.{layer}.Wh"] + w[f"rnn.{layer}.b"])

    one_layer = {"lstm": lstm_layer, "gru": gru_layer, "rnn": rnn_layer}[cell]

    def step(token: int) -> np.ndarray:
        x = w["embed"][token]
        for layer in range(layers):
            h[layer] = one_layer(layer, x)
            x = h[layer]
        return x @ w["head.W"] + w["head.b"]

    start = time.perf_counter()
    for token in vocab.encode(SEED_TEXT):
        logits = step(int(token))
    seed_time = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(LENGTH):
        scaled = (logits.astype(np.float64) - logits.max()) / TEMPERATURE
        p = np.exp(scaled)
        token = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"))
        logits = step(min(token, V - 1))
    del seed_time
    return LENGTH / (time.perf_counter() - start)


def time_torch(layers: int, hidden: int, threads: int, way: str, cell: str) -> float:
    import torch

    torch.set_num_threads(threads)
    params, vocab = make_model(layers, hidden, cell)
    H = hidden
    t = {name: torch.from_numpy(params[name].copy()) for name in params.names()}
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](E, H, layers)
    with torch.no_grad():  # the README's mapping: a transpose, the biases as they are
        for layer in range(layers):
            getattr(module, f"weight_ih_l{layer}").copy_(t[f"{cell}.{layer}.Wx"].T)
            getattr(module, f"weight_hh_l{layer}").copy_(t[f"{cell}.{layer}.Wh"].T)
            getattr(module, f"bias_ih_l{layer}").copy_(t[f"{cell}.{layer}.{'bx' if cell == 'gru' else 'b'}"])
            bias_hh = getattr(module, f"bias_hh_l{layer}")
            bias_hh.copy_(t[f"gru.{layer}.bh"]) if cell == "gru" else bias_hh.zero_()
    gen = torch.Generator().manual_seed(1)
    state = [(torch.zeros(1, H), torch.zeros(1, H)) for _ in range(layers)]
    zeros = torch.zeros(layers, 1, H)
    module_state = (zeros, zeros.clone()) if cell == "lstm" else zeros

    def step_module(token: int) -> torch.Tensor:
        nonlocal module_state
        x = t["embed"][token].view(1, 1, E)
        out, module_state = module(x, module_state)
        return out[0, 0] @ t["head.W"] + t["head.b"]

    def hand_layer(layer: int, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
        name = f"{cell}.{layer}"
        if cell == "lstm":
            z = torch.addmm(t[f"{name}.b"], x, t[f"{name}.Wx"])
            z.addmm_(h, t[f"{name}.Wh"])
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if cell == "gru":
            xi = torch.addmm(t[f"{name}.bx"], x, t[f"{name}.Wx"])
            hh = torch.addmm(t[f"{name}.bh"], h, t[f"{name}.Wh"])
            xr, xz, xn = xi.chunk(3, dim=1)
            hr, hz, hn = hh.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            return (1 - z) * n + z * h, c
        z = torch.addmm(t[f"{name}.b"], x, t[f"{name}.Wx"])
        return torch.tanh(z.addmm_(h, t[f"{name}.Wh"])), c

    def step_hand(token: int) -> torch.Tensor:
        x = t["embed"][token].view(1, E)
        for layer in range(layers):
            state[layer] = hand_layer(layer, x, *state[layer])
            x = state[layer][0]
        return (x @ t["head.W"] + t["head.b"])[0]

    step = step_module if way == "module" else step_hand
    with torch.inference_mode():
        for token in vocab.encode(SEED_TEXT):
            logits = step(int(token))
        start = time.perf_counter()
        for _ in range(LENGTH):
            p = torch.softmax(logits / TEMPERATURE, dim=0)
            logits = step(int(torch.multinomial(p, 1, generator=gen)))
    return LENGTH / (time.perf_counter() - start)


def weight_bytes(layers: int, hidden: int, cell: str) -> int:
    """Bytes of weights the sampler reads per character: [Wx; Wh] of each layer (layer 0's
    input term is a table row), and the head."""
    H, G = hidden, GATES[cell] * hidden
    return 4 * (H * G + (layers - 1) * 2 * H * G + H * V)


def measure_in_subprocess(
    impl: str, layers: int, hidden: int, threads: int, isa: str, cell: str
) -> float | None:
    cmd = [sys.executable, __file__, "--child", f"{impl}:{layers}:{hidden}:{threads}:{cell}"]
    result = subprocess.run(cmd, env=isa_env.environment(isa, threads), capture_output=True, text=True)
    if result.returncode != 0:
        if impl.startswith("torch") and "No module named 'torch'" in result.stderr:
            return None
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])["chars_per_s"]


def run_child(spec: str) -> None:
    impl, layers, hidden, threads, cell = spec.split(":")
    L, H = int(layers), int(hidden)
    if impl == "charlstm":
        rate = time_charlstm(L, H, int(threads), cell)
    elif impl == "numpy":
        rate = time_numpy(L, H, cell)
    else:
        rate = time_torch(L, H, int(threads), impl.removeprefix("torch-"), cell)
    print(json.dumps({"chars_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2x256,2x512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--isa", default="native", help="comma-separated: native, avx2 (see bench/isa.py)")
    parser.add_argument("--cell", default="lstm", choices=tuple(GATES), help="the recurrent cell")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child)
        return

    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    thread_counts = [int(n) for n in args.threads.split(",")]
    print(
        f"generating {LENGTH} characters at batch 1, {args.cell}, V={V} E={E}, float32; "
        f"best of {args.repeats}"
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {isa_env.cpu_model()}")
    header = [
        "isa",
        "L x H",
        "threads",
        "charlstm",
        "GB/s",
        "numpy",
        {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}[args.cell],
        "torch step",
        "x numpy",
        "x torch",
    ]
    print(" ".join(f"{h:>10}" for h in header))
    for isa in args.isa.split(","):
        for layers, hidden in sizes:
            for threads in thread_counts:
                best: dict[str, float | None] = {impl: 0.0 for impl in IMPLS}
                for _ in range(args.repeats):  # alternate so all see the same machine
                    for impl in IMPLS:
                        if best[impl] is None:
                            continue
                        rate = measure_in_subprocess(impl, layers, hidden, threads, isa, args.cell)
                        best[impl] = None if rate is None else max(best[impl], rate)
                ours, numpy_rate = best["charlstm"], best["numpy"]
                torch_rates = [r for r in (best["torch-module"], best["torch-step"]) if r]
                torch_best = max(torch_rates) if torch_rates else None
                bandwidth = ours * weight_bytes(layers, hidden, args.cell) / 1e9  # the weights read, GB/s
                cells = [isa, f"{layers}x{hidden}", str(threads), f"{ours:.0f}", f"{bandwidth:.1f}"]
                cells += [f"{numpy_rate:.0f}"]
                cells += [f"{best[i]:.0f}" if best[i] else "-" for i in ("torch-module", "torch-step")]
                cells += [f"{ours / numpy_rate:.2f}", f"{ours / torch_best:.2f}" if torch_best else "-"]
                print(" ".join(f"{cell:>10}" for cell in cells), flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
