"""Tests of course_utils.tensors_autograd (generated from notebooks/01_tensors_autograd.ipynb).

In picotron's style: every function against PyTorch's own answer (data_ptr for addresses,
F.cross_entropy and autograd for the loss and its gradient) on awkward shapes and dtypes, plus
every bad-input error.
"""
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from course_utils.tensors_autograd import (  # noqa: E402
    SoftmaxCrossEntropy, address_blocks, autograd_graph, draw_storage, element_addresses,
    flat_storage, softmax_cross_entropy, storage_readers)

_BASE = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
VIEWS = {
    "contiguous": lambda: _BASE,
    "transpose": lambda: _BASE.transpose(1, 3),                        # (2, 5, 4, 3)
    "permute": lambda: _BASE.permute(3, 0, 2, 1),                      # (5, 2, 4, 3)
    "slice with offset": lambda: _BASE[1:, 1:, 2:, 1:4],
    "negative-free steps": lambda: _BASE[:, ::2, 1::3, ::4],
    "expand (stride 0)": lambda: _BASE[0, 0, 0].expand(3, 5),
    "unsqueeze": lambda: _BASE[1].unsqueeze(1),                        # (3, 1, 4, 5)
    "diagonal": lambda: _BASE[0, 0].diagonal(),                        # stride 5 + 1
    "overlapping as_strided": lambda: _BASE.flatten().as_strided((4, 3), (2, 1), 7),
    "0-d element": lambda: _BASE[1, 2, 3, 4],
    "empty": lambda: _BASE[:, :0],
}


def _addresses_by_data_ptr(t):
    base, size = t.untyped_storage().data_ptr(), t.element_size()
    return torch.tensor([(t[i].data_ptr() - base) // size
                         for i in itertools.product(*map(range, t.shape))], dtype=torch.int64)


@pytest.mark.parametrize("name", list(VIEWS))
def test_element_addresses_match_data_ptr(name):
    t = VIEWS[name]()
    addr = element_addresses(t)
    assert addr.shape == t.shape and addr.dtype == torch.int64
    assert torch.equal(addr.flatten(), _addresses_by_data_ptr(t).view(-1))
    assert torch.equal(flat_storage(t)[addr], t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                   torch.int64, torch.bool])
def test_flat_storage_any_dtype(dtype):
    t = (torch.arange(24) % 7).to(dtype).view(4, 6)[1:, ::2].t()     # (3, 3) view, offset 6
    flat = flat_storage(t)
    assert flat.dtype == dtype and flat.shape == (24,)
    assert torch.equal(flat[element_addresses(t)], t)
    assert torch.equal(element_addresses(t).flatten(), _addresses_by_data_ptr(t))


def test_flat_storage_shares_memory():
    x = torch.zeros(3, 4)
    flat_storage(x.t())[5] = 7.0
    assert x[1, 1] == 7.0


def test_storage_readers():
    x = torch.arange(12).view(3, 4)
    assert storage_readers(x) == [[i] for i in range(12)]
    assert storage_readers(x.t())[:4] == [[0], [3], [6], [9]]
    r = storage_readers(x[0].expand(3, 4))                            # each of row 0 read 3 times
    assert r[:4] == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]] and r[4:] == [[]] * 8
    assert sum(map(len, storage_readers(x[1:, 1:3]))) == 4


def test_address_blocks_layout():
    t = torch.arange(24).view(2, 3, 4).permute(2, 0, 1)             # (4, 2, 3): 4 blocks of (2, 3)
    grid = address_blocks(t)
    assert grid.shape == (2, 4 * 4 - 1)
    assert torch.isnan(torch.from_numpy(grid[:, 3::4])).all()         # the gap columns
    for b in range(4):
        assert (grid[:, 4 * b: 4 * b + 3] == element_addresses(t)[b].numpy()).all()
    assert address_blocks(torch.tensor(1.0)).shape == (1, 1)
    assert address_blocks(torch.arange(5)[1:]).tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize("fn", [element_addresses, flat_storage])
def test_address_bad_inputs(fn):
    with pytest.raises(TypeError, match="strided"):
        fn(torch.eye(3).to_sparse())
    with pytest.raises(TypeError, match="got list"):
        fn([1, 2, 3])


@pytest.mark.parametrize("make", [lambda: torch.arange(5), lambda: torch.arange(12).view(3, 4).t(),
                                  lambda: torch.arange(24).view(2, 3, 4).permute(2, 0, 1),
                                  lambda: torch.arange(6).view(2, 3)[0].expand(2, 2, 3),
                                  lambda: torch.tensor(3.0)])
def test_draw_storage_draws(make):
    fig = draw_storage(make())
    assert len(fig.axes) == 2
    plt.close(fig)


@pytest.mark.parametrize("shape", [(3, 4), (4, 6), (2, 3, 4)])
@pytest.mark.parametrize("op", [lambda t: t, lambda t: t.transpose(-2, -1), lambda t: t[..., ::2],
                                lambda t: t.permute(*range(t.dim() - 1, -1, -1)),
                                lambda t: t.unsqueeze(0).expand(2, *t.shape)])
def test_draw_storage_figures_stay_readable(shape, op, tmp_path):
    """The notebook's widget draws these views; each PNG (at the course's 120 dpi) must be at most
    4.5 times as wide as it is high and at least 200 px high, as test_notebooks asks of saved ones."""
    import PIL.Image

    from course_utils import plotting
    plotting.use_style()
    fig = draw_storage(op(torch.arange(torch.Size(shape).numel()).view(shape)))
    fig.savefig(tmp_path / "f.png")
    plt.close(fig)
    w, h = PIL.Image.open(tmp_path / "f.png").size
    assert h >= 200 and w <= 4.5 * h, (w, h)


