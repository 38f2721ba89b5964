"""Learning-rate schedules against torch.optim.lr_scheduler: the same lr at every step."""
import functools
import json
import math

import numpy as np
import pytest

from mlpfast import schedules
from mlpfast.schedules import make_schedule

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

BASE_LR, EPOCHS, STEPS_PER_EPOCH = 0.05, 9, 7
TOTAL = EPOCHS * STEPS_PER_EPOCH


def torch_lrs(make_scheduler, per_step):
    """torch's lr at each of the TOTAL steps, its scheduler stepped per batch or per epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_step:
                scheduler.step()
        if not per_step:
            scheduler.step()
    return np.array(lrs)


def our_lrs(schedule):
    schedule.start(TOTAL, STEPS_PER_EPOCH, BASE_LR)
    return np.array([BASE_LR * schedule.factor(t) for t in range(TOTAL)])


def warmup_then_cosine(opt, warmup, start, eta_min_factor):
    return lr_scheduler.SequentialLR(opt, [
        lr_scheduler.LinearLR(opt, start_factor=start, total_iters=warmup),
        lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL - warmup,
                                       eta_min=eta_min_factor * BASE_LR)],
        milestones=[warmup])


CASES = {
    "constant": (make_schedule("constant"), lambda o: lr_scheduler.ConstantLR(o, factor=1.0), True),
    "step": (make_schedule("step", step_size=2, gamma=0.5),
             lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5), False),
    "multistep": (make_schedule("multistep", milestones=[1, 4, 5], gamma=0.3),
                  lambda o: lr_scheduler.MultiStepLR(o, milestones=[1, 4, 5], gamma=0.3), False),
    "exponential": (make_schedule("exponential", gamma=0.8),
                    lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8), False),
    "cosine": (make_schedule("cosine"),
               lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL), True),
    "cosine with warm-up": (
        make_schedule("cosine", warmup_steps=10, warmup_start_factor=0.1, min_factor=0.02),
        lambda o: warmup_then_cosine(o, 10, 0.1, 0.02), True),
    "onecycle": (make_schedule("onecycle"),
                 lambda o: lr_scheduler.OneCycleLR(o, max_lr=BASE_LR, total_steps=TOTAL,
                                                   cycle_momentum=False), True),
    "onecycle, peak 4 lr": (
        make_schedule("onecycle", max_factor=4.0, pct_start=0.25, div_factor=10,
                      final_div_factor=100),
        lambda o: lr_scheduler.OneCycleLR(o, max_lr=4 * BASE_LR, total_steps=TOTAL, pct_start=0.25,
                                          div_factor=10, final_div_factor=100,
                                          cycle_momentum=False), True),
}


@pytest.mark.parametrize("case", CASES)
def test_schedule_gives_torch_lrs(case):
    schedule, make_scheduler, per_step = CASES[case]
    expected = torch_lrs(make_scheduler, per_step)
    np.testing.assert_allclose(our_lrs(schedule), expected, rtol=1e-12, atol=1e-15)


def test_cosine_without_warm_up_is_the_previous_default():
    schedule = make_schedule("cosine").start(100, 10, 1.0)
    assert [schedule.factor(t) for t in (0, 50, 99)] == \
        [1.0, 0.5 * (1 + math.cos(math.pi / 2)), 0.5 * (1 + math.cos(math.pi * 0.99))]


# a validation loss that improves, stalls, improves a little, then stalls for good
PLATEAU_VALUES = [1.0, 0.8, 0.79995, 0.81, 0.85, 0.7, 0.7, 0.72, 0.69, 0.71, 0.7, 0.71, 0.75,
                  0.73, 0.74, 0.72, 0.75, 0.76, 0.74, 0.77]
PLATEAU_CASES = [dict(patience=5), dict(patience=1), dict(patience=2, cooldown=2, factor=0.5),
                 dict(patience=0, min_lr=0.001, factor=0.2),
                 dict(mode="max", patience=1, threshold=0.01), dict(threshold_mode="abs",
                                                                    threshold=0.02, patience=1),
                 dict(patience=0, factor=0.5, eps=0.01),
                 dict(mode="max", threshold_mode="abs", threshold=0.02, patience=1),
                 # eps equal to the second cut (0.025 -> 0.0125): torch keeps 0.025, as it
                 # lowers the lr only when old - new > eps
                 dict(patience=0, factor=0.5, eps=BASE_LR / 4)]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES)
def test_plateau_gives_torch_lrs(kwargs):
    values = [-v for v in PLATEAU_VALUES] if kwargs.get("mode") == "max" else PLATEAU_VALUES
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    schedule = make_schedule("plateau", **kwargs).start(len(values), 1, BASE_LR)
    ours, theirs = [], []
    for epoch, value in enumerate(values):
        ours.append(BASE_LR * schedule.factor(epoch))
        theirs.append(opt.param_groups[0]["lr"])
        scheduler.step(value)
        schedule.end_epoch(value)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert len(set(theirs)) > 1                     # the case does reduce the lr


@pytest.mark.parametrize("name,kwargs", [("cosine", dict(warmup_steps=5)),
                                         ("onecycle", {}), ("multistep", dict(milestones=[2])),
                                         ("plateau", dict(patience=1, cooldown=1, factor=0.5))])
def test_resume_from_json_state_continues_bit_for_bit(name, kwargs):
    whole = make_schedule(name, **kwargs).start(len(PLATEAU_VALUES), 1, BASE_LR)
    expected = []
    for epoch, value in enumerate(PLATEAU_VALUES):
        expected.append(whole.factor(epoch))
        whole.end_epoch(value)
    first = make_schedule(name, **kwargs).start(len(PLATEAU_VALUES), 1, BASE_LR)
    got = []
    for epoch, value in enumerate(PLATEAU_VALUES[:11]):
        got.append(first.factor(epoch))
        first.end_epoch(value)
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = make_schedule(name, **kwargs).start(len(PLATEAU_VALUES), 1, BASE_LR)
    resumed.load_state_dict(saved)
    for epoch, value in enumerate(PLATEAU_VALUES[11:], start=11):
        got.append(resumed.factor(epoch))
        resumed.end_epoch(value)
    assert got == expected
    if name == "plateau":
        assert len(set(expected)) > 2


def decay(t, total, power=1.0):
    return (1 - t / total) ** power


class Halving:
    def __call__(self, t, total):
        return 0.5 if t > total // 2 else 1.0


def test_a_function_schedule_is_named_alike_in_every_process():
    """The name a checkpoint stores, for a function, a functools.partial and a callable
    object: built twice (as two processes would), equal and free of memory addresses."""
    for make in (lambda: decay, lambda: functools.partial(decay, power=2.0),
                 lambda: functools.partial(decay, 3), Halving):
        first, second = (make_schedule(make()).start(10, 5, 0.1) for _ in range(2))
        assert first.config() == second.config() and "0x" not in str(first.config())
        second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert make_schedule(functools.partial(decay, power=2.0)).config() == \
        {"function": "partial(decay, power=2.0)"}
    assert make_schedule(Halving()).config() == {"function": "Halving"}


def test_make_schedule_takes_objects_functions_and_none():
    cosine = schedules.CosineSchedule(warmup_steps=3)
    assert make_schedule(cosine) is cosine
    assert isinstance(make_schedule(None), schedules.ConstantSchedule)
    halved = make_schedule(lambda step, total: 0.5 ** step).start(4, 2, 0.1)
    assert [halved.factor(t) for t in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert make_schedule("plateau", monitor="val_accuracy", mode="max").monitor == "val_accuracy"


@pytest.mark.parametrize("call,error,match", [
    (lambda: make_schedule("linear"), ValueError, "lr schedule must be one of"),
    (lambda: make_schedule("step"), ValueError, "lr_schedule 'step' needs step_size"),
    (lambda: make_schedule("multistep", gamma=0.5), ValueError,
     "lr_schedule 'multistep' needs milestones"),
    (lambda: make_schedule("exponential"), ValueError, "lr_schedule 'exponential' needs gamma"),
    (lambda: make_schedule("step", step_size=2, size=3), TypeError, "schedule 'step'"),
    (lambda: make_schedule("step", step_size=0), ValueError, "step_size must be a positive"),
    (lambda: make_schedule("multistep", milestones=[3, 2]), ValueError, "milestones must increase"),
    (lambda: make_schedule("exponential", gamma=-1), ValueError, "gamma must lie in"),
    (lambda: make_schedule("onecycle", pct_start=1.0), ValueError, "pct_start"),
    # a rise of one step, step 0: a ZeroDivisionError from factor(0) before
    (lambda: make_schedule("onecycle", pct_start=0.1).start(10, 10, 0.1), ValueError,
     r"pct_start \(0.1\) times the run's 10 steps must not be 1"),
    (lambda: make_schedule("plateau", mode="up"), ValueError, "mode must be one of"),
    (lambda: make_schedule("cosine", warmup_steps=10).start(10, 5, 0.1), ValueError,
     "warmup_steps"),
    (lambda: make_schedule("cosine").factor(0), RuntimeError, "start"),
    (lambda: make_schedule(lambda t, total: -0.5).start(4, 2, 0.1).factor(1), ValueError,
     r"lr_schedule .*<lambda> returned -0.5 at step 1: the factor must be a finite number"),
    (lambda: make_schedule(lambda t, total: float("nan")).start(4, 2, 0.1).factor(0),
     ValueError, "returned nan at step 0"),
    (lambda: make_schedule("plateau").start(5, 1, 0.1).end_epoch(float("nan")), ValueError,
     "monitored value"),
    (lambda: make_schedule(schedules.CosineSchedule(), warmup_steps=2), ValueError,
     "keyword arguments"),
    # torch's MultiStepLR would count a repeated milestone twice; here it is refused
    (lambda: make_schedule("multistep", milestones=[2, 2]), ValueError,
     r"milestones must increase, got \[2, 2\]"),
    (lambda: make_schedule("step", step_size=1, gamma=0), ValueError,
     r"gamma must lie in \(0.0, None\], got 0.0"),
    (lambda: make_schedule("cosine").start(0, 5, 0.1), ValueError,
     "total_steps must be a positive integer, got 0"),
    (lambda: make_schedule("cosine").start(10, 0, 0.1), ValueError,
     "steps_per_epoch must be a positive integer, got 0"),
    (lambda: make_schedule("cosine").load_state_dict(make_schedule("onecycle").state_dict()),
     ValueError, "'cosine' schedule"),
    (lambda: make_schedule("step", step_size=2).load_state_dict(
        make_schedule("step", step_size=3).state_dict()), ValueError, "holds the step schedule"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_state_changes_nothing():
    schedule = make_schedule("plateau", patience=0).start(5, 1, 0.1)
    schedule.end_epoch(1.0)
    schedule.end_epoch(2.0)
    before = schedule.state_dict()
    bad = json.loads(json.dumps(before))
    bad["state"]["num_bad_epochs"] = -1
    with pytest.raises(ValueError, match="num_bad_epochs"):
        schedule.load_state_dict(bad)
    assert schedule.state_dict() == before


def test_a_plateau_schedule_started_again_forgets_its_last_run():
    """start() begins a run at the full rate with no best value: the same object run twice
    gives torch's lrs (a fresh ReduceLROnPlateau) both times."""
    kwargs = dict(patience=1, cooldown=1, factor=0.5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    theirs = []
    for value in PLATEAU_VALUES:
        theirs.append(opt.param_groups[0]["lr"])
        scheduler.step(value)
    schedule = make_schedule("plateau", **kwargs)
    for _ in range(2):
        schedule.start(len(PLATEAU_VALUES), 1, BASE_LR)
        ours = []
        for epoch, value in enumerate(PLATEAU_VALUES):
            ours.append(BASE_LR * schedule.factor(epoch))
            schedule.end_epoch(value)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert min(theirs) < BASE_LR / 2
