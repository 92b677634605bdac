"""Compression on a smoke-trained digits CNN: every method does what it claims (int8 modules present,
sparsity reached, channels really removed, student small enough, ONNX matches PyTorch), the stage driver
records a tagged MLflow run + metrics file, and bad input is refused with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from conftest import CONF, mlflow_runs, prepare_data, run_entry
from dlzoo.compression import distill, export_onnx, prune, quantize, serialize
from dlzoo.compression.compress import compress, for_profile, load_parent
from dlzoo.compression.context import CompressContext
from dlzoo.compression.measure import count_params, size_metrics, weight_sparsity
from dlzoo.compression.report import compress_report
from dlzoo.config import build
from dlzoo.errors import CheckpointError, ConfigError, ExportError
from dlzoo.evaluation.profiling import count_macs
from dlzoo.training.train import train


def compose_cfg(*overrides: str, config_name: str = "compression"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def smoke(method: str, *extra: str, experiment: str = "digits-cnn"):
    return for_profile(compose_cfg(f"experiment={experiment}", f"compress={method}", "profile=smoke", *extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke-trained digits CNN in a scratch working directory (its own mlflow.db)."""
    root = tmp_path_factory.mktemp("compress")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the compress stage does (conf/compression.yaml torch_threads): tiny nets, shared CPU
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DVC_STAGE", raising=False)
        cfg = compose_cfg("experiment=digits-cnn", "profile=smoke", "tracking.log_model=false", config_name="config")
        prepare_data(cfg)
        summary = train(cfg)
        yield root, summary
    torch.set_num_threads(threads)


@pytest.fixture
def ctx_for(trained, monkeypatch):
    root, _ = trained
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def _make(method: str, *extra: str) -> CompressContext:
        cfg = smoke(method, *extra)
        module, _ = load_parent(cfg)
        datamodule = build(cfg.data.module, "data.module")
        datamodule.setup("fit")
        datamodule.setup("test")
        return CompressContext(cfg, module.net.eval(), datamodule, module=module)

    return _make


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def test_static_int8_stage_records_tagged_run_and_metrics(trained, ctx_for):
    root, summary = trained
    cfg = smoke("static-int8")
    metrics = compress(cfg)
    on_disk = json.loads(Path(cfg.paths.compress_metrics_file).read_text())
    assert cfg.paths.compress_metrics_file == "metrics/digits/cnn-static-int8.json"
    assert on_disk == pytest.approx(metrics)
    assert on_disk["quantized_modules"] >= 6  # every conv (BN, ReLU fused in) and the classifier
    assert on_disk["size_ratio"] > 3.5 and on_disk["macs"] == on_disk["parent/macs"] > 0
    for key in ("test/accuracy", "size_mb", "num_params", "nonzero_params", "macs", "latency_ms_b1", "latency_ms_b32",
                "latency_ms_b32_iqr", "parent/latency_ms_b32_iqr", "speedup_b32_lo", "speedup_b32_hi", "speedup_b32_significant",
                "onnx/requantisations", "onnx/tolerance_steps", "onnx/max_diff_steps", "onnx/within_tolerance"):
        assert key in on_disk
    assert on_disk["speedup_b32_lo"] <= on_disk["speedup_b32"] <= on_disk["speedup_b32_hi"]
    assert on_disk["speedup_b32_significant"] == float(not on_disk["speedup_b32_lo"] <= 1.0 <= on_disk["speedup_b32_hi"])
    assert on_disk["onnx/tolerance_steps"] == on_disk["onnx/requantisations"] >= 6  # 1 step per requantisation
    run = next(r for r in mlflow_runs(root / "mlflow.db") if r["tags"]["stage"] == "compress")
    assert run["experiment"] == "digits" and run["name"] == "cnn-static-int8" and run["status"] == "FINISHED"
    assert run["tags"]["method"] == "static-int8" and run["tags"]["parent_run_id"] == summary["run_id"]
    assert {"task", "family", "git_commit", "dvc_stage", "profile"} <= set(run["tags"])
    assert run["metrics"]["test/accuracy"] == pytest.approx(on_disk["test/accuracy"])
    out = Path(cfg.paths.compressed_dir)
    assert (out / "model.safetensors").is_file() and json.loads((out / "summary.json").read_text())["method"] == "static-int8"

    # a second model of the task, then the task's report: table + both trade-off plots, its own run
    compress(smoke("prune-structured"))
    report_cfg = compose_cfg("experiment=digits-cnn", "profile=smoke", config_name="compress_report")
    assert (report_cfg.task, report_cfg.report.metric, report_cfg.report.latency) == ("digits", "test/accuracy", "latency_ms_b32")
    report = compress_report(report_cfg)
    assert report["models"] == 3  # the parent + two compressed
    plots = Path("plots/digits/compress")
    assert (plots / "size_vs_metric.png").is_file() and (plots / "latency_vs_metric.png").is_file()
    table = (plots / "compression.md").read_text()
    assert "static-int8" in table and "| onnx |" in table.splitlines()[0] and "speedup_b32_lo" not in table
    assert "ok (" in next(line for line in table.splitlines() if "static-int8" in line)
    assert any(r["name"] == "compress-report" and r["tags"]["stage"] == "compress-report" for r in mlflow_runs(root / "mlflow.db"))


