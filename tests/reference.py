"""A plain NumPy float64 reference of the charlstm model, written to be read, not to be fast.

Weights are a dict keyed like the checkpoint (embed, lstm.{l}.Wx, lstm.{l}.Wh, lstm.{l}.b,
head.W, head.b). Every gate is its own slice and its own line; the backward pass is the chain
rule written out step by step (BPTT truncated at the window). Nothing here imports charlstm.
Letters: B batch, T time, V vocabulary, E embedding (0: one-hot input), H hidden, L layers.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def sizes(weights):
    """(V, E, H, L) read off the weight shapes."""
    V = weights["head.W"].shape[1]
    H = weights["head.W"].shape[0]
    E = weights["embed"].shape[1] if "embed" in weights else 0
    L = 0
    while f"lstm.{L}.Wx" in weights:
        L += 1
    return V, E, H, L


def first_layer_input(weights, inputs):
    """(T, B, E) embedding vectors, or (T, B, V) one-hot vectors when there is no embedding."""
    V, E, _, _ = sizes(weights)
    if E > 0:
        return weights["embed"][inputs]
    return np.eye(V)[inputs]


def forward(weights, inputs, h0, c0, masks=None):
    """Run the model over inputs (T, B) from the state h0, c0 (L, B, H).

    masks (L, T, B, H), optional: dropout multipliers applied to each layer's h before it goes
    up (to the next layer or the head). Returns a dict:
      logits (T, B, V); h, c (L, B, H) the final state; h0, c0 as given;
      layers: per layer a dict with x (its input, T, B, I), i, f, g, o, c, h (T, B, H each)
      and out (T, B, H), the h after dropout that feeds the layer above.
    """
    return forward_from_vectors(weights, first_layer_input(weights, inputs), h0, c0, masks)


def forward_from_vectors(weights, x, h0, c0, masks=None):
    """`forward` from the first layer's input vectors x (T, B, E or V) instead of token ids:
    what a gradient with respect to one position's input perturbs."""
    V, E, H, L = sizes(weights)
    T, B = x.shape[:2]
    layers = []
    h_final = np.zeros((L, B, H))
    c_final = np.zeros((L, B, H))
    for layer in range(L):
        Wx = weights[f"lstm.{layer}.Wx"]
        Wh = weights[f"lstm.{layer}.Wh"]
        b = weights[f"lstm.{layer}.b"]
        rec = {name: np.zeros((T, B, H)) for name in ("i", "f", "g", "o", "c", "h")}
        h_prev = h0[layer]
        c_prev = c0[layer]
        for t in range(T):
            z = x[t] @ Wx + h_prev @ Wh + b  # (B, 4H) pre-activations
            i = sigmoid(z[:, 0 * H : 1 * H])  # input gate
            f = sigmoid(z[:, 1 * H : 2 * H])  # forget gate
            g = np.tanh(z[:, 2 * H : 3 * H])  # candidate
            o = sigmoid(z[:, 3 * H : 4 * H])  # output gate
            c = f * c_prev + i * g
            h = o * np.tanh(c)
            for name, value in (("i", i), ("f", f), ("g", g), ("o", o), ("c", c), ("h", h)):
                rec[name][t] = value
            h_prev = h
            c_prev = c
        h_final[layer] = h_prev
        c_final[layer] = c_prev
        rec["x"] = x
        rec["out"] = rec["h"] * masks[layer] if masks is not None else rec["h"]
        layers.append(rec)
        x = rec["out"]
    logits = x @ weights["head.W"] + weights["head.b"]
    return {"logits": logits, "h": h_final, "c": c_final, "layers": layers, "h0": h0, "c0": c0}


def cross_entropy(logits, targets):
    """Mean over N of -log softmax(logits)[n, targets[n]]; logits (N, V), targets (N,)."""
    N = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    log_sum_exp = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return np.mean(log_sum_exp - logits[np.arange(N), targets])


def cross_entropy_grad(logits, targets):
    """d cross_entropy / d logits = (softmax - one-hot) / N, shape (N, V)."""
    N, V = logits.shape
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax = e / e.sum(axis=1, keepdims=True)
    return (softmax - np.eye(V)[targets]) / N


def backward(weights, inputs, cache, dlogits, masks=None):
    """Gradients of sum(dlogits * logits) w.r.t. every weight, given the forward's cache.

    dlogits (T, B, V): the upstream gradient. Truncated BPTT: nothing flows into h0, c0.
    """
    V, E, H, L = sizes(weights)
    T, B = inputs.shape
    grads = {name: np.zeros_like(w) for name, w in weights.items()}

    top = cache["layers"][L - 1]["out"]
    grads["head.W"] = np.einsum("tbh,tbv->hv", top, dlogits)
    grads["head.b"] = dlogits.sum(axis=(0, 1))
    d_out = dlogits @ weights["head.W"].T  # (T, B, H) gradient w.r.t. the top layer's out

    for layer in range(L - 1, -1, -1):
        rec = cache["layers"][layer]
        Wx = weights[f"lstm.{layer}.Wx"]
        Wh = weights[f"lstm.{layer}.Wh"]
        dh_from_above = d_out * masks[layer] if masks is not None else d_out
        dx = np.zeros_like(rec["x"])
        dh_next = np.zeros((B, H))  # gradient reaching h_t through step t+1
        dc_next = np.zeros((B, H))  # gradient reaching c_t through step t+1
        for t in range(T - 1, -1, -1):
            i, f, g, o, c = rec["i"][t], rec["f"][t], rec["g"][t], rec["o"][t], rec["c"][t]
            c_prev = rec["c"][t - 1] if t > 0 else cache["c0"][layer]
            h_prev = rec["h"][t - 1] if t > 0 else cache["h0"][layer]

            dh = dh_from_above[t] + dh_next
            # h = o * tanh(c)
            do = dh * np.tanh(c)
            dc = dc_next + dh * o * (1.0 - np.tanh(c) ** 2)
            # c = f * c_prev + i * g
            di = dc * g
            df = dc * c_prev
            dg = dc * i
            dc_next = dc * f
            # through the activations to the pre-activations z = x Wx + h_prev Wh + b
            dz_i = di * i * (1.0 - i)
            dz_f = df * f * (1.0 - f)
            dz_g = dg * (1.0 - g**2)
            dz_o = do * o * (1.0 - o)
            dz = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)  # (B, 4H)

            grads[f"lstm.{layer}.Wx"] += rec["x"][t].T @ dz
            grads[f"lstm.{layer}.Wh"] += h_prev.T @ dz
            grads[f"lstm.{layer}.b"] += dz.sum(axis=0)
            dx[t] = dz @ Wx.T
            dh_next = dz @ Wh.T
        d_out = dx  # gradient w.r.t. the out of the layer below

    if E > 0:
        for t in range(T):
            for b in range(B):
                grads["embed"][inputs[t, b]] += d_out[t, b]
    return grads


def loss_and_grad(weights, inputs, targets, h0, c0, masks=None):
    """Mean cross-entropy over the T*B characters and its gradients (a dict like weights)."""
    cache = forward(weights, inputs, h0, c0, masks)
    T, B, V = cache["logits"].shape
    logits = cache["logits"].reshape(T * B, V)
    loss = cross_entropy(logits, targets.reshape(T * B))
    dlogits = cross_entropy_grad(logits, targets.reshape(T * B)).reshape(T, B, V)
    return loss, backward(weights, inputs, cache, dlogits, masks)
