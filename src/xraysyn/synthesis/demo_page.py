"""The demo of ``make demo`` / ``xraysyn demo``: XraySyn on a real radiograph (novel views, the sweep GIF, bone
image and suppression with the shipped weights), the simulator on a real CT, and an ``index.html`` that shows
them with captions.

Layout of the output folder (written as a whole: staged, then moved into place)::

    index.html            the page (relative links only; open it in a browser)
    figure.png            input, novel views, bone estimate, bone suppression (paper Fig. 1 layout)
    synthesis/<input>/    `xraysyn synthesize` of the radiograph (views, sweep.gif, thickness maps, ct.nii.gz)
    suppression/<input>/  `xraysyn suppress --dicom` of the radiograph at full resolution
    simulation/           CT2Xray views, bone/tissue thickness and bone suppression of the example CT
"""

from __future__ import annotations

import html
import json
import shutil
import time
from pathlib import Path

import numpy as np

from xraysyn.atomic import atomic_write
from xraysyn.imageio import save_png

__all__ = ["run_full_demo", "DEMO_AZIMUTHS", "PREVIEW_SIDE"]

#: The novel views of the demo: the paper's 20 views over ±9° azimuth.
DEMO_AZIMUTHS = tuple(-9.0 + 18.0 * i / 19 for i in range(20))
#: Longest side (pixels) of the page's previews of full-resolution images.
PREVIEW_SIDE = 512


def _preview(image: np.ndarray, path: Path) -> Path:
    """A downsampled PNG of a full-resolution ``[0, 1]`` image for the page (area average)."""
    import torch
    import torch.nn.functional as F

    scale = max(1, int(np.ceil(max(image.shape) / PREVIEW_SIDE)))
    small = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None], scale,
                         ceil_mode=True)[0, 0].numpy()
    return save_png(small, path, window=(0.0, 1.0))


