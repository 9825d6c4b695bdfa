"""The simulated rater: prompts with verifiable instructions, a gold judge, preference levels
with rater noise, and system-level constraints for Ghost Attention."""

from rlhf.core.rater.constraints import check_constraint, make_constraints
from rlhf.core.rater.gold import (
    gold_score,
    helpfulness_axis,
    helpfulness_score,
    is_refusal,
    is_safe,
    safety_axis,
    safety_score,
)
from rlhf.core.rater.instructions import KINDS, check_instruction, describe, instruction_credit
from rlhf.core.rater.levels import LEVELS, RaterConfig, decide, flip_probability, level_for_gap
from rlhf.core.rater.prompts import make_prompts

__all__ = [
    "KINDS", "LEVELS", "RaterConfig", "check_constraint", "check_instruction", "decide",
    "describe", "flip_probability", "gold_score", "helpfulness_axis", "helpfulness_score", "instruction_credit",
    "is_refusal", "is_safe", "level_for_gap", "make_constraints", "make_prompts", "safety_axis", "safety_score",
]
