"""Helpers for tests of the run store: a spec's job and key in a store folder, and a run saved there by hand."""
import store


def job_of(spec, folder):
    """(spec, key, code) of `spec` in the run store `folder`, as train_or_load keys it."""
    return store.keyed([spec], folder)[0]


def key_of(spec, folder):
    return job_of(spec, folder)[1]


def save_run(folder, spec, model, history, trained_on):
    """Save `model` and `history` as the run `spec` in `folder`, as train_and_store does after training."""
    return store.save_entry(folder, job_of(spec, folder), {"history": history}, trained_on=trained_on,
                            seconds=sum(history["seconds"]), model=model)


def load_run(folder, spec, device="cpu"):
    return store.load_entry(folder, job_of(spec, folder), device)