def _page(title: str, sections: list[tuple[str, str, list[tuple[str, str]]]], facts: dict) -> str:
    """Static HTML: per section a heading, a paragraph and figures (image path, caption)."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "figure{display:inline-block;margin:.5em;vertical-align:top;max-width:330px}"
             "figure img{max-width:100%;image-rendering:auto;background:#000}"
             "figcaption{font-size:.85em;color:#444}.wide{max-width:100%}.wide img{max-width:100%}"
             "table{border-collapse:collapse}td{padding:.2em .8em;border-bottom:1px solid #ddd}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, text, figures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>")
        for src, caption in figures:
            wide = " class='wide'" if src.endswith("figure.png") or src.endswith("montage.png") else ""
            parts.append(f"<figure{wide}><a href='{html.escape(src)}'><img src='{html.escape(src)}' "
                         f"alt='{html.escape(caption)}'></a><figcaption>{html.escape(caption)}</figcaption></figure>")
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    parts.append(f"<h2>Run</h2><table>{rows}</table></body></html>")
    return "\n".join(parts) + "\n"


def run_full_demo(out_dir: str | Path, *, radiograph_path: str | Path, ct_path: str | Path,
                  labels_path: str | Path | None = None, structures_path: str | Path | None = None,
                  weights: str | Path | None = None, simulation_config=None, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """XraySyn on ``radiograph_path`` (synthesis and suppression) and the simulator on ``ct_path``, with the page.

    Returns a summary (timings in seconds, the files, the model). Raises what the parts raise (bad inputs:
    ``ValueError`` / ``InputImageError``; ``OutputExistsError`` for a non-empty ``out_dir`` without
    ``overwrite``); on any error nothing is left in ``out_dir``.
    """
    from xraysyn.demo import DemoConfig, run_demo
    from xraysyn.outputs import check_output_folder, staged_output_folder
    from xraysyn.synthesis.model import XraySyn
    from xraysyn.synthesis.writers import write_suppression, write_synthesis, view_stem

    check_output_folder(out_dir, overwrite=overwrite)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model = XraySyn.from_pretrained(weights)
    timings["load_model_s"] = time.perf_counter() - start
    description = {"name": model.name, "weights": model.source, "sha256": model.export.get("sha256")}
    stem = Path(radiograph_path).name.split(".")[0] or "radiograph"
    with staged_output_folder(out_dir, overwrite=overwrite) as folder:
        start = time.perf_counter()
        result = model.synthesize(str(radiograph_path), list(DEMO_AZIMUTHS))
        timings["synthesize_s"] = time.perf_counter() - start
        start = time.perf_counter()
        write_synthesis(result, 0, folder / "synthesis" / stem, model=description)
        timings["write_synthesis_s"] = time.perf_counter() - start
        start = time.perf_counter()
        suppression = model.suppress_bones(str(radiograph_path), 1.0)[0]
        timings["suppress_s"] = time.perf_counter() - start
        write_suppression(suppression, folder / "suppression" / stem, dicom=True, model=description)
        _preview(suppression.original, folder / "suppression" / stem / "original_preview.png")
        _preview(suppression.suppressed, folder / "suppression" / stem / "suppressed_preview.png")
        bone = suppression.bone_image.clip(0, None)
        _preview(bone / bone.max() if bone.max() > 0 else bone, folder / "suppression" / stem / "bone_preview.png")
        start = time.perf_counter()
        simulation = run_demo(folder / "simulation", ct_path, labels_path=labels_path, structures_path=structures_path,
                              radiograph_path=None, config=simulation_config or DemoConfig(), progress=progress)
        timings["simulation_s"] = time.perf_counter() - start
        shutil.copyfile(folder / "synthesis" / stem / "figure.png", folder / "figure.png")
        azimuth = result.azimuth_deg.tolist()
        shown = [0, 5, 14, 19] if len(azimuth) == 20 else list(range(len(azimuth)))
        syn, sup = f"synthesis/{stem}", f"suppression/{stem}"
        sections = [
            ("XraySyn on a real chest radiograph",
             f"{Path(radiograph_path).name}: the input (cropped to the model's field of view), novel views synthesised "
             f"by the 3D PriorNet and the 2D RefineNet ({model.name}), the bone estimate and the bone-suppressed image.",
             [("figure.png", "input, novel views, bone estimate (g/cm²), bone suppression; bottom row: the 3DPN "
                             "before the 2DRN"),
              (f"{syn}/sweep.gif", "the 20 novel views over ±9° azimuth, forward and back"),
              (f"{syn}/input_crop.png", "input crop"),
              *[(f"{syn}/{view_stem(v, azimuth[v], 0.0)}.png", f"synthesised view at azimuth {azimuth[v]:+.1f}°")
                for v in shown],
              (f"{syn}/bone_T.png", "bone thickness at the input view (g/cm², windowed)"),
              (f"{syn}/tissue_T.png", "soft-tissue thickness at the input view (g/cm², windowed)")]),
            ("Bone suppression at full resolution",
             "Reverse CT2Xray (Algorithm 1) with the refined thickness maps upsampled to the input's pixels; the "
             "border outside the model's crop is left as it was. The PNG/DICOM files in the folder are full size.",
             [(f"{sup}/original_preview.png", "input"), (f"{sup}/suppressed_preview.png", "bone-suppressed"),
              (f"{sup}/bone_preview.png", "bone image (input minus suppressed, scaled to its maximum)")]),
            ("The simulator on a real chest CT",
             "CT2Xray views of the example CT (polychromatic, bone and tissue decomposed) and Algorithm-1 bone "
             "suppression of the simulated frontal view.",
             [("simulation/montage.png", "views, thickness maps, bone suppression of the example CT")]),
        ]
        facts = {"model": f"{model.name} ({Path(model.source).name}, sha256 {str(description['sha256'])[:16]}…)",
                 "radiograph": str(radiograph_path), "CT": str(ct_path),
                 **{k: f"{v:.1f} s" for k, v in timings.items()}}
        text = _page("xraysyn demo", sections, facts)
        atomic_write(folder / "index.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        summary = {"timings_s": timings, "model": description, "radiograph": str(radiograph_path),
                   "simulation": {k: simulation[k] for k in ("bone_mask", "dice_threshold_vs_labels") if k in simulation}}
        atomic_write(folder / "summary.json",
                     lambda tmp: tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8"))
    return summary
