"""XraySyn end to end: one real radiograph → novel views, bone image and bone suppression
(``XraySyn``, ``xraysyn synthesize``, ``xraysyn suppress``)."""
