"""XraySyn end to end: one real radiograph → novel views, bone image and bone suppression
(``XraySyn``, ``xraysyn synthesize``, ``xraysyn suppress``)."""

from xraysyn.synthesis.model import SuppressionResult, SynthesisResult, XraySyn

__all__ = ["XraySyn", "SynthesisResult", "SuppressionResult"]