@pytest.mark.parametrize("weights", ["per_tensor", "per_channel"])
def test_static_int8_weight_schemes_and_model_file_round_trip(ctx_for, tmp_path, weights):
    ctx = ctx_for("static-int8")
    first = quantize.static_int8(ctx, calibration_batches=2, weights=weights).nets[0]
    conv_weight = next(m.weight() for m in first.modules() if type(m).__name__ == "ConvReLU2d")
    per_tensor = conv_weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
    assert per_tensor == (weights == "per_tensor") and conv_weight.dtype == torch.qint8
    path = serialize.save_model(first, tmp_path / "int8.safetensors")
    assert path.stat().st_size == pytest.approx(size_metrics(first)["size_mb"] * 1e6)
    # the same quantisation steps on another calibration give another network; loading the file restores the first
    ctx.calibration_batches = lambda n: iter([ctx.example(4)])
    other = quantize.static_int8(ctx, calibration_batches=1, weights=weights).nets[0]
    x = ctx.example(32)[0]
    assert not torch.equal(_logits(other, x), _logits(first, x))
    assert torch.equal(_logits(serialize.load_model(other, path), x), _logits(first, x))
    with pytest.raises(ConfigError, match="compress.apply.weights must be one of"):
        quantize.static_int8(ctx, weights="per_row")


def test_model_file_round_trips_dynamic_int8_embeddings_tied_and_half_weights(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.out = nn.Embedding(50, 16), nn.Linear(16, 50)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(self.embed(tokens))

    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    def int8(net):
        qconfigs = {nn.Embedding: float_qparams_weight_only_qconfig, nn.Linear: default_dynamic_qconfig}
        return torch.ao.quantization.quantize_dynamic(net, qconfigs, dtype=torch.qint8)

    torch.manual_seed(0)
    tied, tokens = Tied(), torch.arange(50).reshape(5, 10)  # every embedding row
    float_file = serialize.save_model(tied, tmp_path / "float.safetensors")
    assert float_file.stat().st_size < 50 * 16 * 4 + 50 * 4 + 2000  # the tied matrix is stored once
    assert torch.equal(serialize.load_model(Tied(), float_file)(tokens), tied(tokens))
    quantized = int8(tied)
    loaded = serialize.load_model(int8(Tied()), serialize.save_model(quantized, tmp_path / "int8.safetensors"))
    assert torch.equal(loaded(tokens), quantized(tokens))
    half = Tied().to(torch.bfloat16)
    loaded = serialize.load_model(Tied().to(torch.bfloat16), serialize.save_model(half, tmp_path / "bf16.safetensors"))
    assert torch.equal(loaded(tokens), half(tokens))


def test_model_file_bad_input_is_a_clear_error(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="no model file"):
        serialize.load_model(net, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="not a safetensors model file"):
        serialize.load_model(net, tmp_path / "junk.safetensors")
    path = serialize.save_model(nn.Sequential(nn.Linear(4, 5)), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="does not fit this network"):
        serialize.load_model(net, path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))  # a safetensors file from elsewhere
    with pytest.raises(CheckpointError, match="not a dlzoo model file"):
        serialize.load_model(net, tmp_path / "plain.safetensors")
    tensors, metadata = serialize.encode(net.state_dict())
    layout = json.loads(metadata[serialize.LAYOUT_KEY])
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={serialize.LAYOUT_KEY: json.dumps({**layout, "torch": "1.13.1"})})
    with pytest.raises(CheckpointError, match="written by torch 1.13.1"):
        serialize.load_model(net, tmp_path / "old.safetensors")
    layout["entries"]["0.bias"] = ["q", "torch.qint8", "torch.per_tensor_affine", 0.1, 0]  # points at no tensor
    del tensors["0.bias"]
    save_file(tensors, str(tmp_path / "corrupt.safetensors"), metadata={serialize.LAYOUT_KEY: json.dumps(layout)})
    with pytest.raises(CheckpointError, match="corrupt or from an unsupported writer"):
        serialize.load_model(net, tmp_path / "corrupt.safetensors")


