"""Search compression recipes and engines for the least energy per token inside a quality budget."""

from greenlm.optimize.config import EvalSettings, OptimizeConfig
from greenlm.optimize.pareto import QualityBudget, choose, pareto_front
from greenlm.optimize.search import OptimizeResult, optimize
from greenlm.optimize.space import Candidate, SearchSpace, default_space, load_space

__all__ = [
    "Candidate",
    "EvalSettings",
    "OptimizeConfig",
    "OptimizeResult",
    "QualityBudget",
    "SearchSpace",
    "choose",
    "default_space",
    "load_space",
    "optimize",
    "pareto_front",
]
