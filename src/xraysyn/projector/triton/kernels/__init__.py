"""Triton kernels of the projector; importing any module here imports ``triton`` (the host side,
:mod:`xraysyn.projector.triton.launch`, imports them on first use, so ``TRITON_INTERPRET`` is read then).

Every kernel implements exactly the sampling model of :mod:`xraysyn.projector.rays`:

* sample ``s < n_samples`` at ``t = t_near + (s + 0.5) * delta`` mm, position
  ``p = origin + t * direction`` in voxel index coordinates ``(i, j, k) = (z, y, x)``;
* ``p`` clamped to ``[0, n - 1]`` per axis, cell ``floor(p)`` clamped to ``n - 2``, trilinear
  weights from the fractions; each sample contributes ``value * delta``.

Organisation (see ``docs/gpu_kernels.md``): grid ``(programs per view, N)``; one program marches
``BLOCK_R`` neighbouring detector pixels of one view (a 2-D tile of the detector when its width is
known, else a run of a row), all ``C`` channels at once (a ``(BLOCK_R, BLOCK_C)`` register tile), up
to the largest ``n_samples`` of its rays with per-ray masks. Nothing per sample is stored: extra
memory is the output only, O(rays). The volume is addressed through its element strides, so
channels-first, channels-last and non-contiguous views all work; fp16/bf16 volumes are read as
stored and converted to the accumulator type in registers.

Modules: :mod:`.common` (shared jit helpers), :mod:`.march` (forward), :mod:`.adjoint`,
:mod:`.layout` (packing, unpacking, occupancy), :mod:`.ray_setup`, :mod:`.backproject`.
"""
