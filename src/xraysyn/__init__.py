"""xraysyn: differentiable X-ray simulation and single-radiograph view synthesis.

Implements and extends XraySyn (Peng et al., "XraySyn: Realistic View Synthesis From a Single
Radiograph Through CT Priors", AAAI 2021).
"""

__version__ = "0.1.0"
