"""greenlm: measure, compress, optimize and serve language models for less energy and carbon.

The library function of each verb, with the CLI's defaults, resolved on first use so `import greenlm` stays
light:

    import greenlm
    result = greenlm.measure(greenlm.MeasureConfig(engine="llamacpp"))
"""

import os

from greenlm._lazy import lazy
from greenlm.version import __version__  # noqa: F401

# Models and text are local files: no call may wait on a hub time-out. Set before anything imports
# huggingface_hub, which reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "CompressConfig": "greenlm.compress.config",
        "DistillConfig": "greenlm.distill.config",
        "EnergySettings": "greenlm.energy.settings",
        "EvalConfig": "greenlm.evaluate.config",
        "ExportConfig": "greenlm.export.config",
        "GreenlmError": "greenlm.errors",
        "MeasureConfig": "greenlm.workload.config",
        "OptimizeConfig": "greenlm.optimize.config",
        "ServeConfig": "greenlm.serve.config",
        "Server": "greenlm.serve.server",  # the serve verb's library object (greenlm.serve.create_app: its app)
        "compress": "greenlm.compress.pipeline",
        "distill": "greenlm.distill.runner",
        "evaluate": "greenlm.evaluate.runner",
        "export": "greenlm.export.runner:export_model",
        "measure": "greenlm.workload.runner:run_measure",
        "optimize": "greenlm.optimize.search",
        "report": "greenlm.report.html:write_report",
        "track": "greenlm.train.tracker",
    },
)
