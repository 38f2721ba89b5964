"""fit against a plain torch loop from the same state, over 3 epochs of 8 steps: fit's
shuffled orders, a last batch of 2 rows (the loss is its mean), validation in eval mode
after each epoch, per-epoch schedulers (StepLR, MultiStepLR, ReduceLROnPlateau), SGD with
Nesterov and weight decay, Adam with L2 decay, AdamW, cross-entropy and MSE (labels and
float targets). float64 on every CPU backend; float32 on the cpu backend, through its
compiled step. tests/torch_parity.py checks one step's gradients and Adam, and
tests/test_layers.py the unshuffled loop with batchnorm and dropout."""
import numpy as np
import pytest
from conftest import TOL, assert_close
from torch_parity import torch_sequential_like

import mlpfast as mf
from mlpfast.schedules import make_schedule

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

CPU_BACKENDS = [name for name in mf.backends() if mf.get_backend(name).device == "cpu"]
N, FEATURES, CLASSES, BATCH, EPOCHS, SEED = 51, 3, 4, 7, 3, 5


def plateau(**kwargs):
    return dict(patience=0, factor=0.5, threshold=0.5, **kwargs)


# name: (layers, optimizer, its kwargs, loss, targets, our schedule, torch's)
CASES = {
    "batchnorm, gelu tanh; nesterov SGD, weight decay; step lr; cross-entropy": (
        lambda kw: [mf.Linear(FEATURES, 9, seed=0, **kw), mf.BatchNorm1d(9, momentum=None, **kw),
                    mf.GELU("tanh", **kw), mf.Linear(9, CLASSES, seed=1, **kw)],
        "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), "ce", "labels",
        lambda: make_schedule("step", step_size=1, gamma=0.5),
        lambda opt: lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)),
    "no bias, leaky relu 0.2; Adam, L2 decay; multistep lr; MSE on labels": (
        lambda kw: [mf.Linear(FEATURES, 9, bias=False, seed=0, **kw), mf.LeakyReLU(0.2, **kw),
                    mf.Linear(9, CLASSES, bias=False, seed=1, **kw)],
        "Adam", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=1e-2), "mse", "labels",
        lambda: make_schedule("multistep", milestones=[1, 2], gamma=0.3),
        lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[1, 2], gamma=0.3)),
    "tanh, sigmoid; AdamW; plateau on val_loss; MSE on float targets": (
        lambda kw: [mf.Linear(FEATURES, 9, seed=0, **kw), mf.Tanh(**kw),
                    mf.Linear(9, 6, seed=1, **kw), mf.Sigmoid(**kw),
                    mf.Linear(6, CLASSES, seed=2, **kw)],
        "AdamW", dict(lr=0.02, weight_decay=0.1), "mse", "floats",
        lambda: make_schedule("plateau", **plateau()),
        lambda opt: lr_scheduler.ReduceLROnPlateau(opt, **plateau())),
}


def data(dtype, targets):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N + 13, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, N + 13) if targets == "labels" else \
        rng.standard_normal((N + 13, CLASSES)).astype(dtype)
    return (x[:N], y[:N]), (x[N:], y[N:])


def torch_loss(kind, out, y):
    if kind == "ce":
        return torch.nn.functional.cross_entropy(out, y)
    if y.dtype == torch.int64:
        y = torch.nn.functional.one_hot(y, CLASSES).to(out.dtype)
    return torch.nn.functional.mse_loss(out, y)


def torch_fit(reference, optimizer, scheduler, loss, train, val):
    """fit's loop in torch: per epoch the order fit draws from SEED, batches of BATCH
    rows, then validation (eval mode), then the scheduler's epoch step."""
    rng = np.random.default_rng(SEED)
    x, y = (torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a)
            for a in train)
    vx, vy = (torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a)
              for a in val)
    history = {"loss": [], "val_loss": [], "train_accuracy": [], "val_accuracy": []}
    labels = y.dtype == torch.int64
    for _ in range(EPOCHS):
        order, total, correct = rng.permutation(N), 0.0, 0
        reference.train()
        for lo in range(0, N, BATCH):
            rows = torch.from_numpy(order[lo:lo + BATCH])
            optimizer.zero_grad()
            out = reference(x[rows])
            batch_loss = torch_loss(loss, out, y[rows])
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item() * len(rows)
            correct += int((out.argmax(dim=1) == y[rows]).sum()) if labels else 0
        history["loss"].append(total / N)
        history["train_accuracy"].append(correct / N if labels else None)
        reference.eval()
        with torch.no_grad():
            out = reference(vx)
            history["val_loss"].append(torch_loss(loss, out, vy).item())
            history["val_accuracy"].append(
                int((out.argmax(dim=1) == vy).sum()) / len(vy) if labels else None)
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(history["val_loss"][-1])
        else:
            scheduler.step()
    return history


