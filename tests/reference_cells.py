"""A plain NumPy float64 reference of the GRU and plain RNN models, written to be read: the
forward pass and the loss, every gate its own line (the gradients are checked by finite
differences and against PyTorch). Weights are a dict keyed like the checkpoint (embed,
gru.{l}.Wx/Wh/bx/bh or rnn.{l}.Wx/Wh/b, head.W, head.b). Nothing here imports charlstm.
"""

import numpy as np
from reference import cross_entropy, first_layer_input, sigmoid


def layers_of(weights, cell):
    L = 0
    while f"{cell}.{L}.Wx" in weights:
        L += 1
    return L


def gru_step(x, h_prev, Wx, Wh, bx, bh):
    """One GRU step, PyTorch's equations: x (B, I), h_prev (B, H) -> (h, r, z, n)."""
    H = h_prev.shape[1]
    xi = x @ Wx + bx  # (B, 3H)
    hh = h_prev @ Wh + bh  # (B, 3H)
    r = sigmoid(xi[:, :H] + hh[:, :H])  # reset: how much of the past the candidate sees
    z = sigmoid(xi[:, H : 2 * H] + hh[:, H : 2 * H])  # update: keep the old state or take the new
    n = np.tanh(xi[:, 2 * H :] + r * hh[:, 2 * H :])  # candidate
    h = (1 - z) * n + z * h_prev
    return h, r, z, n


def rnn_step(x, h_prev, Wx, Wh, b):
    """One plain RNN step: h = tanh(x·Wx + h_prev·Wh + b)."""
    return np.tanh(x @ Wx + h_prev @ Wh + b)


def forward(weights, cell, inputs, h0, masks=None):
    """Logits (T, B, V) and the final h (L, B, H) of inputs (T, B) from h0 (L, B, H); masks
    (L, T, B, H) multiply each layer's h on its way up, as dropout does."""
    out = forward_from_vectors(weights, cell, first_layer_input(weights, inputs), h0, masks)
    return out["logits"], out["h"]


def forward_from_vectors(weights, cell, x, h0, masks=None):
    """forward from the first layer's input vectors x (T, B, I), keeping every step:
    {"logits": (T, B, V), "h": (L, B, H), "layers": per layer {"r", "z", "n", "h"} (T, B, H)
    each (only "h" for a plain RNN)}."""
    L = layers_of(weights, cell)
    T = x.shape[0]
    h_final = np.zeros_like(h0)
    records = []
    for layer in range(L):
        p = {key.split(".")[-1]: w for key, w in weights.items() if key.startswith(f"{cell}.{layer}.")}
        h = h0[layer]
        steps = {name: [] for name in ("r", "z", "n", "h")}
        for t in range(T):
            if cell == "gru":
                h, r, z, n = gru_step(x[t], h, p["Wx"], p["Wh"], p["bx"], p["bh"])
                for name, value in (("r", r), ("z", z), ("n", n)):
                    steps[name].append(value)
            else:
                h = rnn_step(x[t], h, p["Wx"], p["Wh"], p["b"])
            steps["h"].append(h)
        h_final[layer] = h
        records.append({name: np.stack(v) for name, v in steps.items() if v})
        x = records[-1]["h"]  # (T, B, H)
        if masks is not None:
            x = x * masks[layer]
    logits = x @ weights["head.W"] + weights["head.b"]
    return {"logits": logits, "h": h_final, "layers": records}


def loss(weights, cell, inputs, targets, h0, masks=None):
    logits, _ = forward(weights, cell, inputs, h0, masks)
    V = logits.shape[-1]
    return cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
