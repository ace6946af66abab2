"""PyTorch parity: the same weights in torch.nn.Embedding + torch.nn.LSTM + torch.nn.Linear give
the same logits, state, loss and gradients in float64, and the same ten losses over ten
clipped Adam steps in float32 (as llm.c's test_gpt2.c does against PyTorch).

Mapping (ours -> torch): lstm.{l}.Wx -> weight_ih_l{l}.T, lstm.{l}.Wh -> weight_hh_l{l}.T,
lstm.{l}.b -> bias_ih_l{l} with bias_hh_l{l} frozen at zero, head.W -> Linear.weight.T,
head.b -> Linear.bias, embed -> Embedding.weight; E = 0 feeds one-hot characters.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from charlstm import kernels  # noqa: E402
from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state  # noqa: E402

TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}

CONFIGS = {
    "L1-onehot": ModelConfig(vocab_size=7, layers=1, hidden=5, embed=0),
    "L1-embed": ModelConfig(vocab_size=7, layers=1, hidden=5, embed=4),
    "L2-onehot": ModelConfig(vocab_size=7, layers=2, hidden=5, embed=0),
    "L2-embed": ModelConfig(vocab_size=7, layers=2, hidden=5, embed=4),
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The machine's cores are shared; these shapes gain nothing from more threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TorchCharLSTM(torch.nn.Module):
    """The charlstm model written with torch.nn modules, loaded from a charlstm Params."""

    def __init__(self, params):
        super().__init__()
        config = params.config
        V, E, H, L = config.vocab_size, config.embed, config.hidden, config.layers
        dtype = TORCH_DTYPE[params.dtype.type]
        self.vocab_size = V
        self.embed = torch.nn.Embedding(V, E, dtype=dtype) if E > 0 else None
        self.lstm = torch.nn.LSTM(config.input_size(0), H, L, dtype=dtype)
        self.head = torch.nn.Linear(H, V, dtype=dtype)
        with torch.no_grad():
            if self.embed is not None:
                self.embed.weight.copy_(torch.from_numpy(params["embed"]))
            for layer in range(L):
                self.lstm_param("weight_ih", layer).copy_(torch.from_numpy(params[f"lstm.{layer}.Wx"].T))
                self.lstm_param("weight_hh", layer).copy_(torch.from_numpy(params[f"lstm.{layer}.Wh"].T))
                self.lstm_param("bias_ih", layer).copy_(torch.from_numpy(params[f"lstm.{layer}.b"]))
                self.lstm_param("bias_hh", layer).zero_()
                self.lstm_param("bias_hh", layer).requires_grad_(False)
            self.head.weight.copy_(torch.from_numpy(params["head.W"].T))
            self.head.bias.copy_(torch.from_numpy(params["head.b"]))

    def lstm_param(self, kind, layer):
        return getattr(self.lstm, f"{kind}_l{layer}")

    def forward(self, inputs, h0, c0):
        """inputs (T, B) int64, h0 and c0 (L, B, H) -> logits (T*B, V), (h, c) final."""
        if self.embed is not None:
            x = self.embed(inputs)  # (T, B, E)
        else:
            x = F.one_hot(inputs, self.vocab_size).to(self.head.weight.dtype)  # (T, B, V)
        out, (h, c) = self.lstm(x, (h0, c0))  # (T, B, H)
        return self.head(out).reshape(-1, self.vocab_size), (h, c)

    def grads_as_charlstm(self, config):
        """The .grad of every trainable tensor, in charlstm's names and layouts."""
        grads = {}
        if self.embed is not None:
            grads["embed"] = self.embed.weight.grad.numpy()
        for layer in range(config.layers):
            grads[f"lstm.{layer}.Wx"] = self.lstm_param("weight_ih", layer).grad.numpy().T
            grads[f"lstm.{layer}.Wh"] = self.lstm_param("weight_hh", layer).grad.numpy().T
            grads[f"lstm.{layer}.b"] = self.lstm_param("bias_ih", layer).grad.numpy()
            assert self.lstm_param("bias_hh", layer).grad is None  # frozen
        grads["head.W"] = self.head.weight.grad.numpy().T
        grads["head.b"] = self.head.bias.grad.numpy()
        return grads

    def param_groups(self, weight_decay):
        """Optimizer groups mirroring Params.decay_mask: decay on weight matrices only."""
        matrices = [self.head.weight]
        others = [self.head.bias] + ([self.embed.weight] if self.embed is not None else [])
        for layer in range(self.lstm.num_layers):
            matrices += [self.lstm_param("weight_ih", layer), self.lstm_param("weight_hh", layer)]
            others.append(self.lstm_param("bias_ih", layer))
        return [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def make_case(config, T, B, seed, dtype):
    rng = np.random.default_rng(seed)
    params = init_params(config, rng, dtype)
    inputs = rng.integers(0, config.vocab_size, (T, B))
    targets = rng.integers(0, config.vocab_size, (T, B))
    shape = (config.layers, B, config.hidden)
    h0 = rng.uniform(-0.9, 0.9, shape).astype(dtype)
    c0 = rng.normal(0.0, 1.0, shape).astype(dtype)
    return params, inputs, targets, h0, c0


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_float64_logits_loss_and_gradients_match_torch(config):
    T, B = 6, 3
    params, inputs, targets, h0, c0 = make_case(config, T, B, seed=21, dtype=np.float64)
    model = TorchCharLSTM(params)

    h, c = h0.copy(), c0.copy()
    ws = Workspace(config, T, B, np.float64)
    grads = Params.zeros(config, np.float64)
    loss = loss_and_grad(params, grads, inputs, targets, h, c, ws)

    logits_t, (h_t, c_t) = model(torch.from_numpy(inputs), torch.from_numpy(h0), torch.from_numpy(c0))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(targets.reshape(-1)))
    loss_t.backward()

    np.testing.assert_allclose(ws.logits, logits_t.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(h, h_t.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(c, c_t.detach().numpy(), rtol=0, atol=1e-10)
    assert abs(loss - loss_t.item()) <= 1e-10
    torch_grads = model.grads_as_charlstm(config)
    assert set(torch_grads) == set(grads.names())
    for name, expected in torch_grads.items():
        assert np.any(expected != 0), name
        np.testing.assert_allclose(grads[name], expected, rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["adam", "adamw"])
def test_float32_ten_clipped_adam_steps_match_torch(weight_decay):
    config = ModelConfig(vocab_size=11, layers=2, hidden=16, embed=8)
    T, B, steps = 8, 4, 10
    lr, betas, eps, max_norm = 2e-3, (0.9, 0.999), 1e-8, 1.0
    params, inputs, targets, _, _ = make_case(config, T, B, seed=22, dtype=np.float32)
    params["head.W"][...] *= 10.0  # gradient norm ~1.2 at first, ~0.7 after ten steps
    model = TorchCharLSTM(params)

    grads = Params.zeros(config, np.float32)
    m = np.zeros_like(params.flat)
    v = np.zeros_like(params.flat)
    mask = params.decay_mask()
    ws = Workspace(config, T, B, np.float32)
    ours, norms = [], []
    for step in range(1, steps + 1):
        h, c = zero_state(config, B, np.float32)
        ours.append(loss_and_grad(params, grads, inputs, targets, h, c, ws))
        norms.append(kernels.clip_grad_norm(grads.flat, max_norm))
        kernels.adam_step(params.flat, m, v, grads.flat, mask, step, lr, *betas, eps, weight_decay)

    # AdamW's decay is decoupled (theta *= 1 - lr * wd first), like adam_step's; Adam's is not.
    Optimizer = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    optimizer = Optimizer(model.param_groups(weight_decay), lr=lr, betas=betas, eps=eps)
    inputs_t = torch.from_numpy(inputs)
    targets_t = torch.from_numpy(targets.reshape(-1))
    theirs, torch_norms = [], []
    for _ in range(steps):
        h0 = torch.zeros(config.layers, B, config.hidden)
        optimizer.zero_grad()
        logits, _ = model(inputs_t, h0, h0.clone())
        loss = F.cross_entropy(logits, targets_t)
        loss.backward()
        torch_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        optimizer.step()
        theirs.append(loss.item())

    # Both branches of clipping are exercised: the first steps clip, the last ones do not.
    assert sum(n > max_norm for n in norms) >= 2 and sum(n < max_norm for n in norms) >= 2, norms
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    np.testing.assert_allclose(norms, torch_norms, rtol=1e-4, atol=0)
    assert theirs[-1] < theirs[0]  # it trained