@pytest.mark.parametrize("backend,dtype", [(b, np.float64) for b in CPU_BACKENDS]
                         + [("cpu", np.float32)] * ("cpu" in CPU_BACKENDS))
@pytest.mark.parametrize("case", CASES)
def test_fit_follows_a_torch_loop(backend, dtype, case):
    layers, opt_name, opt_kwargs, loss, targets, schedule, torch_schedule = CASES[case]
    model = mf.Sequential(*layers(dict(backend=backend, dtype=dtype)))
    reference = torch_sequential_like(torch, model, np.float64)
    optimizer = getattr(mf.optim, opt_name)(model.parameters(), **opt_kwargs)
    torch_optimizer = getattr(torch.optim, opt_name)(reference.parameters(), **opt_kwargs)
    train, val = data(dtype, targets)
    loss_fn = mf.CrossEntropyLoss() if loss == "ce" else mf.MSELoss()
    if dtype == np.float32:         # the compiled step, not the layer-by-layer fallback
        step = model.backend.make_step(model.plan(), loss_fn, optimizer,
                                       mf.datasets.as_dataset(model, *train), BATCH)
        assert type(step).__name__ == "CompiledStep"
    history = mf.fit(model, optimizer, loss_fn, *train, epochs=EPOCHS, batch_size=BATCH,
                     seed=SEED, val=val, lr_schedule=schedule(), progress=False)
    expected = torch_fit(reference, torch_optimizer, torch_schedule(torch_optimizer), loss,
                         train, val)
    tol = TOL[np.float64] if dtype == np.float64 else (2e-5, 1e-3)
    what = f"{backend} {np.dtype(dtype).name} {case}"
    assert_close(history["loss"], expected["loss"], tol=tol, what=f"{what}: epoch losses")
    assert_close(history["val_loss"], expected["val_loss"], tol=tol, what=f"{what}: val losses")
    # the rows whose argmax is the label, counted from each step's forward pass (None for
    # float targets)
    assert history["train_accuracy"] == expected["train_accuracy"], what
    assert history["val_accuracy"] == expected["val_accuracy"], what
    want = reference.state_dict()
    for name, value in model.state_dict().items():
        assert_close(value, want[name].numpy(), tol=tol, what=f"{what}: {name}")
    params = list(reference.parameters())
    for name, value in optimizer.state_dict()["state"].items():
        flat = np.concatenate([torch_optimizer.state[p][name].numpy().ravel() for p in params])
        assert_close(value, flat, tol=tol, what=f"{what}: optimizer {name}")
    assert optimizer.step_count == EPOCHS * -(-N // BATCH)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_plateau_schedule_object_starts_afresh_in_each_fit(backend):
    """One plateau schedule object given to two runs: the second starts at the full rate
    with no best value, as the first did (it began at the rate the first left, 0.25 lr,
    and compared its losses with the first run's best)."""
    (x, y), val = data(np.float64, "labels")
    schedule = make_schedule("plateau", **plateau())
    runs = []
    for _ in range(2):
        model = mf.MLP([FEATURES, 9, CLASSES], backend=backend, dtype=np.float64, seed=0)
        optimizer = mf.optim.SGD(model.parameters(), lr=0.1)
        history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), x, y, epochs=EPOCHS,
                         batch_size=BATCH, seed=SEED, val=val, lr_schedule=schedule,
                         progress=False)
        runs.append((history["loss"], model.state_dict()))
    assert schedule.scale < 1                 # the run did lower the rate
    assert runs[1][0] == runs[0][0]
    for name, value in runs[1][1].items():
        assert np.array_equal(value, runs[0][1][name]), name
