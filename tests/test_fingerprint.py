"""A run's key follows what the code computes: a refactor that keeps every number keeps every stored run, an edit
that changes a configuration's numbers retrains that configuration's runs and no others, and unchanged code computes
no fingerprint at all."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fingerprint
import store
import utils

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "runs"


def committed(**want):
    """The committed entry whose spec has the fields `want`."""
    for path in sorted(COMMITTED.glob("*.json")):
        entry = json.loads(path.read_text())
        if all(entry["spec"].get(k) == v for k, v in want.items()):
            return entry
    raise LookupError(want)


KINDS = {  # one committed entry of each kind of configuration
    "BN + L1": committed(name="BN + L1", seed=1), "LN": committed(name="LN", seed=1, epochs=20),
    "GN": committed(name="GN", seed=1, epochs=20), "BN + L2": committed(name="BN + L2", seed=1),
    "BN, micro-batch 16": committed(name="BN", seed=1, micro_batch_size=16),
    "range test, BN": committed(kind="lr_range_test", name="BN", seed=1),
}


def keys_in_a_copy(tmp_path, edits):
    """{kind: key} of KINDS as a copy of the project, with `edits` {file: (old, new)} made, keys them in a fresh
    process, against the committed registry without its cache (so every fingerprint is computed)."""
    project = tmp_path / "project"
    project.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, project)
    for name, (old, new) in edits.items():
        text = (project / name).read_text()
        assert old in text, f"{name} no longer holds {old!r}: update this test's edit"
        (project / name).write_text(text.replace(old, new))
    folder = tmp_path / "store"
    folder.mkdir()
    registry = json.loads((COMMITTED / fingerprint.REGISTRY).read_text())
    (folder / fingerprint.REGISTRY).write_text(json.dumps(dict(registry, cache={})))
    specs = [entry["spec"] for entry in KINDS.values()]
    script = (f"import json, sys, store; specs = json.loads(sys.stdin.read()); "
              f"print(json.dumps([key for _, key, _ in store.keyed(specs, {str(folder)!r}, {str(ROOT / 'data')!r})]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=project, input=json.dumps(specs), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(zip(KINDS, json.loads(done.stdout.splitlines()[-1])))


STORED = {kind: entry["key"] for kind, entry in KINDS.items()}
REFACTOR = {  # renames, a reworded docstring, a helper inlined: nothing any run computes changes
    "utils.py": ("loss_sums", "sums_of_losses"),  # every occurrence
    "model.py": ("return torch.cat(outputs) if len(outputs) > 1 else outputs[0]", "return torch.cat(outputs)"),
}
NUMERIC_EDITS = {  # an edit that changes numbers: the kinds whose runs it must send back to training
    "LayerNorm's eps": ({"model.py": ("return nn.GroupNorm(copies, copies * channels)",
                                      "return nn.GroupNorm(copies, copies * channels, eps=1e-3)")}, {"LN"}),
    "the L1 penalty": ({"utils.py": ("return sum(w.abs().sum() for w", "return sum(w.pow(2).sum() for w")},
                       {"BN + L1"}),
    "ghost batches' running averages": ({"model.py": ("self.running_mean.mul_((1 - a) ** k)",
                                                      "self.running_mean.mul_((1 - a) ** (k + 1))")},
                                        {"BN, micro-batch 16"}),
    "the augmentation": ({"utils.py": ("max_degrees=7.0", "max_degrees=8.0")}, set(KINDS)),
    "MNIST's scaling": ({"utils.py": ("dataset.data.float().div(255)", "dataset.data.float().div(255).sqrt()")},
                        set(KINDS)),  # not affine: a scale or shift of the input is undone by BatchNorm after a conv
    "the evaluation": ({"utils.py": ("def misclassified(log_probs, labels, count=10):",
                                     "def misclassified(log_probs, labels, count=9):")},
                       set(KINDS) - {"range test, BN"}),
}


@pytest.mark.slow
def test_a_refactor_that_keeps_every_number_keeps_every_stored_run(tmp_path):
    assert keys_in_a_copy(tmp_path, REFACTOR) == STORED


@pytest.mark.slow
@pytest.mark.parametrize("edit", sorted(NUMERIC_EDITS))
def test_an_edit_that_changes_numbers_changes_exactly_the_keys_of_the_runs_it_changes(tmp_path, edit):
    edits, changed = NUMERIC_EDITS[edit]
    keys = keys_in_a_copy(tmp_path, edits)
    assert {kind for kind in KINDS if keys[kind] != STORED[kind]} == changed


def test_another_processor_s_last_bits_match_and_a_real_change_does_not():
    """A fingerprint whose every number moved by 1e-6 (a processor that rounds float32 otherwise; over two steps
    these differ by about 1e-7) still matches; one number moved by 1e-3 does not."""
    values = json.loads((COMMITTED / fingerprint.REGISTRY).read_text())["fingerprints"][0]["values"]
    nudged = {part: [v * (1 + 1e-6) for v in numbers] for part, numbers in values.items()}
    assert fingerprint.matches(values, nudged)
    moved = dict(values, history=[values["history"][0] * 1.001, *values["history"][1:]])
    assert not fingerprint.matches(values, moved)
    assert not fingerprint.matches(values, dict(values, trace=values["trace"][:-1]))


def test_a_new_configuration_is_registered_once_and_unchanged_code_computes_no_fingerprint(tmp_path, monkeypatch,
                                                                                           tiny_store):
    spec = store.run_spec({"name": "GN", "model": {"norm": "gn"}}, seed=1, epochs=1, batch_size=64, train_size=512)
    [(_, key, code)] = store.keyed([spec], tmp_path)
    registry = json.loads((tmp_path / fingerprint.REGISTRY).read_text())
    assert [f["name"] for f in registry["fingerprints"]] == [code]
    assert registry["cache"] == {fingerprint.SOURCE_VERSION: {json.dumps(fingerprint.configuration(spec),
                                                                         sort_keys=True): code}}
    monkeypatch.setattr(fingerprint, "compute", lambda *args: pytest.fail("a fingerprint was computed"))
    assert store.keyed([dict(spec, seed=2)], tmp_path)[0][1:] == (store.run_key(dict(spec, seed=2), code), code)
    monkeypatch.undo()
    (tmp_path / fingerprint.REGISTRY).write_text(json.dumps(dict(registry, cache={})))  # edited code: computed again,
    assert store.keyed([spec], tmp_path)[0][1] == key  # and found in the registry under the same name


def test_a_gpu_run_is_keyed_by_the_settings_only_a_gpu_reads():
    spec = store.run_spec({"name": "GN", "model": {"norm": "gn"}}, seed=1, epochs=1, device="cuda")
    settings = dict(utils.GPU_SETTINGS)
    key = store.run_key(spec, "code")
    utils.GPU_SETTINGS["cudnn.allow_tf32"] = True
    try:
        assert store.run_key(spec, "code") != key
    finally:
        utils.GPU_SETTINGS.update(settings)
