"""``xraysyn evaluate real``: the real part of the paper's Table 1 and its Fig. 4, on real radiographs.

Per model (a stage-2 export — XraySyn, or XraySyn without M (``refine_nom``) — or a 3DPN export, the "3DPN"
row) and per radiograph: the views at the input view T and at ``views`` azimuths linspace(−max, max)
(:meth:`xraysyn.synthesis.model.XraySyn.synthesize`). Reported:

* the input-view reconstruction: PSNR / SSIM of the synthesised view at T against the input, both through the
  display window of −log I (:func:`~xraysyn.data.input_domain.window_to_unit`; data range 1) — the metric
  stage 2 validates with;
* the FID of all novel views against the inputs (:mod:`xraysyn.evaluation.fid`): on InceptionV3's 768-channel
  Mixed_6e features (the paper's choice) and on the standard 2048-d pool features. With few radiographs the
  covariances are rank-deficient and FID is biased upwards; compare models on the same images only.

Outputs: ``table1_real.md`` / ``.csv``, ``per_image.csv``, ``fig4.png`` (rows: the input and each model; columns:
a few views), with two or more models ``paired.csv`` (PSNR / SSIM at T per radiograph against the first model,
:mod:`xraysyn.evaluation.paired`; also a table in ``table1_real.md``) and ``evaluation.json`` (every number, the
model files with their SHA-256, the images, settings).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from xraysyn.evaluation.tables import Column, MeanStd, write_csv, write_markdown
from xraysyn.metrics import psnr, ssim

__all__ = ["evaluate_real", "held_out_radiographs", "PSNR_CAP_DB", "FIGURE_AZIMUTHS"]

#: PSNR of identical images is infinite; cells are capped here (as in training validation).
PSNR_CAP_DB = 100.0
#: Views shown in the figure (nearest requested views).
FIGURE_AZIMUTHS = (-9.0, -4.5, 4.5, 9.0)


def held_out_radiographs(model_file: str | os.PathLike) -> list[Path]:
    """The radiographs a stage-2 run held out for validation (its export's config: data sources, seed and
    validation fraction; the same seeded split as ``xraysyn train refine``). The sources must still be readable
    at the paths the run used."""
    from xraysyn.train.config_io import ConfigError
    from xraysyn.train.export import load_export
    from xraysyn.train.refine import _split, scan_radiographs
    from xraysyn.train.refine_config import refine_config_from_mapping

    export = load_export(model_file)
    if export.get("stage") != "refine":
        raise ConfigError(f"--held-out-of {str(model_file)!r}: only a stage-2 export records its radiograph split")
    config = refine_config_from_mapping(export["config"])
    usable, _ = scan_radiographs(config)
    return _split(usable, config)[1]


def _figure(path: Path, inputs: list[np.ndarray], rows: dict[str, np.ndarray], azimuth: list[float]) -> None:
    from xraysyn.train.figures import save_sample_grid

    shown = sorted({int(np.argmin([abs(a - target) for a in azimuth])) for target in FIGURE_AZIMUTHS})
    grid = []
    for i, image in enumerate(inputs):
        grid.append((f"input {i + 1}", [("input (windowed)", image)]))
        for name, views in rows.items():
            grid.append((name, [(f"{azimuth[v]:+.1f}°", views[i, v]) for v in shown]))
    save_sample_grid(path, grid, title="real radiographs: novel views (Fig. 4 layout)")


def evaluate_real(models: dict[str, str | os.PathLike], radiographs: list[str | os.PathLike], out_dir, *,
                  views: int = 20, max_azimuth_deg: float = 9.0, device: str = "cpu", features=None,
                  figure_inputs: int = 2, overwrite: bool = False, progress: bool = True) -> dict:
    """Evaluate each model on the radiographs; writes the tables and the figure to ``out_dir`` (staged: all or
    nothing) and returns the numbers.

    Args:
        models: display name → model file (``xraysyn export``; a stage-2 export or a 3DPN export).
        radiographs: image files or folders (:func:`xraysyn.synthesis.inputs.prepare_inputs`); unusable ones are
            listed and skipped, at least 2 usable ones are needed (FID needs two per set).
        views: novel views per radiograph; ``max_azimuth_deg``: their azimuth range ±, degrees.
        features: the FID feature network (default :func:`xraysyn.evaluation.fid.load_inception`).
        figure_inputs: radiographs shown in ``fig4.png``.

    Raises:
        ValueError: no models, bad settings, fewer than 2 usable radiographs; ExportError for a bad model file.
    """
    from tqdm.auto import tqdm

    from xraysyn.evaluation.fid import fid, load_inception
    from xraysyn.outputs import check_output_folder, staged_output_folder
    from xraysyn.synthesis.inputs import prepare_inputs
    from xraysyn.synthesis.model import XraySyn
    from xraysyn.train.export import file_sha256

    if not models:
        raise ValueError("give at least one model (--model NAME=FILE)")
    if not (isinstance(views, int) and views >= 1):
        raise ValueError(f"--views must be a positive integer, got {views!r}")
    if not (math.isfinite(max_azimuth_deg) and max_azimuth_deg > 0):
        raise ValueError(f"--max-azimuth must be a positive number of degrees, got {max_azimuth_deg!r}")
    check_output_folder(out_dir, overwrite=overwrite)
    loaded = {name: XraySyn.from_pretrained(path, device=device) for name, path in models.items()}
    checked = prepare_inputs([str(p) for p in radiographs])
    usable = [(name, item) for name, item in checked if not isinstance(item, Exception)]
    skipped = [{"input": name, "error": str(item)} for name, item in checked if isinstance(item, Exception)]
    if len(usable) < 2:
        raise ValueError(f"{len(usable)} usable radiograph(s) among the inputs; at least 2 are needed"
                         + (f" ({len(skipped)} refused, e.g. {skipped[0]['error']})" if skipped else ""))
    network = features if features is not None else load_inception(progress=progress)
    azimuth = torch.linspace(-max_azimuth_deg, max_azimuth_deg, views, dtype=torch.float64)
    names = [name for name, _ in usable]
    images = [item for _, item in usable]
    rows, per_image, shown, numbers = [], [], {}, {}
    inputs_shown = None
    bar = tqdm(total=len(loaded) * len(images), desc="evaluate real", unit="image", disable=not progress)
    for model_name, model in loaded.items():
        result = model.synthesize(images, azimuth, check_view=False, progress=lambda done: bar.update(1))
        fake_t, real_t = result.input_view[:, None].double(), result.input_display[:, None].double()
        image_psnr = psnr(fake_t, real_t, 1.0).clamp(max=PSNR_CAP_DB).tolist()
        image_ssim = ssim(fake_t, real_t, 1.0).tolist()
        novel = result.views.reshape(-1, 1, *result.views.shape[2:])
        distances = fid(novel, result.input_display[:, None], features=network)
        rows.append({"model": model_name, "psnr_t": MeanStd.of(image_psnr), "ssim_t": MeanStd.of(image_ssim),
                     "fid_mixed_6e": distances["mixed_6e"], "fid_pool": distances["pool"]})
        per_image += [{"model": model_name, "image": name, "psnr_t": p, "ssim_t": s}
                      for name, p, s in zip(names, image_psnr, image_ssim)]
        shown[model_name] = result.views[:figure_inputs].numpy()
        inputs_shown = result.input_display[:figure_inputs].numpy()
        numbers[model_name] = {"file": str(models[model_name]), "sha256": file_sha256(model.source),
                               "kind": model.name, "psnr_t": image_psnr, "ssim_t": image_ssim, "fid": distances}
    bar.close()
    columns = [Column("model"), Column("psnr_t", "PSNR at T (dB)", ".2f"), Column("ssim_t", "SSIM at T", ".3f"),
               Column("fid_mixed_6e", "FID Mixed_6e (768)", ".4g"), Column("fid_pool", "FID pool (2048)", ".4g")]
    notes = [f"{len(images)} radiographs; {views} novel views over ±{max_azimuth_deg:g}° azimuth each; PSNR/SSIM of "
             "the synthesised input view against the input through the display window of −log I (range 1); FID of "
             f"the {len(images) * views} novel views against the {len(images)} inputs."]
    sections = [("Table 1 (real radiographs)", rows, columns)]
    paired = None
    if len(loaded) > 1:
        from xraysyn.evaluation.paired import paired_columns, paired_json, write_paired_csv

        reference = next(iter(loaded))
        paired = paired_columns({name: {"psnr_t": numbers[name]["psnr_t"], "ssim_t": numbers[name]["ssim_t"]}
                                 for name in loaded}, reference)
        sections.append((f"Paired against {reference}", [
            {"model": name, "psnr_t": d["psnr_t"].text(".2f"), "ssim_t": d["ssim_t"].text(".3f")}
            for name, d in paired.items()], columns[:3]))
        notes.append(f"Paired: per radiograph, model − {reference}: mean ± standard error (radiographs where the "
                     "model scores higher / radiographs, two-sided exact sign-test p).")
    with staged_output_folder(out_dir, overwrite=overwrite) as folder:
        write_markdown(folder / "table1_real.md", sections, title="Evaluation on real radiographs", notes=notes)
        if paired is not None:
            write_paired_csv(folder / "paired.csv", paired, reference)
        write_csv(folder / "table1_real.csv", rows, columns)
        write_csv(folder / "per_image.csv", per_image, [Column("model"), Column("image"), Column("psnr_t", format=".3f"),
                                                        Column("ssim_t", format=".4f")])
        _figure(folder / "fig4.png", list(inputs_shown), shown, azimuth.tolist())
        record = {"models": numbers, "images": names, "skipped": skipped, "views": views,
                  "max_azimuth_deg": max_azimuth_deg, "device": device,
                  "paired": None if paired is None else paired_json(paired, reference)}
        (folder / "evaluation.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return {"rows": rows, "models": numbers, "images": names, "skipped": skipped}
