"""``evaluate simulated`` on tiny random-weight exports of the ``small`` presets: kind detection and errors, metrics
against an independent NumPy computation, an oracle model at the PSNR cap / SSIM 1, the table layouts (a column per
view, empty thickness cells for the 2D Refiner and the DRR model), held-out phantoms, and nothing written on bad
input."""

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import xraysyn
from xraysyn.data.datasets import PhantomDataset
from xraysyn.evaluation import simulated
from xraysyn.evaluation.simulated import (
    PHANTOM_BASE_SEED,
    PHANTOM_CASE_OFFSET,
    EvaluationError,
    evaluate_simulated,
    evaluation_azimuths,
    load_evaluated_model,
    refiner_input,
)
from xraysyn.metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW_SIZE
from xraysyn.models.normalization import HUScale
from xraysyn.models.unet3d import PriorNet3D
from xraysyn.train.baselines import PSNR_CAP_DB, Refiner2DTask, baseline_export, baseline_network, \
    simulated_baseline_preset
from xraysyn.train.config_io import to_dict
from xraysyn.train.export import EXPORT_FORMAT, state_dict_sha256
from xraysyn.train.prior_config import preset_config
from xraysyn.train.stage1 import simulate_views, simulated_network_input, view_poses

PRESET = "small"
CASES, VIEWS = 2, 3


# ------------------------------------------------------------------------------------------ tiny exports
def write_prior_export(path, mode="ct2xray", seed=0):
    """A random-weight 3DPN export with the fields `xraysyn export` writes for a stage-1 run."""
    config = preset_config(PRESET).replace(simulation__mode=mode)
    torch.manual_seed(seed)
    state = PriorNet3D(config.model.network()).state_dict()
    sim, scale = config.simulation, HUScale()
    torch.save({"format": EXPORT_FORMAT, "xraysyn_version": xraysyn.__version__, "stage": "prior",
                "model_class": "PriorNet3D",
                "model_config": {"widths": list(config.model.widths), "norm": config.model.norm,
                                 "negative_slope": config.model.negative_slope},
                "state_dict": state, "sha256": state_dict_sha256(state),
                "input_normalisation": {"detector_pixels": sim.detector_pixels,
                                        "field_of_view_mm": sim.field_of_view_mm, "sdd_mm": sim.sdd_mm,
                                        "sid_mm": sim.sid_mm,
                                        "volume_size": config.data.volume_size},
                "hu_scale": {"min_hu": scale.min_hu, "max_hu": scale.max_hu}, "steps": 0, "validation": {},
                "best": {}, "config": to_dict(config)}, path)
    return path


def write_baseline_export(path, name, seed=0):
    """A random-weight refiner2d / x2ct export through the baselines' own export function."""
    torch.manual_seed(seed)
    payload = {"config": to_dict(simulated_baseline_preset(name, PRESET)),
               "modules": {name: baseline_network(name, PRESET).state_dict()}, "step": 0, "validation": {}, "best": {}}
    torch.save(baseline_export(path.parent, payload, half=False), path)
    return path


def write_all_exports(folder):
    return {"3dpn": write_prior_export(folder / "prior.pt"),
            "drr": write_prior_export(folder / "drr.pt", mode="drr", seed=1),
            "x2ct": write_baseline_export(folder / "x2ct.pt", "x2ct"),
            "refiner": write_baseline_export(folder / "refiner.pt", "refiner2d")}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return write_all_exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def evaluation(exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "results"
    return evaluate_simulated(exports, ["phantom"], cases=CASES, views=VIEWS, out_dir=out, progress=False)


# ------------------------------------------------------------------------------------------ independent truth
def numpy_psnr(prediction, truth):
    prediction, truth = prediction.astype(np.float64), truth.astype(np.float64)
    data_range = truth.max() - truth.min()
    mse = np.mean((prediction - truth) ** 2)
    return min(PSNR_CAP_DB, 10 * math.log10(data_range ** 2 / mse))


def numpy_ssim(prediction, truth):
    """Wang et al. 2004 with an 11×11 Gaussian window (σ 1.5), valid positions only, population moments."""
    x, y = prediction.astype(np.float64), truth.astype(np.float64)
    data_range = y.max() - y.min()
    half = SSIM_WINDOW_SIZE // 2
    g = np.exp(-np.arange(-half, half + 1) ** 2 / (2 * SSIM_SIGMA ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(image):
        rows, cols = image.shape[0] - 2 * half, image.shape[1] - 2 * half
        return np.array([[np.sum(window * image[i:i + SSIM_WINDOW_SIZE, j:j + SSIM_WINDOW_SIZE])
                          for j in range(cols)] for i in range(rows)])

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))))