def test_draw_storage_bad_inputs():
    with pytest.raises(ValueError, match="1 to 400 elements"):
        draw_storage(torch.zeros(0))
    with pytest.raises(ValueError, match="1 to 400 elements, got 401"):
        draw_storage(torch.zeros(401))
    with pytest.raises(ValueError, match="got list"):
        draw_storage([1, 2])


def test_autograd_graph_structure():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    data = torch.randn(3)
    loss = (a * b + a * data).sum()                    # a is used twice: one AccumulateGrad node
    nodes, edges, labels = autograd_graph(loss, names={"a": a, "b": b})
    assert labels["n0"] == "SumBackward0"
    assert sorted(labels.values()) == sorted(["SumBackward0", "AddBackward0", "MulBackward0",
                                              "MulBackward0", "a (3,)", "b (3,)"])
    assert len(nodes) == len(set(nodes)) == 6
    by_label = {labels[n]: n for n in nodes}
    assert sum(dst == by_label["a (3,)"] for _, dst in edges) == 2   # gradient reaches a twice
    assert all(src in nodes and dst in nodes for src, dst in edges)
    assert len(edges) == 6                             # sum->add, add->mul×2, mul->a, mul->b, mul->a


def test_autograd_graph_unnamed_leaf_and_matches_next_functions():
    w = torch.randn(2, 5, requires_grad=True)
    out = torch.tanh(torch.randn(4, 2) @ w).mean()
    nodes, edges, labels = autograd_graph(out)
    assert labels["n0"] == type(out.grad_fn).__name__
    assert "leaf (2, 5)" in labels.values()
    assert len(edges) == len(nodes) - 1                # a chain: Mean -> Tanh -> Mm -> AccumulateGrad


def test_autograd_graph_bad_inputs():
    with pytest.raises(ValueError, match="got a leaf tensor"):
        autograd_graph(torch.randn(3, requires_grad=True))
    with pytest.raises(ValueError, match="got a leaf tensor"):
        autograd_graph(torch.randn(3) * 2)             # made without grad: no grad_fn
    with pytest.raises(ValueError, match="got float"):
        autograd_graph(1.0)


_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10),
        torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=2e-3, rtol=2e-3)}


@pytest.mark.parametrize("dtype", list(_TOL))
@pytest.mark.parametrize("N,V", [(1, 1), (1, 7), (5, 3), (33, 257), (17, 2)])
def test_softmax_cross_entropy_matches_pytorch(N, V, dtype):
    torch.manual_seed(N * 1000 + V)
    logits = (3 * torch.randn(N, V, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, V, (N,))
    z1 = logits.clone().requires_grad_()
    z2 = logits.double().requires_grad_()              # reference in float64
    loss1 = softmax_cross_entropy(z1, targets)
    loss2 = F.cross_entropy(z2, targets)
    (2.5 * loss1).backward()                           # a non-unit upstream gradient
    (2.5 * loss2).backward()
    assert loss1.dtype == dtype and z1.grad.dtype == dtype
    assert_close(loss1.double(), loss2, **_TOL[dtype])
    assert_close(z1.grad.double(), z2.grad, **_TOL[dtype])


def test_softmax_cross_entropy_non_contiguous_and_extreme():
    logits = (1000 * torch.randn(6, 9, dtype=torch.float64)).t()   # (9, 6), non-contiguous, huge
    targets = torch.arange(9) % 6
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    softmax_cross_entropy(z1, targets).backward()
    F.cross_entropy(z2, targets).backward()
    assert torch.isfinite(z1.grad).all()
    assert_close(z1.grad, z2.grad)


@pytest.mark.parametrize("N,V", [(1, 2), (4, 7), (3, 1)])
def test_softmax_cross_entropy_gradcheck(N, V):
    z = torch.randn(N, V, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (N,))
    assert torch.autograd.gradcheck(softmax_cross_entropy, (z, y))
    assert torch.autograd.gradcheck(SoftmaxCrossEntropy.apply, (z, y))


@pytest.mark.parametrize("logits,targets,match", [
    (torch.randn(5), torch.tensor([0]), r"logits must be a floating tensor of shape \(N, V\), got shape \(5,\)"),
    (torch.randn(2, 3, 4), torch.tensor([0, 1]), r"got shape \(2, 3, 4\)"),
    (torch.ones(2, 3, dtype=torch.int64), torch.tensor([0, 1]), "dtype torch.int64"),
    ([[0.0, 1.0]], torch.tensor([0]), "got list"),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.int64), r"N >= 1 rows and V >= 1 classes, got \(0, 3\)"),
    (torch.randn(2, 0), torch.tensor([0, 0]), r"got \(2, 0\)"),
    (torch.randn(2, 3), torch.tensor([0.0, 1.0]), r"int64 tensor of shape \(N,\) = \(2,\), got shape \(2,\) and dtype torch.float32"),
    (torch.randn(2, 3), torch.tensor([0, 1], dtype=torch.int32), "dtype torch.int32"),
    (torch.randn(2, 3), torch.tensor([0, 1, 2]), r"got shape \(3,\)"),
    (torch.randn(2, 3), torch.tensor([[0, 1]]), r"got shape \(1, 2\)"),
    (torch.randn(2, 3), [0, 1], "got list"),
    (torch.randn(2, 3), torch.tensor([0, 3]), r"targets must lie in \[0, V\) = \[0, 3\), got values from 0 to 3"),
    (torch.randn(2, 3), torch.tensor([-1, 2]), r"got values from -1 to 2"),
    (torch.randn(2, 3), torch.tensor([-100, 2]), r"\[0, 3\)"),
])
def test_softmax_cross_entropy_bad_inputs(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        softmax_cross_entropy(logits, targets)
