"""The parameter counts of the paper presets stated in docs/training.md are those of the built networks."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from xraysyn.models import PriorNet3D, PriorNetConfig
from xraysyn.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from xraysyn.models.refine2d import RefineNet2D, RefineNetConfig
from xraysyn.train.baselines import baseline_network

TRAINING_DOCS = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_docs_state_the_paper_presets_parameter_counts():
    text = TRAINING_DOCS.read_text(encoding="utf-8")
    header = re.search(r"^\| 3DPN \| 2DRN F \+ M \|.*\n\|[-:| ]+\|\n(\|.*\|)$", text, re.M)
    assert header, "the parameter table of docs/training.md is missing"
    stated = [int(cell.strip().replace(",", "")) for cell in header.group(1).strip("|").split("|")]
    with torch.device("meta"):  # shapes only, no memory
        built = [_count(PriorNet3D(PriorNetConfig.paper())), _count(RefineNet2D(RefineNetConfig.paper())),
                 _count(RefineNet2D(RefineNetConfig.paper(static_hyper=True))),
                 _count(PatchDiscriminator(DiscriminatorConfig.paper())),
                 _count(baseline_network("refiner2d", "paper")), _count(baseline_network("x2ct", "paper"))]
    print(dict(zip(("3DPN", "2DRN", "2DRN without M", "D", "refiner2d", "x2ct"), built)))
    assert stated == built