# ------------------------------------------------------------------------------------------ kinds and errors
def test_kinds_are_detected_from_the_exports(exports):
    kinds = {name: load_evaluated_model(name, path) for name, path in exports.items()}
    assert {n: m.kind for n, m in kinds.items()} == {"3dpn": "3dpn", "drr": "3dpn_drr", "x2ct": "x2ct",
                                                     "refiner": "refiner2d"}
    assert {n: m.has_thickness for n, m in kinds.items()} == {"3dpn": True, "drr": False, "x2ct": True,
                                                              "refiner": False}
    assert all(m.volume_size == preset_config(PRESET).data.volume_size for m in kinds.values())
    assert kinds["drr"].truth_key == kinds["3dpn"].truth_key  # the DRR model is scored against CT2Xray truth


def _refine_export(path):
    torch.save({"format": EXPORT_FORMAT, "stage": "refine", "model_class": "RefineNet2D", "state_dict": {},
                "sha256": state_dict_sha256({})}, path)
    return path


@pytest.mark.parametrize("make, match", [
    (_refine_export, "evaluate it with `xraysyn evaluate real`"),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p) or p, "not an xraysyn model file"),
    (lambda p: p, "does not exist"),
])
def test_files_it_cannot_evaluate_are_refused_naming_the_model(tmp_path, make, match):
    path = make(tmp_path / "model.pt")
    with pytest.raises(EvaluationError, match=match) as raised:
        load_evaluated_model("m", path)
    assert str(raised.value).startswith("model 'm': ")


@pytest.mark.parametrize("change, match", [
    ({"cases": 0}, "--cases"),
    ({"views": 1}, "--views"),
    ({"max_azimuth_deg": 90.0}, "--max-azimuth"),
    ({"device": "tpu"}, "--device"),
    ({"data": ["/no/such/shards"]}, "--data '/no/such/shards'"),
    ({"data": []}, "at least one source"),
    ({"models": {}}, "at least one model"),
    ({"models": {"bad name": None}}, "model name"),
])
def test_bad_input_raises_one_clear_error_and_writes_nothing(exports, tmp_path, change, match):
    arguments = {"models": {"3dpn": exports["3dpn"]}, "data": ["phantom"], "cases": 1, **change}
    if "bad name" in arguments["models"]:
        arguments["models"] = {"bad name": exports["3dpn"]}
    with pytest.raises(EvaluationError, match=match):
        evaluate_simulated(arguments.pop("models"), arguments.pop("data"), out_dir=tmp_path / "out", progress=False,
                           **arguments)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_equal_an_independent_numpy_computation(evaluation):
    for name, arrays in evaluation.first_case.items():
        predicted, truth = arrays["predicted"], arrays["truth"]
        for view in range(1 + VIEWS):
            scores = evaluation.scores[name]["I"]
            assert scores["psnr"][0, view] == pytest.approx(
                numpy_psnr(predicted["line_integral"][view], truth["line_integral"][view]), rel=1e-9)
            assert scores["ssim"][0, view] == pytest.approx(
                numpy_ssim(predicted["line_integral"][view], truth["line_integral"][view]), abs=1e-9)
        if predicted["thickness"] is not None:
            bone = arrays["materials"].index(simulated.MATERIALS["bone"])
            assert evaluation.scores[name]["bone"]["psnr"][0, 1] == pytest.approx(
                numpy_psnr(predicted["thickness"][1, bone], truth["thickness"][1, bone]), rel=1e-9)


def test_truth_is_ct2xray_of_the_held_out_phantom_for_every_model(evaluation):
    """Recomputed here from the phantom: CT2Xray at T and the T' views, also for the DRR-trained model."""
    config = preset_config(PRESET)
    size = config.data.volume_size
    hu, bone, affine = PhantomDataset(PHANTOM_CASE_OFFSET + 1, size=size, seed=PHANTOM_BASE_SEED).load_case(
        PHANTOM_CASE_OFFSET)
    geometry = config.simulation.geometry()
    azimuth = evaluation_azimuths(VIEWS, 9.0)
    poses = view_poses(azimuth[None], torch.zeros_like(azimuth)[None], geometry)
    truth = simulate_views(hu[None].float(), bone[None].float(), affine[None].float(), poses, geometry,
                           **config.simulation.projector_kwargs())
    assert evaluation.case_ids == [f"phantom/{PHANTOM_CASE_OFFSET + k:07d}" for k in range(CASES)]
    assert evaluation.azimuth_deg == pytest.approx([0.0, -9.0, 0.0, 9.0])
    for name in ("3dpn", "drr", "refiner"):
        np.testing.assert_allclose(evaluation.first_case[name]["truth"]["line_integral"],
                                   truth.line_integral[:, 0].numpy(), rtol=1e-6, atol=1e-6)
    assert evaluation.first_case["drr"]["predicted"]["thickness"] is None


