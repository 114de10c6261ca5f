"""`evaluate real` with tiny random exports and a stand-in feature network (no download)."""

from __future__ import annotations

import csv
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from support.tiny_xraysyn import prior_export, refine_export, simulated_frontal, write_export
from xraysyn.evaluation.fid import InceptionFeatures
from xraysyn.evaluation.real import evaluate_real
from xraysyn.metrics import psnr
from xraysyn.synthesis.model import XraySyn


def _features() -> InceptionFeatures:
    torch.manual_seed(0)
    layers = nn.Sequential(OrderedDict(mixed_7=nn.Conv2d(3, 4, 3, stride=2), pool2=nn.Conv2d(4, 5, 1)))
    return InceptionFeatures(layers, input_size=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    images = root / "images"
    images.mkdir()
    for seed in range(3):
        Image.fromarray((simulated_frontal(64, seed) * 255).round().astype(np.uint8)).save(images / f"r{seed}.png")
    (images / "notes.txt").write_text("not an image")
    models = {"XraySyn": write_export(refine_export(), root / "xraysyn.pt"),
              "XraySyn without M": write_export(refine_export(static_hyper=True), root / "nom.pt"),
              "3DPN": write_export(prior_export(), root / "prior.pt")}
    return root, images, models


def test_tables_and_numbers(setup):
    root, images, models = setup
    out = root / "out"
    result = evaluate_real(models, [images], out, views=3, features=_features(), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "fig4.png", "paired.csv", "per_image.csv",
                                                      "table1_real.csv", "table1_real.md"]
    assert [row["model"] for row in result["rows"]] == list(models)
    assert len(result["images"]) == 3
    # the PSNR of one image recomputed from the model's own output
    model = XraySyn.from_pretrained(models["3DPN"])
    own = model.synthesize(str(images / "r1.png"), [0.0], check_view=False)
    expected = float(psnr(own.input_view[:, None].double(), own.input_display[:, None].double(), 1.0)[0])
    assert result["models"]["3DPN"]["psnr_t"][1] == pytest.approx(expected, abs=1e-6)
    for row in result["rows"]:
        assert row["fid_mixed_6e"] > 0 and row["fid_pool"] > 0
    with open(out / "per_image.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 9
    record = json.loads((out / "evaluation.json").read_text())
    assert len(record["models"]["XraySyn"]["sha256"]) == 64
    assert "| XraySyn without M |" in (out / "table1_real.md").read_text()
    # paired against the first model, per image, from the per-image numbers
    with open(out / "paired.csv", newline="") as handle:
        paired = {(row["model"], row["column"]): row for row in csv.DictReader(handle)}
    assert set(paired) == {(m, c) for m in ("XraySyn without M", "3DPN") for c in ("psnr_t", "ssim_t")}
    differences = np.subtract(result["models"]["3DPN"]["ssim_t"], result["models"]["XraySyn"]["ssim_t"])
    assert float(paired[("3DPN", "ssim_t")]["mean"]) == pytest.approx(differences.mean(), rel=1e-9, abs=1e-12)
    assert int(paired[("3DPN", "ssim_t")]["wins"]) == int((differences > 0).sum())
    assert "## Paired against XraySyn" in (out / "table1_real.md").read_text()
    assert record["paired"]["reference"] == "XraySyn"


def test_bad_settings_write_nothing(setup):
    root, images, models = setup
    with pytest.raises(ValueError, match="at least one model"):
        evaluate_real({}, [images], root / "none", features=_features(), progress=False)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        evaluate_real(models, [images / "r0.png"], root / "one", features=_features(), progress=False)
    with pytest.raises(ValueError, match="--views"):
        evaluate_real(models, [images], root / "v", views=0, features=_features(), progress=False)
    assert not (root / "none").exists() and not (root / "one").exists() and not (root / "v").exists()


def test_cli_real(setup, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import xraysyn.evaluation.fid as fid
    from xraysyn.cli import app

    root, images, models = setup
    monkeypatch.setattr(fid, "load_inception", lambda *a, **k: _features())
    args = ["evaluate", "real", "--model", f"a={models['3DPN']}", "--model", f"b={models['XraySyn']}",
            "--views", "2", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--data", str(images), "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert "| a |" in result.output and (tmp_path / "ok" / "fig4.png").is_file()
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "neither")])
    assert result.exit_code == 2 and "one of the two" in result.output and not (tmp_path / "neither").exists()
    result = CliRunner().invoke(app, [*args, "--held-out-of", str(models["3DPN"]), "--out", str(tmp_path / "h")])
    assert result.exit_code == 2 and "only a stage-2 export" in result.output
