"""PyTorch parity for the GRU and plain RNN: the same weights in torch.nn.GRU / torch.nn.RNN
(with Embedding and Linear) give the same logits, final state, loss and every gradient, in
float64, with state carried in.

Mapping (ours -> torch): {cell}.{l}.Wx -> weight_ih_l{l}.T, {cell}.{l}.Wh -> weight_hh_l{l}.T;
GRU: gru.{l}.bx -> bias_ih_l{l}, gru.{l}.bh -> bias_hh_l{l}; RNN (tanh): rnn.{l}.b ->
bias_ih_l{l}, with bias_hh_l{l} frozen at zero. head and embed as for the LSTM.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state  # noqa: E402

SHAPES = {"L1-onehot": (1, 5, 0), "L2-embed": (2, 6, 4), "L3-embed": (3, 4, 3)}
V, T, B = 7, 6, 3


def torch_model(params):
    """(recurrent module, embedding or None, head W, head b), leaves holding params' values."""
    config = params.config
    cell, L, H = config.cell, config.layers, config.hidden
    width = config.embed if config.embed else V
    net = (torch.nn.GRU if cell == "gru" else torch.nn.RNN)(width, H, L, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(L):
            getattr(net, f"weight_ih_l{layer}").copy_(torch.from_numpy(params[f"{cell}.{layer}.Wx"].T.copy()))
            getattr(net, f"weight_hh_l{layer}").copy_(torch.from_numpy(params[f"{cell}.{layer}.Wh"].T.copy()))
            if cell == "gru":
                getattr(net, f"bias_ih_l{layer}").copy_(torch.from_numpy(params[f"gru.{layer}.bx"]))
                getattr(net, f"bias_hh_l{layer}").copy_(torch.from_numpy(params[f"gru.{layer}.bh"]))
            else:
                getattr(net, f"bias_ih_l{layer}").copy_(torch.from_numpy(params[f"rnn.{layer}.b"]))
                getattr(net, f"bias_hh_l{layer}").zero_()
    embed = torch.tensor(params["embed"], requires_grad=True) if config.embed else None
    head_W = torch.tensor(params["head.W"], requires_grad=True)
    head_b = torch.tensor(params["head.b"], requires_grad=True)
    return net, embed, head_W, head_b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_logits_state_loss_and_every_gradient_match_pytorch(cell, shape):
    config = ModelConfig(V, *SHAPES[shape], cell=cell)
    rng = np.random.default_rng(2)
    params = init_params(config, rng, np.float64)
    params.flat *= 2  # past the near-linear regime of a fresh init
    inputs, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    h, c = zero_state(config, B, np.float64)
    h[:] = rng.uniform(-0.9, 0.9, h.shape)
    h0 = h.copy()
    grads = Params.zeros(config, np.float64)
    ws = Workspace(config, T, B, np.float64)
    loss = loss_and_grad(params, grads, inputs, targets, h, c, ws)

    net, embed, head_W, head_b = torch_model(params)
    x = torch.from_numpy(inputs)
    xs = embed[x] if embed is not None else F.one_hot(x, V).double()
    out, h_final = net(xs, torch.from_numpy(h0))
    logits = out @ head_W + head_b
    torch_loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    torch_loss.backward()

    np.testing.assert_allclose(ws.logits, logits.detach().numpy().reshape(-1, V), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h, h_final.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert loss == pytest.approx(torch_loss.item(), rel=1e-13)
    expected = {"head.W": head_W.grad, "head.b": head_b.grad}
    if embed is not None:
        expected["embed"] = embed.grad
    for layer in range(config.layers):
        expected[f"{cell}.{layer}.Wx"] = getattr(net, f"weight_ih_l{layer}").grad.T
        expected[f"{cell}.{layer}.Wh"] = getattr(net, f"weight_hh_l{layer}").grad.T
        if cell == "gru":
            expected[f"gru.{layer}.bx"] = getattr(net, f"bias_ih_l{layer}").grad
            expected[f"gru.{layer}.bh"] = getattr(net, f"bias_hh_l{layer}").grad
        else:
            expected[f"rnn.{layer}.b"] = getattr(net, f"bias_ih_l{layer}").grad
    assert sorted(expected) == sorted(params.names())
    for name, value in expected.items():
        want = value.numpy()
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(grads[name], want, rtol=1e-10, atol=1e-14, err_msg=name)