def test_qat_int8_trains_fake_quantised_then_converts(ctx_for):
    ctx = ctx_for("qat-int8")
    result = quantize.qat_int8(ctx, epochs=1, weights="per_tensor")  # as conf/compress/qat-int8.yaml
    assert result.info["quantized_modules"] >= 6
    x = ctx.example(8)[0]
    assert (_logits(result.nets[0], x).argmax(1) == _logits(ctx.net, x).argmax(1)).float().mean() > 0.5


def test_dynamic_int8_quantises_linear_layers(ctx_for):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    ctx = ctx_for("dynamic-int8")
    ctx.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()  # a linear-heavy net
    result = quantize.dynamic_int8(ctx)
    assert sum(isinstance(m, DynamicLinear) for m in result.nets[0].modules()) == 2
    x = ctx.example(16)[0]
    assert torch.allclose(_logits(result.nets[0], x), _logits(ctx.net, x), atol=0.05)
    assert size_metrics(result.nets[0])["size_mb"] < size_metrics(ctx.net)["size_mb"] / 2.5
    assert count_params(result.nets[0])[0] == sum(p.numel() for p in ctx.net.parameters())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_halves_the_weights(ctx_for, dtype):
    ctx = ctx_for("fp16")
    net = quantize.half(ctx, dtype=dtype).nets[0]
    assert {p.dtype for p in net.parameters()} == {quantize.DTYPES[dtype]}
    x = ctx.example(16)[0]
    out = _logits(net, x)
    assert out.dtype == torch.float32 and torch.allclose(out, _logits(ctx.net, x), atol=0.15)
    assert size_metrics(net)["size_mb"] == pytest.approx(size_metrics(ctx.net)["size_mb"] / 2, rel=0.05)


def test_unstructured_pruning_reaches_sparsity_and_is_permanent(ctx_for):
    ctx = ctx_for("prune-unstructured")
    result = prune.unstructured(ctx, sparsity=0.8, rounds=2, epochs_per_round=1)
    net = result.nets[0]
    assert weight_sparsity(net) == pytest.approx(0.8, abs=0.005) and result.info["sparsity"] >= 0.795
    assert not any(name.endswith(("_orig", "_mask")) for name in net.state_dict())  # masks folded in, no hooks
    assert all(not m._forward_pre_hooks for m in net.modules())
    assert count_params(net)[1] < 0.25 * count_params(ctx.net)[1]


def test_structured_pruning_removes_channels_and_macs(ctx_for):
    ctx = ctx_for("prune-structured")
    net = prune.structured(ctx, channel_ratio=0.4, rounds=1, epochs_per_round=1).nets[0]
    x = ctx.example(1)[0]
    assert count_macs(ctx.net, x) / count_macs(net, x) >= 2.0
    assert size_metrics(net)["size_mb"] < size_metrics(ctx.net)["size_mb"] / 2
    assert net.features[0][0].out_channels < ctx.net.features[0][0].out_channels  # physically narrower
    assert _logits(net, ctx.example(4)[0]).shape == (4, 10)