def test_shard_folders_are_resampled_to_each_model_grid(exports, tmp_path):
    """A 32³ shard evaluated by a 16³ model: the truth is CT2Xray of the shard resampled to 16³ (extent kept)."""
    from xraysyn.data.datasets import resample_cube
    from xraysyn.data.shards import write_shard

    phantom = PhantomDataset(1, size=32, seed=3).load_case(0)
    write_shard(tmp_path / "held_out" / "case_a.npz", phantom[0][0].numpy(), phantom[1][0].numpy() > 0.5,
                phantom[2].numpy())
    result = evaluate_simulated({"3dpn": exports["3dpn"]}, [str(tmp_path / "held_out")], cases=5, views=2,
                                out_dir=tmp_path / "o", progress=False)
    assert result.case_ids == ["held_out/case_a.npz"]
    config = preset_config(PRESET)
    from xraysyn.data.shards import read_shard

    shard = read_shard(tmp_path / "held_out" / "case_a.npz")
    hu, bone, affine = resample_cube(torch.from_numpy(shard.hu.astype(np.float32))[None],
                                     torch.from_numpy(shard.bone)[None].float(),
                                     torch.from_numpy(np.asarray(shard.world_from_voxel)), config.data.volume_size)
    geometry = config.simulation.geometry()
    azimuth = evaluation_azimuths(2, 9.0)
    poses = view_poses(azimuth[None], torch.zeros_like(azimuth)[None], geometry)
    truth = simulate_views(hu[None].float(), bone[None].float(), affine[None].float(), poses, geometry,
                           **config.simulation.projector_kwargs())
    np.testing.assert_allclose(result.first_case["3dpn"]["truth"]["line_integral"],
                               truth.line_integral[:, 0].numpy(), rtol=1e-6, atol=1e-6)


def test_a_shard_folder_a_model_trained_on_gives_a_warning(exports, tmp_path):
    from xraysyn.evaluation.simulated import _held_out_warnings

    model = load_evaluated_model("m", exports["3dpn"])
    model.metadata["training_sources"] = [str(tmp_path)]
    assert "trained on" in _held_out_warnings([model], [str(tmp_path)])[0]
    assert _held_out_warnings([model], ["phantom"]) == []


def test_held_out_phantoms_differ_from_every_training_phantom():
    size = preset_config(PRESET).data.volume_size
    training = PhantomDataset(preset_config(PRESET).data.phantom_cases, size=size, seed=PHANTOM_BASE_SEED)
    held_out = PhantomDataset(PHANTOM_CASE_OFFSET + 1, size=size, seed=PHANTOM_BASE_SEED).load_case(
        PHANTOM_CASE_OFFSET)[0]
    for index in range(len(training)):
        assert not torch.equal(training.load_case(index)[0], held_out)


