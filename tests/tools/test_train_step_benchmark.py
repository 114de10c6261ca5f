"""benchmarks/train_step.py runs end to end on the CPU at the ``small`` presets of stage 1 and stage 2 and prints
one complete record each, so that a change to a trainer cannot break the benchmark unnoticed (its values are not
checked for speed); the stage-2 split computes what RefineTask.step computes."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_step.py")
SPLIT_PARTS = {"data", "data_cached", "targets", "bp", "network_fwd_bwd", "loss_projector_fwd_bwd", "optimizer",
               "other"}
RECORD_KEYS = {"benchmark", "stage", "preset", "variant", "device", "batch", "volume_size", "detector_pixels", "num_samples",
               "projector_backend", "num_workers", "parameters", "weights_mib", "reps", "warmup", "step_s_median",
               "step_s_min", "step_s_max", "compute_s_median", "data_wait_s_median", "peak_mib", "peak_memory",
               "split_s", "loader_batches", "loader_first_batch_s", "loader_cases_per_s", "step_cases_per_s",
               "loader_to_step_ratio", "loss_total", "threads", "load_average_1min", "torch"}
REFINE_SPLIT_PARTS = {"data", "prior_3dpn", "prior_ct2xray", "d_step", "refine_fwd_bwd", "g_loss_fwd_bwd",
                      "g_optimizer", "other"}
REFINE_RECORD_KEYS = {"benchmark", "stage", "preset", "variant", "device", "batch", "image_size", "thickness_size",
                      "volume_size", "num_samples", "num_workers", "radiographs", "parameters",
                      "discriminator_parameters", "prior_parameters", "weights_mib", "reps", "warmup",
                      "step_s_median", "step_s_min", "step_s_max", "compute_s_median", "data_wait_s_median", "peak_mib",
                      "peak_memory", "split_s", "loader_batches", "loader_first_batch_s", "loader_cases_per_s",
                      "step_cases_per_s", "loader_to_step_ratio", "loss_total", "loss_gan_d", "threads",
                      "load_average_1min", "torch"}
SMOKE_ARGS = ["--device", "cpu", "--presets", "small", "--reps", "1", "--warmup", "0", "--loader-batches", "3",
              "--threads", "1"]


def _bench():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import train_step

    return train_step


def _one_record(extra_args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, SCRIPT, *SMOKE_ARGS, *extra_args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    record = json.loads(lines[0])
    assert "error" not in record, record
    return record


def test_small_preset_prints_one_complete_record():
    from xraysyn.models import PriorNet3D
    from xraysyn.train.prior_config import preset_config

    record = _one_record([])
    assert set(record) == RECORD_KEYS, set(record) ^ RECORD_KEYS
    assert set(record["split_s"]) == SPLIT_PARTS
    config = preset_config("small")
    assert (record["stage"], record["preset"], record["variant"], record["reps"], record["warmup"]) == (
        "prior", "small", "float32", 1, 0)
    assert (record["batch"], record["volume_size"], record["detector_pixels"], record["num_workers"]) == (
        config.loop.batch_size, config.data.volume_size, config.simulation.detector_pixels, config.data.num_workers)
    expected = sum(p.numel() for p in PriorNet3D(config.model.network()).parameters())
    assert record["parameters"] == expected
    assert record["weights_mib"] == round(expected * 4 / 2**20, 2)
    assert record["threads"] == 1
    assert 0 < record["step_s_min"] <= record["step_s_median"] <= record["step_s_max"]
    assert 0 < record["compute_s_median"] <= record["step_s_median"]
    assert all(record["split_s"][part] > 0 for part in SPLIT_PARTS - {"other"}), record["split_s"]
    assert record["peak_mib"] >= 0 and "ru_maxrss" in record["peak_memory"]
    # the rates as the docstring defines them (up to the printed rounding)
    step_rate = record["batch"] / record["compute_s_median"]
    assert record["step_cases_per_s"] == pytest.approx(step_rate, rel=1e-3)
    assert record["loader_to_step_ratio"] == pytest.approx(record["loader_cases_per_s"] / step_rate, rel=1e-2)


@pytest.mark.parametrize("argv, flag", [
    (["--device", "cpu", "--variants", "bf16"], "--variants bf16"),
    (["--device", "cpu", "--presets", "small,huge"], "--presets"),
    (["--device", "cpu", "--variants", "float16"], "--variants"),
    (["--device", "cpu", "--reps", "0"], "--reps"),
    (["--device", "cpu", "--warmup", "-1"], "--warmup"),
    (["--device", "cpu", "--loader-batches", "0"], "--loader-batches"),
    (["--device", "cpu", "--batch-size", "0"], "--batch-size"),
    (["--device", "cpu", "--threads", "0"], "--threads"),
    (["--device", "cpu", "--stage", "refine", "--variants", "bf16"], "--variants bf16"),
    (["--device", "cpu", "--stage", "refine", "--presets", "huge"], "--presets"),
    (["--device", "cpu", "--stage", "deploy"], "--stage"),
])
def test_bad_arguments_stop_with_one_message_naming_the_flag(argv, flag, capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(argv)
    assert stop.value.code == 2
    assert flag in capsys.readouterr().err


def test_a_failing_record_is_reported_as_json_and_the_run_goes_on(monkeypatch, capsys):
    """A record whose process dies prints an error record; the next record still runs; exit status 1 only when
    every record failed."""
    bench = _bench()
    calls = []

    def fake_subprocess(preset, variant, args):
        calls.append(preset)
        if preset == "small":
            return bench._error_record(preset, variant, args.device, "boom", "detail")
        return {"benchmark": "train_step", "preset": preset, "variant": variant, "step_s_median": 1.0}

    monkeypatch.setattr(bench, "run_in_subprocess", fake_subprocess)
    assert bench.main(["--device", "cpu", "--presets", "small,cpu64"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert calls == ["small", "cpu64"]
    assert records[0]["error"] == "boom" and "error" not in records[1]
    monkeypatch.setattr(bench, "run_in_subprocess",
                        lambda p, v, a: bench._error_record(p, v, a.device, "boom", "detail"))
    assert bench.main(["--device", "cpu", "--presets", "small"]) == 1


def test_an_exception_inside_a_record_becomes_its_error(monkeypatch):
    bench = _bench()

    def fail(preset, variant, args):
        raise ValueError("no such thing\nsecond line")

    monkeypatch.setattr(bench, "bench_record", fail)
    args = bench.parse_args(["--device", "cpu", "--record", "small:float32"])
    record = bench.run_in_this_process(args)
    assert (record["error"], record["detail"], record["preset"]) == ("ValueError", "no such thing", "small")


def test_a_crashed_record_process_is_reported(monkeypatch):
    bench = _bench()
    args = bench.parse_args(["--device", "cpu", "--presets", "small"])
    monkeypatch.setattr(bench, "SCRIPT", os.path.join(ROOT, "no_such_script.py"))
    record = bench.run_in_subprocess("small", "float32", args)
    assert record["error"].startswith("the record's process failed (exit 2)"), record
    assert "no_such_script.py" in record["detail"]


def test_small_stage2_preset_prints_one_complete_record():
    """``--stage refine``: the step of ``train refine`` behind a random 3DPN of the small preset, on rendered
    phantom radiographs (< 30 s)."""
    from xraysyn.models.discriminator import DiscriminatorConfig, PatchDiscriminator
    from xraysyn.models.refine2d import RefineNet2D, RefineNetConfig
    from xraysyn.models import PriorNet3D
    from xraysyn.train.prior_config import preset_config
    from xraysyn.train.refine_config import refine_preset

    record = _one_record(["--stage", "refine"])
    assert set(record) == REFINE_RECORD_KEYS, set(record) ^ REFINE_RECORD_KEYS
    assert set(record["split_s"]) == REFINE_SPLIT_PARTS
    config, prior_config = refine_preset("small"), preset_config("small")
    network = RefineNetConfig.preset("small")
    assert (record["stage"], record["preset"], record["variant"], record["reps"], record["warmup"]) == (
        "refine", "small", "float32", 1, 0)
    assert (record["batch"], record["image_size"], record["thickness_size"], record["volume_size"],
            record["num_samples"], record["num_workers"]) == (
        config.loop.batch_size, network.hypernet.input_size, prior_config.simulation.detector_pixels,
        prior_config.data.volume_size, config.num_samples, config.data.num_workers)
    parameters = sum(p.numel() for p in RefineNet2D(network).parameters())
    d_parameters = sum(p.numel() for p in PatchDiscriminator(DiscriminatorConfig.preset("small")).parameters())
    assert (record["parameters"], record["discriminator_parameters"]) == (parameters, d_parameters)
    assert record["prior_parameters"] == sum(p.numel() for p in PriorNet3D(prior_config.model.network()).parameters())
    assert record["weights_mib"] == round((parameters + d_parameters) * 4 / 2**20, 2)
    assert record["threads"] == 1
    assert 0 < record["step_s_min"] <= record["step_s_median"] <= record["step_s_max"]
    assert 0 < record["compute_s_median"] <= record["step_s_median"]
    assert all(record["split_s"][part] > 0 for part in REFINE_SPLIT_PARTS - {"other"}), record["split_s"]
    assert record["peak_mib"] >= 0 and "ru_maxrss" in record["peak_memory"]
    assert record["loss_total"] > 0 and record["loss_gan_d"] > 0
    step_rate = record["batch"] / record["compute_s_median"]
    # compute_s_median is printed to SECONDS_DIGITS decimals: a small step's rate carries that rounding
    printed = 0.5 * 10.0 ** -_bench().SECONDS_DIGITS / record["compute_s_median"]
    assert record["step_cases_per_s"] == pytest.approx(step_rate, rel=1e-3 + printed)
    assert record["loader_to_step_ratio"] == pytest.approx(record["loader_cases_per_s"] / step_rate, rel=1e-2)


def test_the_stage2_split_computes_what_the_step_computes(tmp_path):
    """The timed parts are RefineTask's computation taken apart: the 3DPN part then the CT2Xray part give
    ``prior_thickness`` exactly, and the generator loss from t_m^ref is the step's F + M loss (learning rates 0,
    so the step's D update leaves D as it was)."""
    import torch

    bench = _bench()
    task = bench.make_refine_task("small", torch.device("cpu"), None, tmp_path)
    assert len(list(tmp_path.glob("*.png"))) == bench.RENDERED_RADIOGRAPHS
    for optimizer in task.optimizers().values():
        for group in optimizer.param_groups:
            group["lr"] = 0.0
    items = task.items()
    batch = task.collate([items[p] for p in range(task.config.loop.batch_size)])
    image, azimuth, elevation = batch["image"], batch["azimuth_deg"], batch["elevation_deg"]
    thickness = bench.prior_thickness_from(task, *bench.prior_volumes(task, image, azimuth, elevation))
    assert torch.equal(thickness, task.prior_thickness(image, azimuth, elevation))
    losses = task.step([batch], 0)
    with torch.no_grad():
        refined = task.refine(thickness, image.repeat_interleave(2, dim=0))
        loss = bench.generator_loss(task, refined, thickness, bench.window_to_unit(image))
    assert float(loss) == pytest.approx(losses["total"], rel=1e-6)


def test_a_failing_stage2_record_names_its_stage(monkeypatch):
    bench = _bench()

    def fail(preset, variant, args):
        raise RuntimeError("no prior")

    monkeypatch.setattr(bench, "refine_record", fail)
    args = bench.parse_args(["--device", "cpu", "--stage", "refine", "--record", "small:float32"])
    record = bench.run_in_this_process(args)
    assert (record["stage"], record["error"], record["detail"]) == ("refine", "RuntimeError", "no prior")


@pytest.mark.parametrize("stage", ["x2ct", "refiner2d", "prior_drr"])
def test_a_baseline_stage_prints_a_step_record(stage):
    """The simulated ablation baselines: whole-step time, parameters and the loader rate of their own task."""
    record = _one_record(["--stage", stage])
    assert record["stage"] == stage and "error" not in record, record
    assert record["step_s_median"] > 0 and record["parameters"] > 0
    assert {"loader_cases_per_s", "step_cases_per_s"} <= set(record)
