"""SHA-256 digests of the simulator's default outputs, to show a refactor changed nothing.

    python tools/output_digest.py [--triton] > digests.json

Cases (public API only, default options):
  example-ct  the example chest CT (``xraysyn data example``) preprocessed to 128^3 as the demo
              does; CT2Xray at -9, 0, 9 deg (256^2 detector, 1.6 mm), its thickness maps, the
              forward projection of the bone/tissue densities, the adjoint of those images, BP
  W1-cpu      the CPU benchmark workload (4 phantoms 64^3 x 2 channels, 128^2 detector): forward,
              adjoint (the volume gradient of sum(images * weights)), BP of the first image
  triton      (--triton, Triton's CPU interpreter, tiny) forward, adjoint and CT2Xray on 16^3
Two runs on one machine print the same digests when every default path is bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch


def digest(tensor: torch.Tensor) -> str:
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    return hashlib.sha256(array.tobytes() + str(array.dtype).encode() + str(array.shape).encode()).hexdigest()[:16]


def projector_cases(volume, affine, poses, geometry, prefix: str, **backend) -> dict:
    from xraysyn.projector import backproject, forward_project, forward_project_adjoint

    images = forward_project(volume, affine, poses, geometry, **backend)
    weights = torch.linspace(0.5, 1.5, images.numel(), dtype=images.dtype).reshape(images.shape)
    adjoint = forward_project_adjoint(images * weights, affine, poses, geometry, tuple(volume.shape[2:]),
                                      num_volumes=volume.shape[0], **backend)
    source = volume.detach().clone().requires_grad_(True)
    (forward_project(source, affine, poses, geometry, **backend) * weights).sum().backward()
    bp_backend = {k: v for k, v in backend.items() if k == "backend"}
    bp = backproject(images[:1, :1], affine[:1] if affine.ndim == 3 else affine, poses[:1], geometry,
                     tuple(volume.shape[2:]), **bp_backend)
    return {f"{prefix}/forward": digest(images), f"{prefix}/adjoint": digest(adjoint),
            f"{prefix}/autograd_grad": digest(source.grad), f"{prefix}/backproject": digest(bp)}


def example_ct() -> dict:
    from xraysyn.data import fetch_example_data, load_ct, bone_mask_from_labels, preprocess_ct
    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.physics import ct2xray, material_density_volumes, tube_spectrum

    paths = fetch_example_data()
    ct = load_ct(paths.ct)
    bone = bone_mask_from_labels(load_ct(paths.labels).hu, paths.structures)
    cube, bone_cube = preprocess_ct(ct, bone, size=128)
    hu = torch.from_numpy(np.ascontiguousarray(cube.hu, dtype=np.float32))[None, None]
    mask = torch.from_numpy(bone_cube.astype(np.float32))[None, None]
    affine = torch.from_numpy(cube.world_from_voxel.astype(np.float32))
    geometry = ConeBeamGeometry(detector_shape=(256, 256), pixel_spacing=1.6)
    poses = geometry.poses(torch.tensor([-9.0, 0.0, 9.0]))
    with torch.no_grad():
        sim = ct2xray(hu, mask, affine, poses, geometry, tube_spectrum(120))
    out = {"example-ct/hu": digest(hu), "example-ct/ct2xray_image": digest(sim.image),
           "example-ct/ct2xray_i_atten": digest(sim.i_atten), "example-ct/ct2xray_line": digest(sim.line_integral),
           "example-ct/ct2xray_thickness": digest(sim.thickness)}
    densities = material_density_volumes(hu, mask)
    out.update(projector_cases(densities, affine, poses, geometry, "example-ct"))
    return out


def w1_cpu() -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from projector import setup  # the benchmark's own workload set-up

    vols, affine, poses, geometry, spec, _ = setup("W1-cpu", "cpu", None)
    from xraysyn.geometry import ConeBeamGeometry

    affine = affine.expand(vols.shape[0], 4, 4)
    return projector_cases(vols, affine, poses, geometry, "W1-cpu", num_samples=spec["samples"])


def triton_tiny() -> dict:
    os.environ["TRITON_INTERPRET"] = "1"
    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.physics import ct2xray, tube_spectrum

    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(2, 2, 16, 16, 16, generator=gen)
    affine = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0]))
    geometry = ConeBeamGeometry(detector_shape=(8, 12), pixel_spacing=8.0)
    poses = geometry.poses(torch.tensor([-10.0, 5.0]))
    out = projector_cases(volume, affine, poses, geometry, "triton", backend="triton", num_samples=24)
    hu = torch.rand(1, 1, 16, 16, 16, generator=gen) * 1500 - 1000
    mask = (hu > 200).float()
    sim = ct2xray(hu, mask, affine, poses, geometry, tube_spectrum(120), backend="triton")
    out["triton/ct2xray_image"] = digest(sim.image)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", action="store_true", help="also the Triton interpreter case (slow, tiny)")
    parser.add_argument("--skip-example", action="store_true", help="without the example CT")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {}
    if not args.skip_example:
        result.update(example_ct())
    result.update(w1_cpu())
    if args.triton:
        result.update(triton_tiny())
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