def test_an_oracle_that_predicts_the_true_ct_scores_the_cap(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(simulated, "predicted_volumes", lambda model, normalised, case, poses:
                        (case["ct_hu"], case["bone"]))
    result = evaluate_simulated({"oracle": exports["3dpn"]}, ["phantom"], cases=1, views=2, out_dir=tmp_path / "o",
                                progress=False)
    for quantity in ("I", "bone", "tissue"):
        np.testing.assert_array_equal(result.scores["oracle"][quantity]["psnr"], PSNR_CAP_DB)
        np.testing.assert_allclose(result.scores["oracle"][quantity]["ssim"], 1.0, atol=1e-12)


def test_refiner_input_is_the_one_the_refiner_trained_on(exports):
    model = load_evaluated_model("r", exports["refiner"])
    config = preset_config(PRESET)
    hu, bone, affine = PhantomDataset(2, size=config.data.volume_size, seed=0).load_case(0)
    geometry = model.geometry
    azimuth = evaluation_azimuths(VIEWS, 9.0)
    poses = view_poses(azimuth[None], torch.zeros_like(azimuth)[None], geometry)
    truth = simulate_views(hu[None].float(), bone[None].float(), affine[None].float(), poses[:1], geometry,
                           **model.projector_kwargs)
    normalised = simulated_network_input(truth.thickness, truth.i_atten)
    ours = refiner_input(normalised, affine[None].float(), poses[:1], poses, geometry, tuple(hu.shape[1:]),
                         model.projector_kwargs)
    task = SimpleNamespace(geometry=geometry, projector_kwargs=model.projector_kwargs)
    theirs = Refiner2DTask.refiner_input(task, normalised, affine[None].float(), poses[:1], poses, tuple(hu.shape[1:]))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert ours.shape == (1 + VIEWS, 2, *geometry.detector_shape)
    torch.testing.assert_close(ours[:, 1], normalised[:, 0].expand(1 + VIEWS, -1, -1), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ outputs
def test_outputs_and_table_layouts(evaluation):
    out = evaluation.out_dir
    assert sorted(p.name for p in out.iterdir()) == sorted(simulated.OUTPUT_FILES + simulated.PAIRED_FILES)
    table4 = (out / "table4.md").read_text(encoding="utf-8")
    header = next(line for line in table4.splitlines() if line.startswith("| model"))
    assert header == "| model | -9.0° | +0.0° | +9.0° |"  # one column per T' view
    with open(out / "table1.csv", encoding="utf-8") as handle:
        table1 = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(table1) == {"3dpn", "drr", "x2ct", "refiner"}
    for name, has_thickness in (("3dpn", True), ("x2ct", True), ("drr", False), ("refiner", False)):
        assert (table1[name]["psnr_bone_T_mean"] != "") is has_thickness
        assert (table1[name]["ssim_tissue_Tp_std"] != "") is has_thickness
        assert table1[name]["psnr_I_T_mean"] != ""
    per_case = np.array(evaluation.scores["3dpn"]["I"]["psnr"])
    assert float(table1["3dpn"]["psnr_I_Tp_mean"]) == pytest.approx(per_case[:, 1:].mean(axis=1).mean(), rel=1e-12)
    assert float(table1["3dpn"]["psnr_I_T_std"]) == pytest.approx(np.std(per_case[:, 0], ddof=1), rel=1e-9)
    with open(out / "per_case.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * CASES * (1 + VIEWS)
    assert {r["view"] for r in rows if r["view_index"] == "0"} == {"T"}
    with open(out / "table4.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 4 * VIEWS
    record = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert record["models"]["drr"]["kind"] == "3dpn_drr" and len(record["models"]["3dpn"]["file_sha256"]) == 64
    assert record["cases"] == evaluation.case_ids and record["settings"]["views"] == VIEWS
    assert record["per_case"]["refiner"]["bone"] is None
    header = "| model | I^T | t_bone^T | t_tissue^T | I^T' | t_bone^T' | t_tissue^T' |"
    assert evaluation.table1_markdown.count(header) == 2  # the PSNR and the SSIM table


def test_paired_differences_against_the_first_model_follow_the_per_case_file(evaluation):
    out = evaluation.out_dir
    with open(out / "per_case.csv", encoding="utf-8") as handle:
        per_case = list(csv.DictReader(handle))
    with open(out / "paired.csv", encoding="utf-8") as handle:
        paired = {(row["model"], row["column"]): row for row in csv.DictReader(handle)}
    reference = next(iter(evaluation.models))
    assert {row["reference"] for row in paired.values()} == {reference}
    assert {model for model, _ in paired} == set(evaluation.models) - {reference}
    for (model, column), row in paired.items():
        metric, quantity, where = column.split("_")

        def per_case_value(name, case):
            values = [float(r[f"{metric}_{quantity}"]) for r in per_case if r["model"] == name and r["case"] == case
                      and (r["view"] == "T") == (where == "T")]
            return float(np.mean(values))

        differences = np.array([per_case_value(model, c) - per_case_value(reference, c) for c in evaluation.case_ids])
        assert float(row["mean"]) == pytest.approx(differences.mean(), rel=1e-9, abs=1e-12)
        assert int(row["wins"]) == int((differences > 0).sum()) and int(row["cases"]) == CASES
    assert ("refiner", "psnr_bone_T") not in paired  # the 2D Refiner has no thickness maps
    text = (out / "paired.md").read_text(encoding="utf-8")
    assert f"# Paired differences against {reference}" in text and text.count("| model | I^T |") == 2
    record = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert record["paired"]["reference"] == reference


def test_an_existing_results_folder_needs_overwrite(exports, evaluation):
    before = (evaluation.out_dir / "table1.csv").read_bytes()
    with pytest.raises(ValueError, match="--overwrite"):
        evaluate_simulated({"3dpn": exports["3dpn"]}, ["phantom"], cases=1, out_dir=evaluation.out_dir, progress=False)
    assert (evaluation.out_dir / "table1.csv").read_bytes() == before
