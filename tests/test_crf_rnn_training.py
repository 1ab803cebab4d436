"""crf_rnn=on: a CRF-RNN layer trained after the network (stage 2 from a stage-1 checkpoint),
saved in its checkpoints, restored by evaluate and predict from the path alone, also from a
checkpoint written when the layer was configured by `model.crf_rnn*` keys."""

import shutil

import pytest
import torch

from deeplab.crf.crf_rnn import WithCRFRNN
from deeplab.engine.losses import lovasz_softmax_loss, segmentation_loss
from deeplab.engine.optimizer import param_groups
from deeplab.engine.pipeline import (
    build_module,
    build_network,
    check_run_config,
    evaluate,
    load_weights,
    train,
)
from deeplab.engine.prediction import predict
from deeplab.runtime.config import compose, instantiate
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import UserError
from deeplab.weights.checkpoint import network_state
from deeplab.weights.checkpoint_overrides import with_checkpoint_overrides

SMOKE = [
    "debug=smoke",
    "data=synthetic",
    "data.num_train=8",
    "data.num_val=2",
    "trainer.max_steps=2",  # within the first epoch: only the final validation runs
    "logger=csv",
]
CRF_RNN = ["crf_rnn=on", "crf=synthetic", "crf.backend=torch"]


def saved_overrides(ckpt, *extra) -> list[str]:
    """What `python src/<app>.py ckpt_path=X *extra` composes: the checkpoint's overrides first."""
    return with_checkpoint_overrides(["app.py", f"ckpt_path={ckpt}", *extra])[1:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A plain smoke run (stage 1) and a CRF-RNN run started from its checkpoint (stage 2)."""
    root = tmp_path_factory.mktemp("crf_rnn")
    data = [f"data_dir={root / 'data'}"]
    train(compose("train", [*SMOKE, *data]), root / "stage1")
    stage1 = root / "stage1" / "checkpoints" / "last.ckpt"
    init = [f"init_from_checkpoint={stage1}"]
    metrics = train(compose("train", [*SMOKE, *data, *CRF_RNN, *init]), root / "stage2")
    return root, stage1, root / "stage2" / "checkpoints" / "last.ckpt", metrics


def layer_state(ckpt) -> dict:
    state = network_state(torch.load(ckpt, map_location="cpu", weights_only=False))
    return {k: v for k, v in state.items() if k.startswith("crf_rnn.")}


@pytest.mark.slow
def test_training_changes_the_layer_and_saves_it(runs):
    _, _, stage2, metrics = runs
    saved = layer_state(stage2)
    assert set(saved) == {"crf_rnn.pos_w", "crf_rnn.bi_w", "crf_rnn.compatibility"}
    start = instantiate(compose("train", CRF_RNN).crf).params  # the layer's start: crf=synthetic
    assert saved["crf_rnn.pos_w"] != start["pos_w"] and saved["crf_rnn.bi_w"] != start["bi_w"]
    assert not torch.equal(saved["crf_rnn.compatibility"], 1 - torch.eye(7))
    # one validation pass: the network alone, + the post-hoc CRF, + the trained layer
    assert {"val_net/mIoU", "val_crf/mIoU", "val/mIoU"} <= metrics.keys()


@pytest.mark.slow
def test_a_stage1_checkpoint_fills_the_network_and_the_layer_starts_as_potts(runs):
    root, stage1, _, _ = runs
    cfg = compose("train", [*SMOKE, f"data_dir={root / 'data'}", *CRF_RNN])
    datamodule = instantiate(cfg.data)
    net = load_weights(build_network(cfg, datamodule), stage1, "init", cfg, datamodule)
    trained = network_state(torch.load(stage1, map_location="cpu", weights_only=False))
    assert all(torch.equal(v, trained[k]) for k, v in net.net.state_dict().items())
    assert torch.equal(net.crf_rnn.compatibility, 1 - torch.eye(7))
    assert net.crf_rnn.pos_w.item() == cfg.crf.pos_w


def test_a_stage1_checkpoint_fills_the_network_inside_a_matrix_layer(runs):
    """The stage-1 checkpoint records kernel_weights=scalar; the layer it starts is any."""
    root, stage1, _, _ = runs
    matrix = [*CRF_RNN, "crf_rnn.kernel_weights=matrix"]
    cfg = compose("train", [*SMOKE, f"data_dir={root / 'data'}", *matrix])
    datamodule = instantiate(cfg.data)
    net = load_weights(build_network(cfg, datamodule), stage1, "init", cfg, datamodule)
    torch.testing.assert_close(net.crf_rnn.pos_w, cfg.crf.pos_w * torch.eye(7))


@pytest.mark.slow
def test_evaluate_and_predict_restore_the_layer_from_the_checkpoint_alone(runs, tmp_path):
    root, _, stage2, trained = runs
    cfg = compose("evaluate", saved_overrides(stage2))
    assert cfg.crf_rnn.test_iterations == 10 and cfg.crf.pos_xy_std == 1.0  # kernels travel too
    scored = evaluate(cfg, tmp_path / "eval")
    for prefix in ("val_net", "val", "val_crf"):
        assert scored[f"{prefix}/mIoU"] == pytest.approx(trained[f"{prefix}/mIoU"])

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "data" / "synthetic" / "JPEGImages" / "val_0000.jpg", images)
    cfg = compose("predict", saved_overrides(stage2, f"input={images}"))
    datamodule = instantiate(cfg.data)
    restored = load_weights(build_network(cfg, datamodule), stage2, "ckpt_path", cfg, datamodule)
    for key, value in layer_state(stage2).items():
        assert torch.equal(restored.state_dict()[key], value)
    assert [p.name for p in predict(cfg, tmp_path / "out")] == ["val_0000.png"]


@pytest.mark.slow
def test_a_layer_checkpoint_needs_the_layer(runs):
    _, _, stage2, _ = runs
    cfg = compose("evaluate", saved_overrides(stage2, "crf_rnn=none"))
    datamodule = instantiate(cfg.data)
    with pytest.raises(UserError, match="crf_rnn=on"):
        load_weights(build_network(cfg, datamodule), stage2, "ckpt_path", cfg, datamodule)


@pytest.mark.slow
def test_crf_on_the_command_line_never_replaces_the_trained_kernels(runs):
    """`crf=deeplab_vgg16` once replaced the layer's kernel widths without a word."""
    _, _, stage2, _ = runs
    cfg = compose("evaluate", saved_overrides(stage2, "crf=deeplab_vgg16"))
    datamodule = instantiate(cfg.data)
    kernels = r"kernels: crf.pos_xy_std 1.0 \(this run: 3.0\); crf.bi_xy_std 12.0 \(this run: 49"
    with pytest.raises(UserError, match=kernels + r"\.0\)\. Leave"):
        load_weights(build_network(cfg, datamodule), stage2, "ckpt_path", cfg, datamodule)


def test_the_layer_needs_a_crf_config():
    cfg = compose("train", [*SMOKE, "crf_rnn=on"])
    with pytest.raises(UserError, match="crf=synthetic"):
        build_network(cfg, instantiate(cfg.data))


def test_layer_iterations_and_optimizer_group():
    cfg = compose("train", [*SMOKE, *CRF_RNN, "optim.crf_rnn_lr_mult=10"])
    net = build_network(cfg, instantiate(cfg.data))
    assert isinstance(net, WithCRFRNN) and net.crf_rnn.steps == 5
    assert net.eval().crf_rnn.steps == 10 and net.train().crf_rnn.steps == 5
    module = build_module(cfg, instantiate(cfg.data), net)
    assert module.crf_rnn_lr_mult == 10  # optim.* reaches the module
    groups = {g["name"]: g for g in param_groups(net, 1e-3, 5e-4, 10.0, module.crf_rnn_lr_mult)}
    assert len(groups["crf"]["params"]) == 3
    assert groups["crf"]["lr"] == pytest.approx(1e-2) and groups["crf"]["weight_decay"] == 0.0
    image = torch.randn(2, 3, 33, 41)
    assert net(image).shape == (2, 7, 33, 41)  # the input's size, not the logits'


def test_matrix_kernel_weights_from_the_config():
    cfg = compose("train", [*SMOKE, *CRF_RNN, "crf_rnn.kernel_weights=matrix"])
    layer = build_network(cfg, instantiate(cfg.data)).crf_rnn
    assert layer.kernel_weights == "matrix" and layer.bi_w.shape == (7, 7)
    torch.testing.assert_close(layer.bi_w, cfg.crf.bi_w * torch.eye(7))
    with pytest.raises(UserError, match="crf_rnn.kernel_weights=matrix"):
        check_run_config(compose("train", [*SMOKE, *CRF_RNN, "crf_rnn.kernel_weights=full"]))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer here
@pytest.mark.parametrize("aux", [0.0, 0.5])
def test_the_layer_loss_reaches_the_training_step(aux):
    """loss.crf_rnn_loss=lovasz_softmax: the training loss is the Lovász-softmax loss of the
    layer's scores (plus aux x the network's own cross-entropy)."""
    overrides = ["loss.crf_rnn_loss=lovasz_softmax", f"loss.crf_rnn_aux_weight={aux}"]
    cfg = compose("train", [*SMOKE, *CRF_RNN, *overrides])
    data = instantiate(cfg.data)
    module = build_module(cfg, data, build_network(cfg, data))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32, generator=g)}
    batch["mask"] = torch.randint(0, 7, (2, 32, 32), generator=g)
    torch.manual_seed(1)  # the same dropout masks for the step and the reference
    loss = module.training_step(batch, 0)
    torch.manual_seed(1)
    scores, own = module.net.scores_and_net_output(batch["image"])
    want = lovasz_softmax_loss(scores, batch["mask"]) + aux * segmentation_loss(own, batch["mask"])
    torch.testing.assert_close(loss, want)


