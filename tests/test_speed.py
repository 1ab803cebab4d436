"""Speed options give the plain path's outputs within stated tolerances (CPU, tiny networks)."""

import importlib

import pytest
import torch

from deeplab.engine import speed
from deeplab.models import assemble_deeplab
from deeplab.models.atrous import AtrousConv2d


def tiny_net(backbone: str = "vgg16", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    net = assemble_deeplab(4, {"name": backbone}, rates=[2, 4], width_mult=0.0625, **kw)
    return net.eval()


def outputs(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(1, 3, 41, 41, generator=torch.Generator().manual_seed(1))


def test_defaults_change_nothing(image):
    net = tiny_net()
    want = outputs(net, image)
    keys = list(net.state_dict())
    assert speed.apply_speed_options(net, None) is net
    assert all(m.mode == "auto" for m in net.modules() if isinstance(m, AtrousConv2d))
    torch.testing.assert_close(outputs(net, image), want, rtol=1e-5, atol=1e-6)
    assert list(net.state_dict()) == keys


def test_atrous_mode_is_applied_to_every_layer():
    net = speed.apply_speed_options(tiny_net("resnet101"), {"atrous_mode": "space_to_batch"})
    modes = {m.mode for m in net.modules() if isinstance(m, AtrousConv2d)}
    assert modes == {"space_to_batch"}


def test_unknown_keys_and_modes_are_clear_errors():
    with pytest.raises(ValueError, match="speed has unknown keys"):
        speed.apply_speed_options(tiny_net(), {"channel_last": True})
    with pytest.raises(ValueError, match="speed.atrous_mode"):
        speed.apply_speed_options(tiny_net(), {"atrous_mode": "fast"})


def test_channels_last_matches_plain_path(image):
    """Same float32 arithmetic in a different memory order: within 1e-5 relative."""
    plain = tiny_net()
    want = outputs(plain, image)
    net = speed.apply_speed_options(tiny_net(), {"channels_last": True})
    assert net.backbone.stages.stage1.conv1_1.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(outputs(net, image), want, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_matches_plain_path_within_bf16_rounding(image):
    """Lightning's `precision=bf16-mixed` runs the model under this autocast. bfloat16 keeps 8
    mantissa bits (~0.4% per rounding), so after ~15 layers logits agree within 5% of their range
    and the arg-max class agrees almost everywhere."""
    net = tiny_net()
    want = outputs(net, image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = outputs(net, image)
    assert got.dtype == torch.bfloat16
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05 * scale)
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.9


@pytest.mark.slow
def test_compile_matches_plain_path(image):
    """torch.compile (inductor, C++ on CPU) fuses and reorders float ops: within 1e-4 relative.
    The compiled net computes its atrous layers by space-to-batch, the reference by dilation.
    Two layers only: compiling a whole VGG takes minutes on this CPU."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        AtrousConv2d(3, 4, 3, rate=2), torch.nn.ReLU(), AtrousConv2d(4, 2, 4, rate=3)
    ).eval()
    want = outputs(speed.apply_speed_options(net, {"atrous_mode": "dilation"}), image)
    keys = list(net.state_dict())
    speed.apply_speed_options(net, {"compile": True, "atrous_mode": "space_to_batch"})
    torch.testing.assert_close(outputs(net, image), want, rtol=1e-4, atol=1e-5)
    assert list(net.state_dict()) == keys  # checkpoints stay interchangeable


def test_bench_measures_a_tiny_model(monkeypatch):
    """experiments/bench.py's per-model measurement, in-process on a 1/16-width net."""
    import argparse
    import importlib.util

    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "experiments"))  # its sibling imports: timing

    spec = importlib.util.spec_from_file_location("bench", REPO / "experiments" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(
        threads=1, device="cpu", cudnn_benchmark=False, width_mult=0.0625, atrous_mode="auto",
        channels_last=True, compile=False, precision="bf16-mixed", batch=1, crop=33,
        infer_size=33, warmup=1, steps=1,
    )  # fmt: skip
    row = bench.measure_model("vgg16/largefov", args)
    assert row["train_step_s"] > 0 and row["train_img_per_s"] == pytest.approx(
        1 / row["train_step_s"]
    )
    assert row["infer_img_per_s"] > 0 and row["train_peak_mem_mib"] > 0
    flops = bench.step_flops("vgg16/largefov", 0.0625, 33, 1)
    assert flops > 3 * 2 * 33 * 33 * 3 * 9 * 4  # at least conv1_1's forward + backward


def test_train_config_has_the_speed_block():
    """conf/train.yaml's `speed:` holds exactly the keys `speed.apply_speed_options` takes, at
    their defaults."""
    from hydra.utils import instantiate

    from deeplab.runtime.config import compose

    cfg = compose("train", ["debug=smoke", "data=synthetic", "speed.atrous_mode=space_to_batch"])
    assert dict(cfg.speed) == {**speed.DEFAULTS, "atrous_mode": "space_to_batch"}
    net = speed.apply_speed_options(instantiate(cfg.model), cfg.speed)
    assert {m.mode for m in net.modules() if isinstance(m, AtrousConv2d)} == {"space_to_batch"}


def test_bench_crf_times_each_backend_alone_and_compares_their_labels(monkeypatch):
    """experiments/bench_crf.py's method (the README's CRF figure): each backend in its own
    fresh process, alternating, per image the minimum, and the share of equal labels."""
    pytest.importorskip("pydensecrf")
    from pathlib import Path

    # importable by name, here and in the spawned workers (which unpickle its functions)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    bench_crf = importlib.import_module("bench_crf")
    inputs = [bench_crf.make_input(30, 40, 5, seed) for seed in (0, 1)]
    result = bench_crf.alternating(inputs, "symmetric", repeats=1)
    for backend in bench_crf.BACKENDS:
        assert len(result["per_image_ms"][backend]) == 2
        assert 0 < result["ms"][backend] < 60_000
    assert result["agree"] > 0.99


def test_bench_crf_rnn_times_a_training_step_with_and_without_the_layer(monkeypatch):
    """experiments/bench_crf_rnn.py's training-step rows: the paper network's overrides compose,
    the step runs with and without the layer `crf_rnn=on` builds, and the stage table holds every
    labelled stage of the layer (here at 1/16 width on a 49-px crop of a real VOC image)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    bench = importlib.import_module("bench_crf_rnn")
    images, masks = bench.paper_batch(1)
    assert images.shape == (1, bench.SIZE, bench.SIZE, 3) and masks.shape == (1, 321, 321)
    overrides = [*bench.NETWORKS["paper"], "model.width_mult=0.0625"]
    row = bench.training_steps(overrides, images[:, :49, :49], masks[:, :49, :49], repeats=1)
    assert (row["batch"], row["size"], row["labels"], row["iterations"]) == (1, [49, 49], 21, 5)
    assert list(row["ms"]) == ["network", "network + CRF-RNN"]
    assert all(0 < ms < 60_000 for pair in row["ms"].values() for ms in pair)
    assert list(row["stages"]) == [*bench.STAGES, "rest"]
    assert all(row["stages"][stage] > 0 for stage in ("lattice", "splat", "blur", "slice"))


def test_profile_crf_splits_a_refinement_into_its_labelled_stages(monkeypatch):
    """experiments/profile_crf.py's table (docs/crf.md, Where the time goes): every stage the
    torch CRF labels is found, with its calls per image (10 iterations), inside the total."""
    from pathlib import Path

    from deeplab.crf import DenseCRF

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    profile = importlib.import_module("profile_crf")
    bench_crf = importlib.import_module("bench_crf")
    inputs = [bench_crf.make_input(30, 40, 5, seed) for seed in (0, 1)]
    crf = DenseCRF(backend="torch", normalization="per_pixel")
    per_stage, calls, total = profile.stage_times(crf, inputs, repeats=2)
    assert list(per_stage) == list(profile.STAGES)
    assert all(ms > 0 for ms in per_stage.values()) and sum(per_stage.values()) < total
    assert calls["lattice"] == 1 and calls["splat"] == calls["softmax"] == 10
