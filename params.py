"""The notebook's parameters: read from the environment (from_env) and checked against one table of rules
(check_parameters), so that a wrong value stops the notebook with a message before any data loads."""
import math
import os
import tempfile
from pathlib import Path

from model import Net
from utils import ShortError


class ParameterError(ShortError, ValueError):
    """A notebook parameter with a value it cannot take; the message names the parameter, the value and the rule."""


FROM_ENVIRONMENT = {}  # the parameters from_env took from the environment, so that a run can say it was not the default
TRUTH = {"0": False, "false": False, "1": True, "true": True}  # what a truth value may be written as (any case)


def from_env(name, default):
    """The parameter `name` from the environment when set there, parsed like `default` (int, float, bool, str, or a
    list of ints or of floats written "2,4,8"), else `default`; a value that does not parse is an error naming the
    parameter."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        if isinstance(default, bool):
            value = TRUTH[text.lower()]
        elif isinstance(default, list):
            value = [type(default[0])(part) for part in text.split(",")]
        else:
            value = type(default)(text)  # a str parameter takes any text
    except (KeyError, ValueError):
        kind = ({bool: "0, 1, true or false", int: "a whole number", float: "a number"}[type(default)]
                if not isinstance(default, list) else f"comma-separated {'whole ' * isinstance(default[0], int)}numbers")
        raise ParameterError(f"environment variable {name}={text!r} is not {kind}") from None
    FROM_ENVIRONMENT[name] = value
    return value


def _whole(low, high=math.inf):
    def ok(value):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return ok, f"a whole number from {low}" + ("" if high == math.inf else f" to {high:,}")


_POSITIVE = (lambda v: isinstance(v, (int, float)) and 0 < v < math.inf, "a number above 0")


PARAMETER_RULES = {  # name: (check, what is allowed)
    "EPOCHS": _whole(1), "SEEDS": _whole(1), "BATCH_SIZE": _whole(1, 60_000),
    "MAX_LR": _POSITIVE,
    "L1_LAMBDA": (lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf, "a number from 0"),
    "L2_LAMBDA": (lambda v: isinstance(v, (int, float)) and 0 <= v < math.inf, "a number from 0"),
    "GN_GROUPS": (lambda v: v in (1, 2, 4, 8) and not isinstance(v, bool),
                  f"1, 2, 4 or 8 (a group count must divide every layer width {Net.WIDTHS})"),
    "DROPOUT": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "SWEEP_MICRO_BATCHES": (lambda v: isinstance(v, list) and len(v) > 0 and all(_whole(1)[0](b) for b in v),
                            "a non-empty list of whole numbers from 1 to BATCH_SIZE"),
    "SWEEP_TRAIN_SIZE": _whole(1, 60_000), "SWEEP_EPOCHS": _whole(1), "SWEEP_SEEDS": _whole(1),
    "LR_TEST_SEEDS": _whole(1), "LR_TEST_TRAIN_SIZE": _whole(1, 60_000),
    "LR_TEST_MIN": _POSITIVE, "LR_TEST_MAX": _POSITIVE,
    "GROUP_COUNTS": (lambda v: isinstance(v, list) and len(v) > 0 and all(g in (1, 2, 4, 8) for g in v),
                     f"a non-empty list of 1, 2, 4 and 8 (a group count must divide every layer width {Net.WIDTHS})"),
    "GROUP_EPOCHS": _whole(1), "GROUP_SEEDS": _whole(1), "GROUP_TRAIN_SIZE": _whole(1, 60_000),
    "CONTROL_LRS": (lambda v: isinstance(v, list) and len(v) > 0 and all(_POSITIVE[0](lr) for lr in v),
                    "a non-empty list of numbers above 0"),
    "CONTROL_LR_EPOCHS": _whole(1), "VALIDATION_SIZE": _whole(1, 59_999), "CONTROL_SEEDS": _whole(1),
    "BUDGET_EPOCHS": (lambda v: isinstance(v, list) and len(v) > 0 and all(_whole(1)[0](e) for e in v),
                      "a non-empty list of whole numbers from 1"),
    "BUDGET_SEEDS": _whole(1), "BUDGET_TRAIN_SIZE": _whole(1, 60_000), "WORKERS": _whole(0),
    "RETRAIN": (lambda v: isinstance(v, bool), "True or False"), "VERBOSE": (lambda v: isinstance(v, bool), "True or False"),
    "RUNS_DIR": (lambda v: isinstance(v, str) and v != "", "a folder name"),
    "DATA_DIR": (lambda v: isinstance(v, str) and v != "", "a folder name"),
    "OUTPUT_DIR": (lambda v: isinstance(v, str) and v != "", "a folder name"),
}


def check_parameters(params):
    """Stop with a ValueError naming the parameter, its value and what is allowed, for any wrong notebook parameter.

    `params` maps names to values (the notebook passes its upper-case globals); all of PARAMETER_RULES must be there.
    """
    missing = [name for name in PARAMETER_RULES if name not in params]
    if missing:
        raise ParameterError(f"parameters missing: {', '.join(missing)}")
    for name, (ok, allowed) in PARAMETER_RULES.items():
        if not ok(params[name]):
            raise ParameterError(f"parameter {name} = {params[name]!r} is not allowed: it must be {allowed}")
        if isinstance(params[name], list):
            repeated = sorted({v for i, v in enumerate(params[name]) if v in params[name][:i]})
            if repeated:
                raise ParameterError(f"parameter {name} = {params[name]!r} is not allowed: it repeats "
                                 f"{', '.join(map(str, repeated))}, and each repeat would count the same runs again")
    if max(params["SWEEP_MICRO_BATCHES"]) > params["BATCH_SIZE"]:
        raise ParameterError(f"parameter SWEEP_MICRO_BATCHES = {params['SWEEP_MICRO_BATCHES']!r} is not allowed: a "
                         f"micro-batch cannot exceed BATCH_SIZE = {params['BATCH_SIZE']}")
    for name in ("SWEEP_TRAIN_SIZE", "LR_TEST_TRAIN_SIZE", "GROUP_TRAIN_SIZE", "BUDGET_TRAIN_SIZE"):
        if params[name] < params["BATCH_SIZE"]:
            raise ParameterError(f"parameter {name} = {params[name]!r} is not allowed: it must hold at least one batch "
                             f"of BATCH_SIZE = {params['BATCH_SIZE']} images")
    if 60_000 - params["VALIDATION_SIZE"] < params["BATCH_SIZE"]:
        raise ParameterError(f"parameter VALIDATION_SIZE = {params['VALIDATION_SIZE']!r} is not allowed: the training "
                             f"images left must hold at least one batch of BATCH_SIZE = {params['BATCH_SIZE']}")
    if params["LR_TEST_MIN"] >= params["LR_TEST_MAX"]:
        raise ParameterError(f"parameter LR_TEST_MIN = {params['LR_TEST_MIN']!r} is not allowed: the range test raises "
                         f"the learning rate, so it must be below LR_TEST_MAX = {params['LR_TEST_MAX']!r}")
    for name in ("RUNS_DIR", "OUTPUT_DIR"):
        check_writable_folder(name, params[name])


def check_writable_folder(name, path):
    """Stop with a ValueError naming the parameter, the path and the problem unless `path` is a folder this process
    can write into, or can be created as one: checked before the data loads, not after the first run has trained."""
    path = Path(path)
    existing = next(p for p in [path, *path.parents] if p.exists())
    refused = f"parameter {name} = {str(path)!r} is not allowed: {existing}"
    if not existing.is_dir():
        raise ParameterError(f"{refused} is a file, not a folder")
    if not _can_write_into(existing):
        raise ParameterError(f"{refused} is not writable" + ("" if existing == path else
                                                              f", so {path} cannot be created there"))


def _can_write_into(folder):
    """Whether a file can be created in `folder`: tried, since permission bits alone miss read-only mounts and root."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