def test_output_scale_from_the_config():
    cfg = compose("train", [*SMOKE, *CRF_RNN, "crf_rnn.output_scale=true"])
    layer = build_network(cfg, instantiate(cfg.data)).crf_rnn
    assert layer.log_output_scale.item() == 0.0
    with pytest.raises(UserError, match="crf_rnn.output_scale=true"):
        check_run_config(compose("train", [*SMOKE, *CRF_RNN, "crf_rnn.output_scale=2"]))


def test_the_stage2_experiment_needs_a_stage1_checkpoint():
    with pytest.raises(UserError, match="stage1_checkpoint"):
        check_config(compose("train", ["experiment=crf_rnn_finetune"]))
    given = compose("train", ["experiment=crf_rnn_finetune", "init_from_checkpoint=s1.ckpt"])
    check_config(given)
    assert given.init_from_checkpoint == "s1.ckpt" and given.crf_rnn.iterations == 10
    assert "crf_rnn" not in given.model  # design.md I12: the layer adds no key to cfg.model


def test_the_stage2_control_is_the_recipe_without_the_layer():
    """`experiment=crf_rnn_finetune crf_rnn=none` (the control, docs/crf-rnn.md) builds the
    plain network with the recipe's optimizer; layer keys merged over crf_rnn=none are refused."""
    recipe = ["experiment=crf_rnn_finetune", "init_from_checkpoint=s1.ckpt", "data.num_train=8"]
    stage2, control = (compose("train", [*recipe, *x]) for x in ([], ["crf_rnn=none"]))
    assert control.crf_rnn is None and control.optim == stage2.optim
    check_run_config(control)
    assert not isinstance(build_network(control, instantiate(control.data)), WithCRFRNN)
    merged = compose("train", [*SMOKE, "crf=synthetic", "++crf_rnn.iterations=3"])
    with pytest.raises(UserError, match=r"crf_rnn.iterations set, but no CRF-RNN layer"):
        check_run_config(merged)