def test_distillation_student_is_small_and_seeds_differ(ctx_for):
    ctx = ctx_for("distill")
    cfg = ctx.cfg.compress.apply
    student = build(cfg.student, "student")
    result = distill.distill(ctx, student, temperature=4.0, alpha=0.9, epochs=1, seeds=(0, 1))
    assert len(result.nets) == 2 and result.seeds == [0, 1]
    assert result.info["student_fraction"] <= 0.2
    x = ctx.example(4)[0]
    assert not torch.equal(_logits(result.nets[0], x), _logits(result.nets[1], x))
    with pytest.raises(ConfigError, match="more than 0.2 of the teacher"):
        distill.distill(ctx, lambda: ctx.parent(), epochs=1, seeds=(0,))


def test_soft_target_loss_control_and_token_level_masking():
    torch.manual_seed(0)
    logits, teacher, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert distill.soft_target_loss(logits, teacher, y, 4.0, 0.0) == pytest.approx(float(nn.functional.cross_entropy(logits, y)))
    assert distill.soft_target_loss(logits, logits, y, 4.0, 1.0) == pytest.approx(0.0, abs=1e-6)
    # word-level KD: (batch, length, vocab) logits, padding (ignore_index) positions left out
    tokens, teacher_tokens = torch.randn(2, 5, 30), torch.randn(2, 5, 30)
    targets = torch.randint(1, 30, (2, 5))
    targets[:, 3:] = 0
    full = distill.soft_target_loss(tokens, teacher_tokens, targets, 2.0, 0.5, ignore_index=0)
    kept = distill.soft_target_loss(tokens[:, :3], teacher_tokens[:, :3], targets[:, :3], 2.0, 0.5, ignore_index=0)
    assert full == pytest.approx(float(kept))


def test_onnx_float_export_matches_pytorch_on_test_split(ctx_for, tmp_path):
    ctx = ctx_for("onnx")
    path = export_onnx.export(ctx.net, ctx.example(1), tmp_path / "cnn.onnx")
    checked = export_onnx.check(path, ctx.net, (ctx.inputs(b) for b in ctx.datamodule.test_dataloader()), atol=1e-4)
    assert checked["onnx/within_tolerance"] == 1.0 and checked["onnx/argmax_agreement"] == 1.0
    assert checked["onnx/max_abs_diff"] < 1e-4 and "onnx/requantisations" not in checked


def test_onnx_int8_export_matches_within_one_step_per_requantisation(ctx_for, tmp_path):
    ctx = ctx_for("static-int8")
    int8 = quantize.static_int8(ctx, calibration_batches=2, weights="per_tensor").nets[0]
    path = export_onnx.export(int8, ctx.example(1), tmp_path / "int8.onnx")
    checked = export_onnx.check(path, int8, (ctx.inputs(b) for b in ctx.datamodule.test_dataloader()), atol=None,
                                steps_per_requantisation=1)
    head_scale = float(int8.state_dict()["head.3.scale"])  # the int8 output grid the tolerance is counted in
    n = export_onnx.requantisations(int8)
    # the digits CNN is a chain: the input's quantize, 5 int8 conv+BN+ReLU, the int8 average pool, the
    # quantize after the float Flatten (FX dequantises around it), the int8 classifier
    assert n == 9
    assert checked["onnx/requantisations"] == checked["onnx/tolerance_steps"] == n
    assert checked["onnx/output_step"] == pytest.approx(head_scale, rel=1e-4)
    assert checked["onnx/atol"] == pytest.approx(n * head_scale, rel=1e-4)
    assert checked["onnx/within_tolerance"] == 1.0 and checked["onnx/argmax_agreement"] > 0.95


