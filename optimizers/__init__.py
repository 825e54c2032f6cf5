"""REST-PG and its baselines as DSPy optimizers (importable as ``restpg_dspy.optimizers``).

==================  ==============================  =====================  ===================
optimizer           stages                          program                paper row
==================  ==============================  =====================  ===================
``SFT``             fine-tune on real outputs       ``RAGWriter``          SFT
``SFTWithReasoning`` teacher reasoning + SFT         ``PersonalizedWriter`` SFT + reasoning
``ReSTEM``          SFT + EM self-training          ``RAGWriter``          ReST-EM
``RESTPG``          reasoning + SFT + EM rounds     ``PersonalizedWriter`` REST-PG
==================  ==============================  =====================  ===================

``PersonalAdapters`` goes beyond the paper: over any compiled program, a small adapter per user, trained on the
user's own history and chosen per call by ``user_id`` (:class:`~restpg_dspy.programs.PersonalRouter`).
"""

from restpg_dspy.optimizers.personal import PersonalAdapters, PersonalAdaptersConfig
from restpg_dspy.optimizers.restpg import RESTPG, SFT, ReSTEM, SFTWithReasoning
from restpg_dspy.optimizers.run_dir import RunDir, RunDirConflict

__all__ = [
    "RESTPG",
    "SFT",
    "PersonalAdapters",
    "PersonalAdaptersConfig",
    "ReSTEM",
    "RunDir",
    "RunDirConflict",
    "SFTWithReasoning",
]