def written_before_the_crf_rnn_group(stage2, path):
    """`stage2` (a checkpoint of the current layout) rewritten as train.py wrote it while the
    layer was configured inside the model config: its record's model config holds the five
    `crf_rnn*` keys, its overrides set them, and name no `crf_rnn` group."""
    checkpoint = torch.load(stage2, map_location="cpu", weights_only=False)
    record = checkpoint["deeplab"]
    assert "crf_rnn=on" in record["overrides"]  # the current layout, as this module trains it
    old_keys = {
        "crf_rnn": True,
        "crf_rnn_iterations": 5,
        "crf_rnn_test_iterations": 10,
        "crf_rnn_aux_loss_weight": 0.0,
        "crf_rnn_lr_mult": 1.0,
    }
    record["model"] = {**record["model"], **old_keys}
    kept = [o for o in record["overrides"] if o != "crf_rnn=on" and "crf_rnn." not in o]
    old = [
        f"++model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in old_keys.items()
    ]
    record["overrides"] = kept + old
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_a_checkpoint_written_before_the_crf_rnn_group_still_loads(runs, tmp_path):
    root, _, stage2, trained = runs
    old = written_before_the_crf_rnn_group(stage2, tmp_path / "old.ckpt")
    cfg = compose("evaluate", saved_overrides(old))
    assert cfg.crf_rnn.test_iterations == 10 and "crf_rnn" not in cfg.model
    scored = evaluate(cfg, tmp_path / "eval")
    assert scored["val/mIoU"] == pytest.approx(trained["val/mIoU"])

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(root / "data" / "synthetic" / "JPEGImages" / "val_0000.jpg", images)
    assert len(predict(compose("predict", saved_overrides(old, f"input={images}")), tmp_path)) == 1

    cfg = compose("train", [*SMOKE, f"data_dir={root / 'data'}", *CRF_RNN])
    datamodule = instantiate(cfg.data)
    net = load_weights(build_network(cfg, datamodule), old, "init_from_checkpoint", cfg, datamodule)
    for key, value in layer_state(stage2).items():
        assert torch.equal(net.state_dict()[key], value)