class _Branchy(nn.Module):
    """conv -> (1x1 conv -> 1x1 conv) + (3x3 conv) -> average pool -> linear: two arms of unequal length."""

    def __init__(self):
        super().__init__()
        self.a, self.relu = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.b, self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def forward(self, x):
        y = self.relu(self.a(x))
        return self.head(torch.flatten(self.pool(self.c2(self.c1(y)) + self.b(y)), 1))


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.ao FX mode deprecation notices
def test_requantisations_count_the_longest_path_and_a_larger_difference_is_out_of_tolerance(tmp_path):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    torch.backends.quantized.engine = "x86"
    x = torch.randn(16, 1, 8, 8)
    prepared = prepare_fx(_Branchy().eval(), get_default_qconfig_mapping("x86"), (x,))
    prepared(x)
    int8 = convert_fx(prepared)
    # quantize, a, c1, c2, the int8 add, the int8 average pool, head = 7; the shorter arm's conv b is not on it
    assert export_onnx.requantisations(int8) == 7
    assert export_onnx.requantisations(_Branchy()) == 0  # a float network has none
    path = export_onnx.export(int8, (x[:1],), tmp_path / "branchy.onnx")
    ok = export_onnx.check(path, int8, [(x,)], atol=None, steps_per_requantisation=1)
    assert ok["onnx/tolerance_steps"] == 7 and ok["onnx/within_tolerance"] == 1.0
    # PyTorch's classifier bias moved by 10 output steps after export: ONNX now differs by ~10 steps > 7
    step = ok["onnx/output_step"]
    weight, bias = int8.head.weight(), int8.head.bias()
    int8.head.set_weight_bias(weight, bias + 10 * step)
    off = export_onnx.check(path, int8, [(x,)], atol=None, steps_per_requantisation=1)
    assert off["onnx/max_diff_steps"] == pytest.approx(10, abs=1.5) and off["onnx/within_tolerance"] == 0.0
    from dlzoo.compression.report import onnx_cell

    assert onnx_cell({"onnx_export": "outside tolerance: ...", "metrics": off}).startswith("OUTSIDE TOLERANCE (")
    with pytest.raises(ConfigError, match="no ONNX tolerance"):
        export_onnx.check(path, _Branchy(), [(x,)], atol=None, steps_per_requantisation=1)


def test_speedup_interval_and_no_difference_in_the_report():
    from dlzoo.compression.compress import speedup_interval
    from dlzoo.compression.report import speedup_cell

    faster = speedup_interval([2.6, 2.7, 2.75, 2.8, 2.9, 2.65], "speedup_b32")
    assert faster["speedup_b32"] == pytest.approx(2.725) and (faster["speedup_b32_lo"], faster["speedup_b32_hi"]) == (2.6, 2.9)
    assert faster["speedup_b32_significant"] == 1.0 and faster["speedup_b32_confidence"] == pytest.approx(1 - 2 / 64)
    same = speedup_interval([0.97, 1.02, 1.0, 0.99, 1.03, 1.01], "speedup_b32")
    assert same["speedup_b32_significant"] == 0.0
    assert speedup_cell(faster, "speedup_b32") == "2.73 (2.6-2.9)"
    assert speedup_cell(same, "speedup_b32") == "no difference (0.97-1.03)"
    assert speedup_cell({"speedup_b32": 1.0}, "speedup_b32") == "1"  # the parent: no interval


def test_onnx_export_failure_names_the_operator(ctx_for, tmp_path):
    ctx = ctx_for("dynamic-int8")
    int8 = quantize.dynamic_int8(ctx).nets[0]  # dynamic int8 Linear has no ONNX translation
    with pytest.raises(ExportError, match=r"operator 'quantized::linear_dynamic' is not supported"):
        export_onnx.export(int8, ctx.example(1), tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()


@pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_unit_interval_is_refused(ctx_for, sparsity):
    ctx = ctx_for("prune-unstructured")
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        prune.unstructured(ctx, sparsity=float(sparsity))


def test_checkpoint_of_another_family_is_refused(trained, ctx_for):
    root, summary = trained
    cfg = smoke("static-int8", f"checkpoint_path={summary['checkpoint']}", experiment="digits-mobilenet")
    with pytest.raises(CheckpointError, match="holds a digits/cnn model, not digits/mobilenet"):
        compress(cfg)
    assert not Path("metrics/digits/mobilenet-static-int8.json").exists()


def test_cli_bad_sparsity_and_unknown_method_are_one_line_errors(trained):
    root, _ = trained
    bad = run_entry("compress", "experiment=digits-cnn", "compress=prune-unstructured", "compress.apply.sparsity=1.0",
                    "profile=smoke", cwd=root)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "error: compress.apply.sparsity must be in [0, 1), got 1.0" in bad.stderr
    unknown = run_entry("compress", "experiment=digits-cnn", "compress=prune-randomly", cwd=root)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "Could not find 'compress/prune-randomly'" in unknown.stderr and "static-int8" in unknown.stderr
