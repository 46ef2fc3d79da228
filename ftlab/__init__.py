"""ftlab: a teaching lab for fine-tuning neural networks, every method from scratch."""
from ftlab.config import FAST, device, seed_everything
from ftlab.estimate import estimate_memory
from ftlab.measure import count_parameters, memory_report, time_step
from ftlab.methods import add_adapter, apply
from ftlab.methods.base import delete_adapter, disable_adapters, merge, merge_and_unload, set_adapter, unmerge
from ftlab.peft_io import export_peft, import_peft
from ftlab.recommend import recommend
from ftlab.train import evaluate, fit, lr_find

__version__ = "0.1.0"

# The public names: `from ftlab import *` gives these, and they are what `import ftlab` is for.
__all__ = [
    "FAST", "device", "seed_everything",
    "estimate_memory",
    "count_parameters", "memory_report", "time_step",
    "add_adapter", "apply",
    "delete_adapter", "disable_adapters", "merge", "merge_and_unload", "set_adapter", "unmerge",
    "export_peft", "import_peft",
    "recommend",
    "evaluate", "fit", "lr_find",
]
