"""Search compression recipes and engines for the least energy per token inside a quality budget."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "Candidate": "greenlm.optimize.space",
        "CandidateRow": "greenlm.optimize.row",
        "EvalSettings": "greenlm.optimize.config",
        "OptimizeConfig": "greenlm.optimize.config",
        "OptimizeResult": "greenlm.optimize.search",
        "QualityBudget": "greenlm.optimize.pareto",
        "SearchSpace": "greenlm.optimize.space",
        "choose": "greenlm.optimize.pareto",
        "default_space": "greenlm.optimize.space",
        "load_space": "greenlm.optimize.space",
        "optimize": "greenlm.optimize.search",
        "pareto_front": "greenlm.optimize.pareto",
    },
    call="greenlm.optimize.search:optimize",
)
