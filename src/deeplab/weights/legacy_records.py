"""Checkpoint records of an earlier config layout, read as the current configs write them.

The CRF-RNN layer is a config group of its own, `crf_rnn=on` (conf/crf_rnn/on.yaml), with its
training knobs in `optim.crf_rnn_lr_mult` and `loss.crf_rnn_aux_weight`. Checkpoints of the
earlier layout configured it inside the model config (`model.crf_rnn`, `model.crf_rnn_iterations`,
`model.crf_rnn_test_iterations`, `model.crf_rnn_aux_loss_weight`, `model.crf_rnn_lr_mult`), and
record those keys in their resolved model config and in their overrides. This module is the one
place that translates them, so that evaluate, predict, export and init_from_checkpoint read
checkpoints of both layouts alike.
"""

from deeplab.runtime.config import override_key

LEGACY_PREFIX = "crf_rnn"  # every old key of the layer began so, inside `model`
# old model key -> the key of the crf_rnn group that holds it now (the layer's own values)
LAYER_KEYS = {"crf_rnn_iterations": "iterations", "crf_rnn_test_iterations": "test_iterations"}
# Training knobs (crf_rnn_aux_loss_weight, crf_rnn_lr_mult) rebuild nothing: they are dropped.


def current_overrides(overrides: list[str]) -> list[str]:
    """A checkpoint's overrides with the old `model.crf_rnn*` ones turned into the `crf_rnn`
    group: `crf_rnn=on` and its iteration counts when the layer was on, nothing when it was off."""
    layer_on = any(
        override_key(o) == "model.crf_rnn" and o.split("=", 1)[1].lower() == "true"
        for o in overrides
        if "=" in o
    )
    out = []
    for override in overrides:
        key = override_key(override)
        old = key.removeprefix("model.")
        if not (key.startswith("model.") and old.startswith(LEGACY_PREFIX)):
            out.append(override)
        elif old == LEGACY_PREFIX and layer_on:
            out.append("crf_rnn=on")
        elif old in LAYER_KEYS and layer_on:
            out.append(f"++crf_rnn.{LAYER_KEYS[old]}={override.split('=', 1)[1]}")
    return out


def current_record(record: dict | None) -> dict | None:
    """A checkpoint's `deeplab` record (`checkpoint_record`) in the current layout: its model
    config without the old `crf_rnn*` keys, its overrides through `current_overrides`. A record
    of the current layout comes back unchanged."""
    if not isinstance(record, dict):
        return record
    record = dict(record)
    model = record.get("model")
    if isinstance(model, dict):
        record["model"] = {k: v for k, v in model.items() if not str(k).startswith(LEGACY_PREFIX)}
    overrides = record.get("overrides")
    if isinstance(overrides, list):
        record["overrides"] = current_overrides([str(o) for o in overrides])
    return record
